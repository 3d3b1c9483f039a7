"""Group trust settings, for quota admins: barred from untrusted hardware, confidential folders.

``GET /trust`` (page) and ``GET /api/trust`` (JSON) list every group's settings;
``POST /trust`` (form) and ``PUT /api/groups/<group>/trust`` (JSON) change one group's.
Changes are written to the audit log.  The spawner enforces them at the next launch
(:mod:`hybridhub.spawner.trust`).
"""

from __future__ import annotations

from asyncio import to_thread
from typing import Any

from tornado import web

from hybridhub.accounting import audit
from hybridhub.accounting.trust import PolicyError, TrustPolicy
from hybridhub.web.base import NAME_SCHEMA, ApiError, PortalHandler, bool_field, path_name, responses, string_field


def _as_dict(p) -> dict[str, Any]:
    return {"group": p.group, "barred_untrusted": p.barred_untrusted,
            "confidential_dirs": list(p.confidential_dirs)}


class TrustBase(PortalHandler):
    """Admin-only access to :class:`hybridhub.accounting.trust.TrustPolicy`."""

    @property
    def policy(self) -> TrustPolicy:
        """Groups' trust settings in the portal's database."""
        return TrustPolicy(self.accounting.db)

    async def change(self, group: str, body: dict[str, Any], *, from_form: bool) -> dict[str, Any]:
        """Apply a change from a form or JSON body; 400 naming a bad field, 404 for no group."""
        self.require_admin("change groups' trust settings")
        barred = bool_field(body, "barred_untrusted", from_form=from_form) if (
            "barred_untrusted" in body or from_form) else None
        dirs = body.get("confidential_dirs")
        if from_form and isinstance(dirs, str):
            dirs = [line for line in dirs.splitlines() if line.strip()]
        if dirs is not None and not isinstance(dirs, list):
            raise ApiError(400, "confidential_dirs must be a list of folder paths", "confidential_dirs")
        try:
            p = await to_thread(self.policy.set_policy, group, barred_untrusted=barred,
                                confidential_dirs=dirs, actor=self.viewer.name, audit=audit.record)
        except PolicyError as e:
            raise ApiError(400, str(e), e.field) from None
        except KeyError:
            raise ApiError(404, f"no group {group!r}") from None
        return _as_dict(p)


class TrustListHandler(TrustBase):
    """``GET /trust``, ``GET /api/trust``; ``POST /trust`` (form: group, barred_untrusted, confidential_dirs)."""

    @web.authenticated
    async def get(self) -> None:
        self.require_admin("see groups' trust settings")
        groups = [_as_dict(p) for p in await to_thread(self.policy.all)]
        if self.wants_json():
            self.write_json({"groups": groups})
            return
        self.render_page("trust.html", groups=groups)

    @web.authenticated
    async def post(self) -> None:
        body = self.form_body()
        body.setdefault("barred_untrusted", "false")
        await self.change(string_field(body, "group", max_length=255), body, from_form=True)
        self.redirect(f"{self.prefix}trust")


class GroupTrustHandler(TrustBase):
    """``GET``/``PUT /api/groups/<group>/trust``."""

    @web.authenticated
    async def get(self, group: str) -> None:
        path_name(group, "group")
        self.require_admin("see groups' trust settings")
        found = await to_thread(self.policy.for_groups, [group])
        if group not in found:
            raise ApiError(404, f"no group {group!r}")
        self.write_json(_as_dict(found[group]))

    @web.authenticated
    async def put(self, group: str) -> None:
        path_name(group, "group")
        self.require_admin("change groups' trust settings")
        self.write_json(await self.change(group, self.checked_json_body(SET_BODY), from_form=False))


handlers: list[tuple[str, type]] = [
    ("trust", TrustListHandler),
    ("api/trust", TrustListHandler),
    (r"api/groups/([^/]+)/trust", GroupTrustHandler),
]

_POLICY = {
    "type": "object",
    "required": ["group", "barred_untrusted", "confidential_dirs"],
    "properties": {
        "group": {"type": "string"},
        "barred_untrusted": {"type": "boolean"},
        "confidential_dirs": {"type": "array", "items": {"type": "string"}},
    },
}
schemas: dict[str, Any] = {"TrustPolicy": _POLICY}
_REF = {"$ref": "#/components/schemas/TrustPolicy"}
_GROUP = {"name": "group", "in": "path", "required": True, "schema": NAME_SCHEMA}
#: ``PUT /api/groups/{group}/trust``'s body: the document shows it, the handler checks it.
SET_BODY: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "barred_untrusted": {"type": "boolean"},
        "confidential_dirs": {"type": "array", "items": {"type": "string"},
                              "description": "folders relative to the home"},
    }}

openapi_paths: dict[str, Any] = {
    "/api/trust": {"get": {
        "summary": "Every group's trust settings (quota admins)",
        "operationId": "listTrustPolicies",
        "responses": responses({"description": "groups", "content": {"application/json": {"schema": {
            "type": "object", "required": ["groups"],
            "properties": {"groups": {"type": "array", "items": _REF}}}}}}, 403),
    }},
    "/api/groups/{group}/trust": {
        "get": {
            "summary": "One group's trust settings (quota admins)",
            "operationId": "getTrustPolicy",
            "parameters": [_GROUP],
            "responses": responses({"description": "settings", "content": {
                "application/json": {"schema": _REF}}}, 400, 403, 404),
        },
        "put": {
            "summary": "Bar a group from untrusted hardware and/or set its confidential folders",
            "operationId": "setTrustPolicy",
            "parameters": [_GROUP],
            "requestBody": {"required": True, "content": {"application/json": {"schema": SET_BODY}}},
            "responses": responses({"description": "the new settings", "content": {
                "application/json": {"schema": _REF}}}, 400, 403, 404, 413),
        },
    },
}
