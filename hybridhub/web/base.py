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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
from jupyterhub.services.auth import HubOAuthenticated, UserNotAllowed
from markupsafe import Markup
from tornado import web

from hybridhub.accounting.ledger import Accounting
from hybridhub.web.inputs import (  # noqa: F401  (re-exported: the handlers import them from here)
    CHECKED_KEYWORDS,
    NAME_PATTERN,
    NAME_SCHEMA,
    ApiError,
    api_methods,
    api_routes,
    bool_field,
    check_body,
    check_value,
    date_arg,
    number_field,
    path_name,
    query_value,
    string_field,
)

TEMPLATES = Path(__file__).resolve().parent / "templates"
ADMIN_SCOPE = "custom:quota:admin"
LEAD_SCOPE = "custom:quota:lead"


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
