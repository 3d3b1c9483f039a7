"""CSV import of budgets: every bad line is reported by number, and then nothing is imported.

The file has a header line; columns (any order, unknown ones refused)::

    group,resource_class,amount[,unit][,period][,model][,per_user_cap]
         [,starts_at][,ends_at][,kind][,frozen]

``unit`` defaults to ``hours`` and ``period`` to ``monthly``; dates are ``YYYY-MM-DD``;
``frozen`` is ``true`` or ``false``.  :func:`import_budgets` parses every line first; if any
is bad it raises :class:`CsvImportError` listing ``(line, reason)`` for each, and writes
nothing.  Otherwise all budgets are written by :meth:`Accounting.upsert_budgets` in one
transaction (audited), so a failure there also leaves the database as it was.
"""

from __future__ import annotations

import csv
import io
import math
from datetime import datetime

from hybridhub.accounting.budgets import AuditHook, BudgetChange, BudgetError, BudgetSpec
from hybridhub.accounting.ledger import Accounting

REQUIRED = ("group", "resource_class", "amount")
OPTIONAL = (
    "unit", "period", "model", "per_user_cap", "starts_at", "ends_at", "kind", "frozen",
)
MAX_LINES = 10_000
#: Longest line of a budgets CSV (characters).
MAX_LINE_LENGTH = 1_000


class CsvImportError(ValueError):
    """The file was refused; ``errors`` lists ``(line number, reason)``, first line is 1."""

    def __init__(self, errors: list[tuple[int, str]]):
        self.errors = errors
        lines = "; ".join(f"line {n}: {why}" for n, why in errors[:20])
        more = f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""
        super().__init__(f"nothing imported, {len(errors)} bad line(s): {lines}{more}")


def _number(row: dict[str, str], name: str, required: bool) -> float | None:
    text = (row.get(name) or "").strip()
    if not text:
        if required:
            raise ValueError(f"{name} is required")
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {text!r}")
    if value < 0:
        raise ValueError(f"{name} must be at least 0, got {text}")
    return value


def _date(row: dict[str, str], name: str) -> datetime | None:
    text = (row.get(name) or "").strip()
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%d")
    except ValueError:
        raise ValueError(f"{name} must be a date YYYY-MM-DD, got {text!r}") from None


def _spec(row: dict[str, str]) -> BudgetSpec:
    text = {k: (row.get(k) or "").strip() for k in (*REQUIRED, *OPTIONAL)}
    for name in ("group", "resource_class"):
        if not text[name]:
            raise ValueError(f"{name} is required")
    for name, value in text.items():
        if not value.isprintable():  # a database refuses NUL; no name holds a control character
            raise ValueError(f"{name} must not contain control characters")
    frozen = text["frozen"].lower() or "false"
    if frozen not in ("true", "false"):
        raise ValueError(f"frozen must be true or false, got {text['frozen']!r}")
    amount = _number(row, "amount", True)
    assert amount is not None
    spec = BudgetSpec(
        group=text["group"],
        resource_class=text["resource_class"],
        amount=amount,
        unit=text["unit"] or "hours",
        period=text["period"] or "monthly",
        model=text["model"] or None,
        per_user_cap=_number(row, "per_user_cap", False),
        starts_at=_date(row, "starts_at"),
        ends_at=_date(row, "ends_at"),
        kind=text["kind"] or None,
        frozen=frozen == "true",
    )
    spec.check()
    return spec


def _check_header(header: list[str]) -> None:
    """:class:`CsvImportError` for line 1 if a required column is missing or one is unknown."""
    missing = [c for c in REQUIRED if c not in header]
    unknown = [c for c in header if c not in REQUIRED + OPTIONAL]
    why = ([f"missing column(s) {', '.join(missing)}"] if missing else []) + (
        [f"unknown column(s) {', '.join(unknown)}"] if unknown else [])
    if why:
        raise CsvImportError([(1, "; ".join(why))])


def parse_budgets(data: str) -> tuple[list[BudgetSpec], list[int]]:
    """Every line's :class:`BudgetSpec` and its line number; :class:`CsvImportError` if any
    line (or the header) is bad."""
    data = data.lstrip("\ufeff")
    long = [(n, f"line is {len(text)} characters long; the limit is {MAX_LINE_LENGTH}")
            for n, text in enumerate(data.splitlines(), 1) if len(text) > MAX_LINE_LENGTH]
    if long:
        raise CsvImportError(long[:20])
    # newline="": a carriage return ends a line wherever it stands, as in splitlines() above
    reader = csv.DictReader(io.StringIO(data, newline=""), restkey="_extra")
    try:
        header = reader.fieldnames or []
    except csv.Error as e:
        raise CsvImportError([(1, f"not CSV: {e}")]) from None
    _check_header(header)
    specs: list[BudgetSpec] = []
    lines: list[int] = []
    errors: list[tuple[int, str]] = []
    seen: dict[tuple, int] = {}
    rows = iter(reader)
    while True:
        first = reader.line_num + 1
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error as e:  # e.g. a quoted field longer than csv's field limit
            errors.append((first, f"not CSV: {e}"))
            break
        line = reader.line_num
        if len(specs) + len(errors) >= MAX_LINES:
            errors.append((line, f"more than {MAX_LINES} lines"))
            break
        if row.get("_extra"):
            errors.append((line, "more fields than columns in the header"))
            continue
        if not any((v or "").strip() for v in row.values()):
            continue  # a blank line
        try:
            spec = _spec(row)
        except ValueError as e:
            errors.append((line, str(e)))
            continue
        key = (spec.group, spec.resource_class, spec.model, spec.period, spec.starts_at)
        if key in seen:
            errors.append((line, f"the same budget as line {seen[key]}"))
            continue
        seen[key] = line
        specs.append(spec)
        lines.append(line)
    if errors:
        raise CsvImportError(errors)
    return specs, lines


def import_budgets(
    accounting: Accounting, data: str, actor: str = "", audit: AuditHook | None = None
) -> list[BudgetChange]:
    """Import a budgets CSV in one transaction: all lines or none (:class:`CsvImportError`)."""
    specs, lines = parse_budgets(data)
    try:
        return accounting.upsert_budgets(specs, actor=actor, audit=audit)
    except BudgetError as e:
        line = lines[e.index] if e.index is not None else 0
        raise CsvImportError([(line, str(e))]) from e
