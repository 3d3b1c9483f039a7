"""Parse and validate ``user_options`` from the picker form or the REST API.

Whatever arrives is untrusted: the form can be edited and the REST API takes
any JSON.  :func:`validate_options` checks every field against the catalog and
the user's groups and returns a :class:`LaunchRequest`, or raises
:class:`OptionError` naming the field and what is allowed.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

from hybridhub.catalog import Catalog, Offering

FIELDS = ("class", "model", "count", "hours", "group")
#: The most characters of a user's own value quoted back in an error (or a log line).
ECHO_LIMIT = 80
#: Default shortest launch and hours resolution (an offering may set its own).
DEFAULT_MIN_HOURS = 0.25
DEFAULT_HOURS_STEP = 0.25
_FORM_INT = re.compile(r"[0-9]{1,6}", re.ASCII)
_FORM_DECIMAL = re.compile(r"[0-9]{1,6}(\.[0-9]{1,6})?", re.ASCII)


def quote(value: Any, limit: int = ECHO_LIMIT) -> str:
    """``repr(value)`` cut to ``limit`` characters, so no request is echoed back in full."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... (cut at {limit} characters)"  # no repr of a megabyte
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... (cut at {limit} characters)"


class OptionError(ValueError):
    """A user option is missing or out of range; ``field`` names it."""

    def __init__(self, field: str, problem: str):
        self.field = quote(field, 40)[1:-1] if len(field) > 40 else field
        super().__init__(f"{self.field}: {problem}")


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
    # store numbers as numbers, as a REST body would; only plain ASCII decimals qualify
    # (no spaces, signs, exponents or non-ASCII digits); other text is left for validation
    for name, pattern, kind in (("count", _FORM_INT, int), ("hours", _FORM_DECIMAL, float)):
        value = opts.get(name)
        if isinstance(value, str) and pattern.fullmatch(value):
            opts[name] = kind(value)
    return opts


def _as_int(value: Any, field: str) -> int:
    """A JSON integer (``1``, not ``"1"``, ``1.0`` or ``true``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise OptionError(field, f"must be a JSON integer, got {quote(value)}")


def _as_float(value: Any, field: str) -> float:
    """A finite JSON number (not a string, not ``true``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OptionError(field, f"must be a JSON number, got {quote(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise OptionError(field, f"must be a finite number, got {quote(value)}")
    try:
        return float(value)
    except OverflowError:  # an integer too large for a float
        raise OptionError(field, f"must be a finite number, got {quote(value)}") from None


def _check_hours(hours: float, offering: Offering, min_hours: float, step: float, scheduled: bool = False) -> None:
    """Hours within ``[min_hours, max_hours]`` and a whole number of ``step``.

    ``scheduled`` hours come from a schedule (a course session lasts to its end): no minimum, no step.
    """
    low = offering.min_hours if offering.min_hours is not None else min_hours
    step = offering.hours_step if offering.hours_step is not None else step
    if scheduled:
        low, step = 0.0, 0.0
    allowed = f"at least {low:g} and at most {offering.max_hours:g}"
    if not low <= hours <= offering.max_hours or hours <= 0:
        raise OptionError("hours", f"{quote(hours)} is out of range; allowed: {allowed}")
    if step > 0 and Decimal(repr(hours)) % Decimal(repr(step)) != 0:
        raise OptionError("hours", f"{hours:g} is not a multiple of {step:g} h; allowed: {allowed}"
                          f" in steps of {step:g}")


def allowed_offerings(catalog: Catalog, user_groups: set[str]) -> list[Offering]:
    """The offerings a user in ``user_groups`` may launch."""
    return [o for o in catalog.all_offerings() if o.allowed_for(user_groups)]


def validate_options(
    options: dict[str, Any] | None,
    catalog: Catalog,
    user_groups: set[str],
    *,
    default_group: str | None = None,
    min_hours: float = DEFAULT_MIN_HOURS,
    hours_step: float = DEFAULT_HOURS_STEP,
    scheduled: bool = False,
) -> tuple[LaunchRequest, Offering]:
    """Check ``options`` and return the request and its offering, or raise :class:`OptionError`.

    ``min_hours`` and ``hours_step`` apply to offerings that do not set their own; ``scheduled``
    hours (a course session's, to its end) need neither.
    """
    if not isinstance(options, (dict, type(None))):
        raise OptionError("user_options", f"must be a JSON object, got {quote(options)}")
    options = dict(options or {})
    unknown = sorted(set(options) - set(FIELDS))
    if unknown:
        raise OptionError(unknown[0], f"unknown option; allowed options are {list(FIELDS)}")
    visible = allowed_offerings(catalog, user_groups)
    classes = sorted({o.resource_class for o in visible})
    for name in ("class", "model"):
        if options.get(name) in (None, ""):
            raise OptionError(name, f"is required; allowed classes: {classes}")
    cls, model = options["class"], options["model"]
    if not isinstance(cls, str) or catalog.get_class(cls) is None or cls not in classes:
        raise OptionError("class", f"unknown class {quote(cls)}; allowed: {classes}")
    models = sorted(o.name for o in visible if o.resource_class == cls)
    offering = catalog.offering(cls, model) if isinstance(model, str) else None
    if offering is None or model not in models:
        raise OptionError("model", f"unknown model {quote(model)} in class {cls!r}; allowed: {models}")

    if "count" not in options:
        raise OptionError("count", f"is required; allowed: {list(offering.counts)}")
    count = _as_int(options["count"], "count")
    if count not in offering.counts:
        raise OptionError("count", f"{count} is not allowed for {offering.key}; allowed: {list(offering.counts)}")

    if "hours" not in options:
        raise OptionError("hours", f"is required; allowed: more than 0 and at most {offering.max_hours:g}")
    hours = _as_float(options["hours"], "hours")
    _check_hours(hours, offering, min_hours, hours_step, scheduled)

    group = options.get("group") or default_group
    if not group:
        raise OptionError("group", f"is required; your groups: {sorted(user_groups)}")
    if not isinstance(group, str) or group not in user_groups:
        raise OptionError(
            "group", f"you are not a member of {quote(group)}; your groups: {sorted(user_groups)}"
        )
    return LaunchRequest(cls, model, count, hours, group), offering


def reserved_amount(offering: Offering, count: int, hours: float, unit: str = "hours",
                    price: float | None = None) -> float:
    """What a launch reserves: ``count x hours x weight`` accelerator-hours, or ``x price`` credits
    (``price``: the hourly price it is admitted at, a provider's live quote; default the catalog's)."""
    price = offering.price_per_hour if price is None else price
    return count * hours * (price if unit == "credits" else offering.billing_weight)


def reservation_summary(offering: Offering, count: int, hours: float, group: str, unit: str = "hours",
                        price: float | None = None) -> str:
    """The picker's "this launch reserves" line; the same words as its script and the refusal message."""
    price = offering.price_per_hour if price is None else price
    amount = reserved_amount(offering, count, hours, unit, price)
    if unit == "credits":
        return (f"{count} x {hours:g} h x ${price:.2f} = {amount:.2f} credits "
                f"of {group}'s {offering.resource_class} budget")
    return (f"{count} x {hours:g} h x {offering.billing_weight:g} = {amount:.4g} accelerator-hours "
            f"of {group}'s {offering.resource_class} budget (≈ ${count * hours * price:.2f})")
