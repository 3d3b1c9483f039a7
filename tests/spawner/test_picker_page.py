"""The picker's page is memoized on every value it shows: a repeat is the same page, any change shows."""

from __future__ import annotations

import dataclasses
import re

from hybridhub.accounting.ledger import Remaining
from hybridhub.catalog import load_catalog
from hybridhub.spawner.picker import offering_facts, picker_html, preselect

CAT = load_catalog()
TRUST = {"trust": "trusted", "words": "run by the university", "barred": [], "hidden": []}


def rows(free: int, left: float) -> list[dict]:
    rem = Remaining(amount_left=left, unit="hours", resets_at=None, budget_id=7, amount=10.0, used=0.0,
                    reserved=10.0 - left)
    return [{"offering": off, "free_now": free, "price": off.price_per_hour, "price_refused": None,
             "simulated": True, "remaining": {"lab-a": rem},
             "trust": dict(TRUST)} for off in CAT.all_offerings()]


def page(free: int, left: float, outlook: dict[int, str] | None = None) -> str:
    rs = rows(free, left)
    return picker_html(CAT, rs, ["lab-a"], preselect(rs, {}, ["lab-a"], 1.0), outlook or {})


def free_counts(html: str) -> list[str]:
    return re.findall(r'class="free-now">\s*(\S+)\s*</td>', html)


def test_the_same_values_give_the_same_page_and_every_change_shows():
    first = page(3, 4.0)
    assert page(3, 4.0) is first  # memoized: not rendered again
    n = len(CAT.all_offerings())
    assert free_counts(first) == ["3"] * n
    assert free_counts(page(2, 4.0)) == ["2"] * n
    less = page(3, 2.5)
    assert "2.50 accelerator-hours" in less and "4.00 accelerator-hours" not in less
    dated = page(3, 4.0, {7: "2026-12-24 10:00 UTC"})
    assert "runs out: 2026-12-24 10:00 UTC" in dated and "runs out" not in first


def test_a_different_catalog_is_never_served_another_catalogs_page():
    first = page(3, 4.0)
    other = dataclasses.replace(CAT)  # equal values, another object: its own page
    rs = rows(3, 4.0)
    again = picker_html(other, rs, ["lab-a"], preselect(rs, {}, ["lab-a"], 1.0), {})
    assert again == first and again is not first


def test_the_backends_detail_line_shows_under_the_offering():
    rs = rows(3, 4.0)
    for r in rs:
        r["detail"] = "trn1.2xlarge, spot" if r["offering"].key == "aws/trn1.2xlarge" else ""
    html = picker_html(CAT, rs, ["lab-a"], preselect(rs, {}, ["lab-a"], 1.0), {})
    assert html.count('<small class="text-muted">trn1.2xlarge, spot</small>') == 1
    assert "trn1.32xlarge</small>" not in html  # the template names no backend field itself


def test_a_providers_live_price_is_shown_and_a_price_above_the_ceiling_cannot_be_chosen():
    rs = rows(3, 4.0)
    live, over = rs[0], rs[1]
    live["price"] = 0.123
    over["price"], over["price_refused"] = 9.5, "Theta quotes $9.50/h for X, above this offering's ceiling of $0.40/h"
    html = picker_html(CAT, rs, ["lab-a"], preselect(rs, {}, ["lab-a"], 1.0), {})
    row = re.search(rf'<tr class="offering" data-offering="{live["offering"].key}".*?</tr>', html, re.S).group(0)
    assert 'data-price="0.123"' in row and '<td class="price">$0.12</td>' in row
    refused = re.search(rf'<tr class="offering" data-offering="{over["offering"].key}".*?</tr>', html, re.S).group(0)
    assert "above this offering&#39;s ceiling of $0.40/h" in refused and " disabled " in refused
    assert preselect(rs, {"class": over["offering"].resource_class, "model": over["offering"].model},
                     ["lab-a"], 1.0)["key"] != over["offering"].key


def test_an_offerings_fixed_facts_are_asked_once_per_catalog_and_config():
    asked: list[str] = []

    def facts_of(off) -> dict:
        asked.append(off.key)
        return {"simulated": True, "detail": "", "shared": False}

    config, other = object(), object()
    first = offering_facts(CAT, config, facts_of)
    assert offering_facts(CAT, config, facts_of) is first
    assert sorted(first) == sorted(o.key for o in CAT.all_offerings())
    assert len(asked) == len(CAT.all_offerings())  # not again for the second picker
    offering_facts(CAT, other, facts_of)  # another hub configuration: asked again
    offering_facts(dataclasses.replace(CAT), config, facts_of)  # another catalog (equal values): asked again
    assert len(asked) == 3 * len(CAT.all_offerings())
