"""Parse and validate ``user_options`` from the picker form or the REST API.

Whatever arrives is untrusted: the form can be edited and the REST API takes
any JSON.  :func:`validate_options` checks every field against the catalog and
the user's groups and returns a :class:`LaunchRequest`, or raises
:class:`OptionError` naming the field and what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from .catalog import Catalog, Offering

FIELDS = ("class", "model", "count", "hours", "group")


class OptionError(ValueError):
    """A user option is missing or out of range; ``field`` names it."""

    def __init__(self, field: str, problem: str):
        self.field = field
        super().__init__(f"{field}: {problem}")


@dataclass(frozen=True)
class LaunchRequest:
    """A validated request: ``count`` accelerators of an offering for ``hours``, charged to ``group``."""

    resource_class: str
    model: str
    count: int
    hours: float
    group: str

    @property
    def offering_key(self) -> str:
        """The :attr:`Offering.key` this request is for."""
        return f"{self.resource_class}/{self.model}"

    def as_user_options(self) -> dict[str, Any]:
        """The canonical ``user_options`` dict (what the REST API accepts)."""
        d = asdict(self)
        d["class"] = d.pop("resource_class")
        return d


def _first(value: Any) -> Any:
    """Form data arrives as lists of strings; REST bodies as plain JSON values."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


def form_to_options(formdata: dict[str, list[str]]) -> dict[str, Any]:
    """Turn the picker's form fields into the canonical ``user_options`` dict.

    The form has one radio ``offering`` (``class/model``) and one count selector
    per offering (``count:<class>/<model>``), so it works without JavaScript.
    """
    opts: dict[str, Any] = {}
    offering = _first(formdata.get("offering"))
    if offering:
        cls, _, model = str(offering).partition("/")
        opts["class"] = cls
        opts["model"] = model
        count = _first(formdata.get(f"count:{offering}"))
        if count is not None:
            opts["count"] = count
    for name in ("hours", "group"):
        value = _first(formdata.get(name))
        if value not in (None, ""):
            opts[name] = value
    # store numbers as numbers, as a REST body would; unparseable text is left for validation
    for name, kind in (("count", int), ("hours", float)):
        try:
            opts[name] = kind(opts[name])
        except (KeyError, ValueError):
            pass
    return opts


def _as_int(value: Any, field: str) -> int:
    if isinstance(value, bool):
        raise OptionError(field, f"must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise OptionError(field, f"must be an integer, got {value!r}")


def _as_float(value: Any, field: str) -> float:
    if isinstance(value, bool):
        raise OptionError(field, f"must be a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise OptionError(field, f"must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise OptionError(field, f"must be a finite number, got {value!r}")
    return out


def allowed_offerings(catalog: Catalog, user_groups: set[str]) -> list[Offering]:
    """The offerings a user in ``user_groups`` may launch."""
    return [o for o in catalog.all_offerings() if o.allowed_for(user_groups)]


def validate_options(
    options: dict[str, Any] | None,
    catalog: Catalog,
    user_groups: set[str],
    *,
    default_group: str | None = None,
) -> tuple[LaunchRequest, Offering]:
    """Check ``options`` and return the request and its offering, or raise :class:`OptionError`."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(FIELDS))
    if unknown:
        raise OptionError(unknown[0], f"unknown option; allowed options are {list(FIELDS)}")
    visible = allowed_offerings(catalog, user_groups)
    classes = sorted({o.resource_class for o in visible})
    for name in ("class", "model"):
        if options.get(name) in (None, ""):
            raise OptionError(name, f"is required; allowed classes: {classes}")
    cls, model = str(options["class"]), str(options["model"])
    if catalog.get_class(cls) is None or cls not in classes:
        raise OptionError("class", f"unknown class {cls!r}; allowed: {classes}")
    models = sorted(o.name for o in visible if o.resource_class == cls)
    offering = catalog.offering(cls, model)
    if offering is None or model not in models:
        raise OptionError("model", f"unknown model {model!r} in class {cls!r}; allowed: {models}")

    if "count" not in options:
        raise OptionError("count", f"is required; allowed: {list(offering.counts)}")
    count = _as_int(options["count"], "count")
    if count not in offering.counts:
        raise OptionError("count", f"{count} is not allowed for {offering.key}; allowed: {list(offering.counts)}")

    if "hours" not in options:
        raise OptionError("hours", f"is required; allowed: more than 0 and at most {offering.max_hours:g}")
    hours = _as_float(options["hours"], "hours")
    if not 0 < hours <= offering.max_hours:
        allowed = f"more than 0 and at most {offering.max_hours:g}"
        raise OptionError("hours", f"{hours:g} is out of range; allowed: {allowed}")

    group = options.get("group") or default_group
    if not group:
        raise OptionError("group", f"is required; your groups: {sorted(user_groups)}")
    group = str(group)
    if group not in user_groups:
        raise OptionError("group", f"you are not a member of {group!r}; your groups: {sorted(user_groups)}")
    return LaunchRequest(cls, model, count, hours, group), offering


def reserved_amount(offering: Offering, count: int, hours: float, unit: str = "hours") -> float:
    """What a launch reserves: ``count x hours x weight`` accelerator-hours, or ``x price`` credits."""
    return count * hours * (offering.price_per_hour if unit == "credits" else offering.billing_weight)


def reservation_summary(offering: Offering, count: int, hours: float, group: str, unit: str = "hours") -> str:
    """The picker's "this launch reserves" line; the same words as its script and the refusal message."""
    amount = reserved_amount(offering, count, hours, unit)
    if unit == "credits":
        return (f"{count} x {hours:g} h x ${offering.price_per_hour:.2f} = {amount:.2f} credits "
                f"of {group}'s {offering.resource_class} budget")
    return (f"{count} x {hours:g} h x {offering.billing_weight:g} = {amount:.4g} accelerator-hours "
            f"of {group}'s {offering.resource_class} budget (≈ ${count * hours * offering.price_per_hour:.2f})")
