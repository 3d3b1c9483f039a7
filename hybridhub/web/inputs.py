"""What the portal reads from a request, by the rules its OpenAPI document states.

Query parameters and JSON bodies are checked against the same parameter objects and schemas
the document lists (:func:`query_value`, :func:`check_body`), and HTML form fields by the
field helpers; anything the document forbids is an :class:`ApiError` (400) naming the
parameter or field and the limit it broke.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from tornado import web


class ApiError(web.HTTPError):
    """An error for the person calling: ``status``, ``message`` and the bad ``field``."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(status, "%s", message)
        self.message = message
        self.field = field


# ---------------------------------------------------------------- field parsing


def number_field(
    body: dict[str, Any],
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    required: bool = True,
    from_form: bool = False,
) -> float | None:
    """A number from a JSON body (or a form, where it arrives as text), within limits.

    Errors are :class:`ApiError` 400 naming the field and the limit it broke.
    """
    value = body.get(name)
    if value is None or (from_form and value == ""):
        if required:
            raise ApiError(400, f"{name} is required", name)
        return None
    if from_form and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ApiError(400, f"{name} must be a number, got {value!r}", name) from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ApiError(400, f"{name} must be a finite number", name)
    value = float(value)
    if minimum is not None:
        if exclusive_minimum and value <= minimum:
            raise ApiError(400, f"{name} must be more than {minimum:g}, got {value:g}", name)
        if not exclusive_minimum and value < minimum:
            raise ApiError(400, f"{name} must be at least {minimum:g}, got {value:g}", name)
    if maximum is not None and value > maximum:
        raise ApiError(400, f"{name} must be at most {maximum:g}, got {value:g}", name)
    return value


def string_field(
    body: dict[str, Any],
    name: str,
    *,
    choices: tuple[str, ...] | None = None,
    required: bool = True,
    max_length: int = 64,
) -> str | None:
    """A short string (optionally one of ``choices``); 400 naming the field otherwise."""
    value = body.get(name)
    if value is None or value == "":
        if required:
            raise ApiError(400, f"{name} is required", name)
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string", name)
    if choices is not None and value not in choices:
        raise ApiError(400, f"{name} must be one of {list(choices)}, got {value!r}", name)
    if len(value) > max_length or not value.isprintable():
        raise ApiError(400, f"{name} must be at most {max_length} printable characters", name)
    return value


def bool_field(body: dict[str, Any], name: str, *, from_form: bool = False) -> bool:
    """A required boolean (a form sends ``true``/``false``)."""
    value = body.get(name)
    if from_form and isinstance(value, str) and value in ("true", "false"):
        return value == "true"
    if not isinstance(value, bool):
        raise ApiError(400, f"{name} must be true or false", name)
    return value


def date_arg(value: str | None, name: str) -> datetime | None:
    """A date ``YYYY-MM-DD`` (the document's ``format: date``) as a naive UTC datetime at
    midnight; 400 naming it otherwise."""
    if value is None or value == "":
        return None
    return _date(value, name)


def _date(value: Any, name: str) -> datetime:
    """A date ``YYYY-MM-DD`` as a naive datetime at midnight; 400 naming ``name``."""
    try:
        if not isinstance(value, str) or not _DATE.fullmatch(value):
            raise ValueError(value)
        return datetime.combine(date.fromisoformat(value), datetime.min.time())
    except ValueError:
        raise ApiError(400, f"{name} must be a date YYYY-MM-DD, got {_show(value)}", name) from None


# ---------------------------------------------------------------- the document's rules

#: ``format: date`` and ``format: date-time`` (RFC 3339) as the portal reads them.
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
#: What a name (group, user, class, server) may be: no control characters (a database
#: refuses NUL, logs and pages should not carry the others).
NAME_PATTERN = "^[^\\u0000-\\u001f\\u007f]*$"
#: The schema of a name in a path or query: 1 to 255 characters, no control characters.
NAME_SCHEMA: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 255,
                               "pattern": NAME_PATTERN}
#: The JSON Schema keywords :func:`check_value` enforces (the others only describe).
CHECKED_KEYWORDS = frozenset({
    "type", "enum", "minimum", "maximum", "exclusiveMinimum", "minLength", "maxLength",
    "pattern", "format", "properties", "required", "additionalProperties", "minProperties",
    "items", "default",
})
_DESCRIPTIVE = frozenset({"description", "example", "examples", "title"})


def _show(value: Any) -> str:
    """A value for an error message, short: long text and huge numbers are not echoed."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        text = str(value)
        return text if len(text) <= 24 else f"a number of {len(text)} digits"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else repr(value[:40]) + "..."
    return f"a JSON {'list' if isinstance(value, list) else 'object'}"


def _types(schema: dict[str, Any]) -> list[str]:
    kind = schema.get("type", [])
    return [kind] if isinstance(kind, str) else list(kind)


def _num(limit: float) -> str:
    return str(limit) if isinstance(limit, int) else f"{limit:g}"


def _limits(schema: dict[str, Any]) -> str:
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and high is not None:
        return f" from {_num(low)} to {_num(high)}"
    if low is not None:
        return f" of at least {_num(low)}"
    if high is not None:
        return f" of at most {_num(high)}"
    return ""


def _regex(pattern: str) -> re.Pattern[str]:
    """A JSON Schema (ECMA-262) pattern for Python: ``$`` is the very end, as in ECMA-262."""
    return re.compile(pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern)


def check_value(name: str, value: Any, schema: dict[str, Any]) -> Any:
    """``value`` (of the field or parameter ``name``) checked against its document ``schema``:
    400 naming ``name`` and the rule it broke.  Returns the value (an integer as ``int``)."""
    unknown = set(schema) - CHECKED_KEYWORDS - _DESCRIPTIVE
    if unknown:
        raise TypeError(f"{name}: the portal does not check {sorted(unknown)}")
    field = name.split("[", 1)[0]
    types = _types(schema)
    if value is None and "null" in types:
        return None
    if "enum" in schema:
        choices = [c for c in schema["enum"] if c is not None]
        if isinstance(value, bool) or value not in schema["enum"]:
            raise ApiError(400, f"{name} must be one of {choices}, got {_show(value)}", field)
        return value
    kind = next((t for t in types if t != "null"), None)
    if kind == "integer":
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        low, high = schema.get("minimum"), schema.get("maximum")
        if (isinstance(value, bool) or not isinstance(value, int)
                or (low is not None and value < low) or (high is not None and value > high)):
            raise ApiError(400, f"{name} must be an integer{_limits(schema)}, got {_show(value)}",
                           field)
        return value
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float) or (
                isinstance(value, float) and not math.isfinite(value)):
            raise ApiError(400, f"{name} must be a finite number, got {_show(value)}", field)
        low, high = schema.get("minimum"), schema.get("maximum")
        above = schema.get("exclusiveMinimum")
        if above is not None and value <= above:
            raise ApiError(400, f"{name} must be more than {_num(above)}, got {_show(value)}", field)
        if low is not None and value < low:
            raise ApiError(400, f"{name} must be at least {_num(low)}, got {_show(value)}", field)
        if high is not None and value > high:
            raise ApiError(400, f"{name} must be at most {_num(high)}, got {_show(value)}", field)
        return value
    if kind == "boolean":
        if not isinstance(value, bool):
            raise ApiError(400, f"{name} must be true or false, got {_show(value)}", field)
        return value
    if kind == "string":
        return _check_string(name, field, value, schema)
    if kind == "array":
        if not isinstance(value, list):
            raise ApiError(400, f"{name} must be a list, got {_show(value)}", field)
        items = schema.get("items", {})
        return [check_value(f"{name}[{i}]", item, items) for i, item in enumerate(value)]
    if kind == "object":
        if not isinstance(value, dict):
            raise ApiError(400, f"{name} must be a JSON object, got {_show(value)}", field)
        check_body(value, schema)
        return value
    if kind is None:
        return value
    raise TypeError(f"{name}: the portal does not check type {kind!r}")


def _check_string(name: str, field: str, value: Any, schema: dict[str, Any]) -> str:
    if not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string, got {_show(value)}", field)
    low, high = schema.get("minLength", 0), schema.get("maxLength")
    if len(value) < low or (high is not None and len(value) > high):
        if high is None:
            size = f"at least {low}"
        else:
            size = f"{low} to {high}" if low else f"at most {high}"
        raise ApiError(400, f"{name} must be {size} characters, got {len(value)}", field)
    if "pattern" in schema and not _regex(schema["pattern"]).search(value):
        if schema["pattern"] == NAME_PATTERN:
            raise ApiError(400, f"{name} must not contain control characters", field)
        raise ApiError(400, f"{name} must match {schema['pattern']}, got {_show(value)}", field)
    fmt = schema.get("format")
    if fmt == "date":
        _date(value, name)
    elif fmt == "date-time":
        try:
            if not _DATE_TIME.fullmatch(value):
                raise ValueError(value)
            datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
        except ValueError:
            raise ApiError(400, f"{name} must be a date and time like 2026-11-10T14:00:00Z, "
                                f"got {_show(value)}", field) from None
    return value


def check_body(body: dict[str, Any], schema: dict[str, Any]) -> None:
    """A JSON object body against the document's object ``schema``: no field it does not
    list (where ``additionalProperties`` is false), every required one, each field's rules;
    400 naming the first bad field."""
    props: dict[str, Any] = schema.get("properties", {})
    if schema.get("additionalProperties") is False:
        unknown = sorted(set(body) - set(props))
        if unknown:
            raise ApiError(400, f"unknown field {unknown[0]!r}; allowed: {sorted(props)}",
                           unknown[0])
    for name in schema.get("required", ()):
        if name not in body:
            raise ApiError(400, f"{name} is required", name)
    if len(body) < schema.get("minProperties", 0):
        raise ApiError(400, f"give at least one of {', '.join(props)}", next(iter(props), "body"))
    for name, value in body.items():
        if name in props:
            check_value(name, value, props[name])


def query_value(name: str, text: str, schema: dict[str, Any]) -> Any:
    """One query parameter's text read by its ``schema`` (integer, number, boolean, string;
    ``format: date`` gives a datetime); 400 naming it."""
    kind = next((t for t in _types(schema) if t != "null"), "string")
    if kind == "integer" and re.fullmatch(r"-?\d+", text):
        digits = len(text.lstrip("-"))
        if digits > 30:  # Python refuses int() of thousands of digits; none is in range anyway
            raise ApiError(400, f"{name} must be an integer{_limits(schema)}, got a number of "
                                f"{digits} digits", name)
        return check_value(name, int(text), schema)
    if kind == "number" and re.fullmatch(r"-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", text):
        return check_value(name, float(text), schema)
    if kind == "boolean" and text in ("true", "false"):
        return text == "true"
    value = check_value(name, text, schema)
    return _date(value, name) if schema.get("format") == "date" else value


def api_routes(paths: dict[str, Any], prefix: str) -> list[tuple[re.Pattern[str], int, frozenset[str]]]:
    """Each documented API path as (its URL pattern, its number of path parameters, the
    methods the document lists), literal paths first."""
    methods = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
    routes = []
    for path, item in paths.items():
        parts = re.split(r"(\{[^}]+\})", path)
        pattern = "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
        routes.append((re.compile(re.escape(prefix.rstrip("/")) + pattern + r"\Z"),
                       path.count("{"), frozenset(m.upper() for m in item if m in methods)))
    return sorted(routes, key=lambda r: r[1])


def api_methods(routes: Sequence[tuple[re.Pattern[str], int, frozenset[str]]],
                path: str) -> frozenset[str] | None:
    """The methods documented for the API ``path`` (None: the document has no such path)."""
    return next((allowed for pattern, _, allowed in routes if pattern.match(path)), None)


def path_name(value: str, name: str) -> str:
    """A name from the URL path (a group, a user) by :data:`NAME_SCHEMA`; 400 naming it."""
    return check_value(name, value, NAME_SCHEMA)


