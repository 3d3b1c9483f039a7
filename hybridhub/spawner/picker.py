"""The picker page: its templates, the initial choice, and the rendered HTML memoized per content."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from hybridhub.catalog import Catalog, Offering
from hybridhub.spawner.options import reservation_summary

#: The spawner's Jinja templates (package data, in a checkout and a wheel alike).
TEMPLATES = Path(__file__).resolve().parent / "templates"


def templates_dir() -> Path:
    """The spawner's templates folder (the picker and the hub pages it extends)."""
    return TEMPLATES


@lru_cache(maxsize=1)
def _jinja() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())), autoescape=True
    )



def preselect(rows: list[dict], previous: dict, groups: list[str], default_hours: float) -> dict[str, Any]:
    """The picker's initial choice: the previous launch if still offered, else the cheapest launchable offering.

    Returns the offering key, count, hours, group and the "this launch reserves" line for it.
    """
    launchable = [r for r in rows
                  if not (groups and len(r["trust"]["barred"]) == len(groups)) and not r["price_refused"]]
    row = next((r for r in launchable if r["offering"].key == f"{previous.get('class')}/{previous.get('model')}"), None)
    kept = row is not None
    if not kept and launchable:
        row = min(launchable, key=lambda r: (r["price"] * r["offering"].counts[0], r["offering"].key))
    group = previous.get("group") if previous.get("group") in groups else (groups[0] if groups else "")
    if row is None:
        return {"key": None, "count": None, "hours": default_hours, "group": group, "summary": ""}
    off = row["offering"]
    count = previous["count"] if kept and previous.get("count") in off.counts else off.counts[0]
    hours = previous.get("hours") if isinstance(previous.get("hours"), int | float) else default_hours
    hours = min(float(hours), off.max_hours)
    rem = row["remaining"].get(group)
    unit = rem.unit if rem is not None else "hours"
    return {"key": off.key, "count": count, "hours": hours, "group": group,
            "summary": reservation_summary(off, count, hours, group, unit, row["price"]) if group else ""}


def class_budgets(rows: list[dict], groups: list[str]) -> list[dict]:
    """A class's budgets, each shown once: per group, the distinct remainings its offerings draw on.

    Offerings of a class usually share one budget per group; where a model has its own
    (an ``aws/trn1`` budget beside ``aws``), that budget is one more line naming its
    offerings (``keys``; None when it covers the whole class).  ``rem`` None: no budget.
    """
    out: list[dict] = []
    for g in groups:
        lines: dict[int | None, dict] = {}
        for r in rows:
            rem = r["remaining"].get(g)
            budget = rem.budget_id if rem is not None else None
            line = lines.setdefault(budget, {"group": g, "rem": rem, "keys": [], "models": []})
            line["keys"].append(r["offering"].key)
            line["models"].append(r["offering"].model)
        for line in lines.values():
            if len(lines) == 1:
                line["keys"] = line["models"] = None
            out.append(line)
    return out


#: Each offering's fixed facts per (catalog, hub config) (:func:`offering_facts`): one entry per hub start.
_facts: dict[tuple[int, int], tuple[Catalog, object, dict[str, dict]]] = {}


def offering_facts(catalog: Catalog, config: object, facts_of: Callable[[Offering], dict]) -> dict[str, dict]:
    """``facts_of(offering)`` per offering key, asked once per catalog and hub configuration (both fixed while
    the hub runs), not per offering on every picker: whether its backend is simulated, its detail line,
    whether it shares a machine."""
    hit = _facts.get((id(catalog), id(config)))
    if hit is None or hit[0] is not catalog or hit[1] is not config:
        if len(_facts) > 16:
            _facts.clear()
        facts = {o.key: facts_of(o) for o in catalog.all_offerings()}
        hit = _facts[(id(catalog), id(config))] = (catalog, config, facts)
    return hit[2]


#: Rendered pickers by what they show (:func:`picker_html`), newest last.
_picker_pages: OrderedDict[str, tuple[Catalog, str]] = OrderedDict()
#: How many rendered pickers are kept (a lecture hall's students mostly see the same one).
PICKER_PAGES_KEPT = 128


def picker_html(catalog: Catalog, rows: list[dict], groups: list[str], choice: dict, outlook: dict[int, str]) -> str:
    """``picker.html`` for these rows, memoized on every value it shows.

    Rendering is a picker's largest cost on the hub's loop (Jinja escapes each of a few
    thousand values), and a lecture hall's students see the same page: the same offerings,
    free counts, remaining quota and choice.  The key is the repr of all the template's
    inputs except the offerings themselves, which the catalog's identity fixes.
    """
    shown: dict[int, str] = {}  # offerings share their budget's Remaining: each repr'd once

    def once(rem) -> str:
        text = shown.get(id(rem))
        if text is None:
            text = shown[id(rem)] = repr(rem)
        return text

    key = repr(([(r["offering"].key, r["free_now"], r["price"], r["price_refused"], r["simulated"], r.get("shared"),
                  r.get("detail"), [(g, once(rem)) for g, rem in r["remaining"].items()], r["trust"]) for r in rows],
                groups, choice, outlook))
    hit = _picker_pages.get(key)
    if hit is not None and hit[0] is catalog:
        _picker_pages.move_to_end(key)
        return hit[1]
    classes = [(rc, [r for r in rows if r["offering"].resource_class == rc.name]) for rc in catalog.classes]
    html = _jinja().get_template("picker.html").render(
        classes=[(rc, rs, {r["trust"]["trust"] for r in rs}, class_budgets(rs, groups)) for rc, rs in classes if rs],
        groups=groups,
        choice=choice,
        outlook=outlook,
    )
    _picker_pages[key] = (catalog, html)
    if len(_picker_pages) > PICKER_PAGES_KEPT:
        _picker_pages.popitem(last=False)
    return html
