"""Base handlers of the portal service: hub sign-in, roles from OAuth scopes, errors, pages.

Who may do what comes from the scopes the hub put in the caller's token (OAuth cookie
for a browser, ``Authorization: token ...`` for the REST API and the CLI):

- ``custom:quota:admin`` (unfiltered): manages every group and budget, reads everything.
- ``custom:quota:lead!group=<g>``: the leader of group ``<g>`` sees all of ``<g>``
  (budgets, usage of every member, running servers, audit log) and tops up its budgets.
  An unfiltered ``custom:quota:lead`` leads every group.
- anyone else who may access the service (``access:services!service=<portal>``): a
  student, who sees the budgets of their own groups and only their own usage.

Bad input is answered ``400`` with a JSON body ``{"status", "message", "field"}`` naming
the field (API paths, and any request that accepts JSON); pages get an HTML error page.
The OpenAPI document is the rule book: query parameters are read by
:meth:`PortalHandler.query` from the same parameter objects the document lists, and JSON
bodies are checked by :func:`check_body` against the same schemas the document shows, so
what the document forbids is refused with ``400`` naming the parameter and the limit.  A
method the document does not list for an API path is ``405`` with ``Allow``.
Forms carry the hub's XSRF token (``{{ xsrf_form_html() }}``): a cookie-authenticated POST
without it is not signed in, so it is refused with ``403``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
from jupyterhub.services.auth import HubOAuthenticated, UserNotAllowed
from markupsafe import Markup
from tornado import web

from hybridhub.accounting.ledger import Accounting

TEMPLATES = Path(__file__).resolve().parent / "templates"
ADMIN_SCOPE = "custom:quota:admin"
LEAD_SCOPE = "custom:quota:lead"


class ApiError(web.HTTPError):
    """An error for the person calling: ``status``, ``message`` and the bad ``field``."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(status, "%s", message)
        self.message = message
        self.field = field


#: Largest request body of the JSON API and the HTML forms (bytes).
MAX_BODY_BYTES = 16 * 1024
#: Largest budgets CSV upload (bytes): 10,000 lines of 200 characters.
MAX_CSV_BYTES = 2 * 1024 * 1024

#: Ids are 32-bit integer columns; a larger number names nothing.
MAX_ID = 2**31 - 1


def path_id(value: str, what: str) -> int:
    """An id from the URL path (routes match digits only); 404 naming ``what`` beyond the column's range."""
    number = int(value)
    if number > MAX_ID:
        raise ApiError(404, f"no {what} {value}")
    return number


def forbidden(what: str) -> ApiError:
    """A 403 saying what the caller may not do."""
    return ApiError(403, f"you may not {what}")


@dataclass(frozen=True)
class Viewer:
    """The signed-in caller and what their scopes allow."""

    name: str
    is_admin: bool
    leads: frozenset[str] | None  # None: leads every group
    groups: frozenset[str]

    @classmethod
    def from_model(cls, model: dict[str, Any]) -> Viewer:
        """Roles from the hub's user (or service) model and its token's scopes."""
        scopes = set(model.get("scopes") or ())
        leads: set[str] | None = set()
        for scope in scopes:
            base, _, filt = scope.partition("!")
            if base != LEAD_SCOPE:
                continue
            if not filt:
                leads = None
                break
            kind, _, value = filt.partition("=")
            if kind == "group" and value:
                leads.add(value)
        return cls(
            name=model.get("name", ""),
            is_admin=ADMIN_SCOPE in scopes,
            leads=None if leads is None else frozenset(leads),
            groups=frozenset(model.get("groups") or ()),
        )

    @property
    def role(self) -> str:
        """``admin``, ``leader`` or ``student``: what the pages call this caller."""
        if self.is_admin:
            return "admin"
        return "leader" if self.leads is None or self.leads else "student"

    def leads_group(self, group: str) -> bool:
        """Whether the caller may see all of ``group`` and top up its budgets."""
        return self.is_admin or self.leads is None or group in self.leads

    def can_read_group(self, group: str) -> bool:
        """Whether the caller may see ``group``'s budgets (members see their own groups)."""
        return self.leads_group(group) or group in self.groups

    def readable_groups(self) -> set[str] | None:
        """Groups whose budgets the caller may see; None means all."""
        if self.is_admin or self.leads is None:
            return None
        return set(self.leads) | set(self.groups)

    def led_groups(self) -> set[str] | None:
        """Groups whose every member's usage the caller may see; None means all."""
        if self.is_admin or self.leads is None:
            return None
        return set(self.leads)


def _fmt_number(value: float | None, digits: int = 2) -> str:
    if value is None:
        return ""
    return f"{value:,.{digits}f}"


def _jinja_env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["num"] = _fmt_number
    return env


class PortalHandler(HubOAuthenticated, web.RequestHandler):
    """Base of every portal handler: the hub user, the viewer's roles, accounting."""

    @property
    def accounting(self) -> Accounting:
        """The accounting of the portal's database."""
        return self.settings["accounting"]

    @property
    def prefix(self) -> str:
        """The service's URL prefix, e.g. ``/services/hybridhub-portal/``."""
        return self.settings["service_prefix"]

    def wants_json(self) -> bool:
        """API paths answer JSON, and so does anything asking for it."""
        return "/api/" in self.request.path or "application/json" in self.request.headers.get(
            "Accept", ""
        )

    #: This handler's largest request body (bytes); the CSV import allows more.
    max_body_bytes = MAX_BODY_BYTES

    async def prepare(self) -> None:
        """Refuse a method the document does not list (405) and an oversized body (413), then
        identify the caller with the hub, off the loop."""
        self.refuse_undocumented_method()
        size = len(self.request.body or b"")
        if size > self.max_body_bytes:
            raise ApiError(413, f"the request body is {size} bytes; the limit is {self.max_body_bytes} bytes",
                           "body")
        if hasattr(self, "_hub_auth_user_cache"):
            return
        model = await self.hub_auth.get_user(self, sync=False)
        try:
            self._hub_auth_user_cache = self.check_hub_user(model) if model else None
        except UserNotAllowed:
            self._hub_auth_user_cache = None
            raise ApiError(403, f"{model.get('name')} may not use this service") from None

    def is_api(self) -> bool:
        """Whether the request is for the REST API (an ``api/`` path under the prefix)."""
        return self.request.path.startswith(self.prefix + "api/")

    def documented_methods(self) -> frozenset[str] | None:
        """The methods the OpenAPI document lists for this API path; None off the API."""
        if not self.is_api():
            return None
        return api_methods(self.settings.get("api_routes", ()), self.request.path)

    def refuse_undocumented_method(self) -> None:
        """405 (with ``Allow``) for a method the document does not list for this API path."""
        allowed = self.documented_methods()
        if allowed is not None and self.request.method not in allowed:
            raise ApiError(405, f"{self.request.method} is not allowed here; allowed: "
                           f"{', '.join(sorted(allowed))}")

    def get_login_url(self) -> str:
        """API callers are never redirected to log in: they get a 403."""
        if self.wants_json():
            raise ApiError(403, "a hub token (Authorization: token ...) or hub login is needed")
        return super().get_login_url()

    @cached_property
    def viewer(self) -> Viewer:
        """The signed-in caller's roles (call only in ``@web.authenticated`` methods)."""
        return Viewer.from_model(self.current_user)

    def require_admin(self, what: str) -> None:
        """403 unless the caller holds ``custom:quota:admin``."""
        if not self.viewer.is_admin:
            raise forbidden(what)

    def require_read(self, group: str) -> None:
        """403 unless the caller may see ``group``."""
        if not self.viewer.can_read_group(group):
            raise forbidden(f"see group {group!r}")

    # ---------------------------------------------------------------- output

    def write_json(self, data: Any, status: int = 200) -> None:
        """Answer ``data`` as JSON."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(data, default=_json_default))

    def render_page(self, template: str, status: int = 200, **context: Any) -> None:
        """Render an autoescaped jinja2 template from ``hybridhub/web/templates``."""
        env: jinja2.Environment = self.settings["jinja_env"]
        user = self.current_user
        html = env.get_template(template).render(
            prefix=self.prefix,
            hub_url=self.settings["hub_prefix"],
            viewer=Viewer.from_model(user) if user else None,
            xsrf_form_html=lambda: Markup(self.xsrf_form_html()),
            **context,
        )
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(html)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """JSON ``{"status", "message", "field"}`` for the API, an HTML page otherwise."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = getattr(exc, "message", None) or getattr(exc, "log_message", None)
        if message and getattr(exc, "args", None) and "%s" in message:
            message = message % exc.args
        message = message or self._reason
        field = getattr(exc, "field", None)
        allowed = self.documented_methods() if status_code == 405 else None
        if allowed:
            self.set_header("Allow", ", ".join(sorted(allowed)))
        if self.wants_json():
            self.set_header("Content-Type", "application/json; charset=UTF-8")
            self.finish(json.dumps({"status": status_code, "message": message, "field": field}))
            return
        self.clear_header("Content-Type")
        env: jinja2.Environment = self.settings["jinja_env"]
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(
            env.get_template("error.html").render(
                prefix=self.prefix, hub_url=self.settings["hub_prefix"], viewer=None,
                status=status_code, message=message, field=field,
            )
        )

    # ---------------------------------------------------------------- input

    def json_body(self) -> dict[str, Any]:
        """The request's JSON object body (400 if it is not one)."""
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError as e:
            raise ApiError(400, f"the body is not JSON: {e}", "body") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object", "body")
        return body

    def checked_json_body(self, schema: dict[str, Any]) -> dict[str, Any]:
        """The JSON object body, checked against the document's ``schema`` for it (400 naming
        the field and the rule it broke)."""
        body = self.json_body()
        check_body(body, schema)
        return body

    def query(self, params: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The query parameters the document lists (``params``: its parameter objects), each
        read by its schema: given at most once, typed, within its limits, else 400 naming it.

        Absent ones are their schema's ``default`` (or None).  A page's form sends empty
        fields for "no filter", so off the API an empty value counts as absent.
        """
        out: dict[str, Any] = {}
        for param in params:
            if param.get("in") != "query":
                continue
            name, schema = param["name"], param.get("schema", {})
            raw = self.request.query_arguments.get(name) or []
            if len(raw) > 1:
                raise ApiError(400, f"{name} must be given once, got {len(raw)} values", name)
            value = self.decode_argument(raw[0], name=name) if raw else None
            if value == "" and not self.is_api():
                value = None
            if value is None:
                if param.get("required"):
                    raise ApiError(400, f"{name} is required", name)
                out[name] = schema.get("default")
                continue
            out[name] = query_value(name, value, schema)
        return out

    def form_body(self) -> dict[str, str]:
        """The submitted form fields (last value wins), without the XSRF token."""
        return {
            k: self.get_body_argument(k) for k in self.request.body_arguments if k != "_xsrf"
        }


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")
    raise TypeError(f"cannot encode {type(value).__name__}")


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


def error_schema() -> dict[str, Any]:
    """The OpenAPI schema of every error body."""
    return {
        "type": "object",
        "required": ["status", "message", "field"],
        "properties": {
            "status": {"type": "integer"},
            "message": {"type": "string"},
            "field": {"type": ["string", "null"]},
        },
    }


#: What each error status means, in the document.
ERROR_DESCRIPTIONS = {
    400: "bad input: the message names the parameter or field and the rule it broke",
    403: "not allowed", 404: "not found", 409: "conflicts with the current state",
    413: "the request body is larger than allowed",
    422: "names something that does not exist (the field says which)",
}


def responses(ok: dict[str, Any], *codes: int) -> dict[str, Any]:
    """OpenAPI responses: ``ok`` for 200 and the shared error body for ``codes``."""
    out: dict[str, Any] = {"200": ok}
    for code in codes:
        out[str(code)] = {
            "description": ERROR_DESCRIPTIONS.get(code, "error"),
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    return out
