"""Groups and budgets: the page with its forms, and the same operations as a JSON API.

Each operation is one handler serving two paths: the form path (``/budgets/7/top-up``,
answered with a redirect to the page) and the API path (``/api/budgets/7/top-up``,
answered with JSON).  Every change goes through :mod:`hybridhub.accounting.ledger` with
:func:`hybridhub.accounting.audit.record` as its audit hook, so it is audited in its own transaction.

Who may do what: admins everything; a group's leader tops up that group's budgets;
members see their groups' budgets.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import asdict
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from sqlalchemy import select
from tornado import web

from hybridhub.accounting import audit
from hybridhub.accounting.budget_csv import CsvImportError, import_budgets
from hybridhub.accounting.budgets import BudgetChange, BudgetError, BudgetSpec
from hybridhub.accounting.db import Database
from hybridhub.accounting.forecast import forecasts
from hybridhub.accounting.models import GROUP_KINDS, PERIODS, UNITS, Budget, Group
from hybridhub.accounting.periods import budget_left, period_used, resets_at_for
from hybridhub.catalog import load_catalog
from hybridhub.hubapi import HubApi, HubApiError
from hybridhub.web.base import (
    MAX_CSV_BYTES,
    NAME_SCHEMA,
    ApiError,
    PortalHandler,
    bool_field,
    date_arg,
    forbidden,
    number_field,
    path_id,
    path_name,
    responses,
    string_field,
)

#: The largest amount a budget may hold or be topped up by in one go.
MAX_AMOUNT = 1e6


def _budget_view(b: Budget, group: str, now) -> dict[str, Any]:
    used = period_used(b, now)
    return {
        "id": b.id,
        "group": group,
        "resource_class": b.resource_class,
        "model": b.model,
        "unit": b.unit,
        "period": b.period,
        "amount": b.amount,
        "used": used,
        "reserved": b.reserved,
        "remaining": budget_left(b, used),  # the ledger's rule (Accounting.remaining)
        "per_user_cap": b.per_user_cap,
        "frozen": b.frozen,
        "starts_at": b.starts_at,
        "ends_at": b.ends_at,
        "resets_at": resets_at_for(b, now),
    }


def groups_view(db: Database, names: Collection[str] | None, now) -> list[dict[str, Any]]:
    """Groups (all, or ``names``) with their budgets, what is left of each and its forecast."""
    query = select(Group).order_by(Group.name)
    if names is not None:
        query = query.where(Group.name.in_(sorted(names)))
    with db.session() as s:
        groups = s.scalars(query).all()
        budgets: dict[int, list[Budget]] = {}
        if groups:
            for b in s.scalars(
                select(Budget)
                .where(Budget.group_id.in_([g.id for g in groups]))
                .order_by(Budget.resource_class, Budget.model, Budget.id)
            ):
                budgets.setdefault(b.group_id, []).append(b)
        views = [
            {
                "name": g.name,
                "kind": g.kind,
                "frozen": g.frozen,
                "budgets": [_budget_view(b, g.name, now) for b in budgets.get(g.id, [])],
            }
            for g in groups
        ]
    found = forecasts(db, [b for g in views for b in g["budgets"]], now)
    for g in views:
        for b in g["budgets"]:
            b["forecast"] = found[b["id"]].as_dict()
    return views


def _change_view(change: BudgetChange) -> dict[str, Any]:
    return asdict(change)


@lru_cache(maxsize=4)
def catalog_classes(catalog_file: str) -> tuple[str, ...]:
    """The resource classes of the catalog (``HYBRIDHUB_CATALOG``, or the default one)."""
    return tuple(rc.name for rc in load_catalog(path=catalog_file or None).classes)


class BudgetAction(PortalHandler):
    """A budget operation reached from a form (redirects back) or the API (JSON)."""

    def body(self, schema: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """The input and whether it came from a form (whose values are all text); a JSON
        body is checked against the document's ``schema`` for it."""
        ctype = self.request.headers.get("Content-Type", "")
        if ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            return self.form_body(), True
        return self.checked_json_body(schema), False

    def done(self, result: dict[str, Any], message: str) -> None:
        """Answer: JSON for the API, back to the groups page for a form."""
        if self.wants_json():
            self.write_json(result)
        else:
            self.redirect(f"{self.prefix}groups?done={quote(message)}", status=303)

    def group_of(self, budget_id: int) -> str:
        """The name of the group owning budget ``budget_id`` (404 if none)."""
        with self.accounting.db.session() as s:
            name = s.scalar(
                select(Group.name).join(Budget, Budget.group_id == Group.id)
                .where(Budget.id == budget_id)
            )
        if name is None:
            if self.viewer.is_admin:
                raise ApiError(404, f"no budget {budget_id}")
            raise forbidden(f"change budget {budget_id}")
        return name

    def budget_json(self, budget_id: int) -> dict[str, Any]:
        """The budget as the API shows it."""
        with self.accounting.db.session() as s:
            row = s.execute(
                select(Budget, Group.name).join(Group, Group.id == Budget.group_id)
                .where(Budget.id == budget_id)
            ).one()
        return _budget_view(row[0], row[1], self.accounting._now())

    def apply(self, fn, *args, **kwargs) -> BudgetChange:
        """Run an accounting change, audited, turning refusals into 400 naming the field."""
        try:
            return fn(*args, actor=self.viewer.name, audit=audit.record, **kwargs)
        except BudgetError as e:
            raise ApiError(400, str(e), e.field) from None


class GroupsHandler(PortalHandler):
    """``GET /groups`` (page) and ``GET /api/groups``: the groups the caller may see."""

    @web.authenticated
    def get(self) -> None:
        now = self.accounting._now()
        groups = groups_view(self.accounting.db, self.viewer.readable_groups(), now)
        if self.wants_json():
            self.write_json({"groups": groups})
            return
        self.render_page(
            "groups.html", groups=groups, done=self.get_argument("done", ""),
            units=UNITS, periods=PERIODS, kinds=GROUP_KINDS, max_amount=MAX_AMOUNT,
        )


class GroupHandler(PortalHandler):
    """``GET /api/groups/{group}``: one group and its budgets."""

    @web.authenticated
    def get(self, group: str) -> None:
        path_name(group, "group")
        self.require_read(group)
        found = groups_view(self.accounting.db, [group], self.accounting._now())
        if not found:
            raise ApiError(404, f"no group {group!r}")
        self.write_json(found[0])


class CreateBudgetHandler(BudgetAction):
    """``POST /groups/{group}/budgets``: create a group's budget, or set it if it exists."""

    @web.authenticated
    async def post(self, group: str) -> None:
        path_name(group, "group")
        self.require_admin("create budgets")
        body, form = self.body(CREATE_BODY)
        unknown = sorted(set(body) - set(CREATE_FIELDS))
        if unknown:
            raise ApiError(400, f"unknown field {unknown[0]!r}", unknown[0])
        spec = self.spec(group, body, form)
        await self.check_names(spec)
        change = self.apply(self.accounting.upsert_budgets, [spec])[0]
        self.done(
            {"budget": self.budget_json(change.budget_id), "change": _change_view(change)},
            f"{change.action}: {group} {spec.resource_class} = {spec.amount:g}",
        )

    async def check_names(self, spec: BudgetSpec) -> None:
        """404 for a group neither the portal nor the hub knows, 422 for a class the catalog does
        not have: a budget is never made for either.  A hub group the portal has not seen yet (no
        member has launched) is mirrored first, with its members and kind, as a launch would."""
        with self.accounting.db.session() as s:
            known = s.scalar(select(Group.id).where(Group.name == spec.group))
        if known is None and not await self.mirror_hub_group(spec.group):
            raise ApiError(404, f"no group {spec.group!r}", "group")
        classes = catalog_classes(os.environ.get("HYBRIDHUB_CATALOG", ""))
        if spec.resource_class not in classes:
            raise ApiError(422, f"no resource class {spec.resource_class!r}; the catalog has "
                                f"{list(classes)}", "resource_class")

    async def mirror_hub_group(self, name: str) -> bool:
        """Copy the hub's group ``name`` (members, kind) into the accounting; False if the hub has none."""
        url, token = os.environ.get("JUPYTERHUB_API_URL"), os.environ.get("JUPYTERHUB_API_TOKEN")
        if not (url and token):
            return False
        try:
            model = await HubApi(url, token).group(name)
        except HubApiError as e:
            if e.code == 404:
                return False
            raise ApiError(503, f"the hub did not answer about group {name!r}: {e}", "group") from None
        kind = (model.get("properties") or {}).get("kind")
        self.accounting.sync_groups({name: model.get("users") or []},
                                    kinds={name: kind} if kind in GROUP_KINDS else None)
        return True

    def spec(self, group: str, body: dict[str, Any], form: bool) -> BudgetSpec:
        """The budget the input asks for (field errors: 400 naming the field)."""
        return BudgetSpec(
            group=group,
            resource_class=string_field(body, "resource_class") or "",
            amount=number_field(body, "amount", minimum=0, maximum=MAX_AMOUNT, from_form=form)
            or 0.0,
            unit=string_field(body, "unit", choices=UNITS, required=False) or "hours",
            period=string_field(body, "period", choices=PERIODS, required=False) or "monthly",
            model=string_field(body, "model", required=False),
            per_user_cap=number_field(body, "per_user_cap", minimum=0, maximum=MAX_AMOUNT,
                                      required=False, from_form=form),
            starts_at=date_arg(string_field(body, "starts_at", required=False), "starts_at"),
            ends_at=date_arg(string_field(body, "ends_at", required=False), "ends_at"),
            kind=string_field(body, "kind", choices=GROUP_KINDS, required=False),
        )


class BudgetHandler(BudgetAction):
    """``GET /api/budgets/{id}``; ``PATCH`` (API) or ``POST`` (form) sets its amount,
    per-user cap or frozen flag (admins)."""

    @web.authenticated
    def get(self, budget_id: str) -> None:
        bid = path_id(budget_id, "budget")
        self.require_read(self.group_of(bid))
        self.write_json(self.budget_json(bid))

    @web.authenticated
    def patch(self, budget_id: str) -> None:
        self.require_admin("change budgets")
        bid = path_id(budget_id, "budget")
        self.group_of(bid)
        body, form = self.body(SET_BODY)
        unknown = sorted(set(body) - set(SET_BODY["properties"]))
        if unknown:
            raise ApiError(400, f"unknown field {unknown[0]!r}", unknown[0])
        kwargs: dict[str, Any] = {}
        if "amount" in body:
            kwargs["amount"] = number_field(body, "amount", minimum=0, maximum=MAX_AMOUNT,
                                            from_form=form)
        if "per_user_cap" in body:
            kwargs["per_user_cap"] = number_field(
                body, "per_user_cap", minimum=0, maximum=MAX_AMOUNT, required=False,
                from_form=form,
            )
        if "frozen" in body:
            kwargs["frozen"] = bool_field(body, "frozen", from_form=form)
        if not kwargs:
            raise ApiError(400, "give amount, per_user_cap or frozen", "amount")
        change = self.apply(self.accounting.set_budget, bid, **kwargs)
        self.done({"budget": self.budget_json(bid), "change": _change_view(change)},
                  f"set budget {bid}")

    post = patch


class TopUpHandler(BudgetAction):
    """``POST /budgets/{id}/top-up``: add to a budget (admins, and the group's leader)."""

    @web.authenticated
    def post(self, budget_id: str) -> None:
        bid = path_id(budget_id, "budget")
        group = self.group_of(bid)
        if not self.viewer.leads_group(group):
            raise forbidden(f"top up budgets of group {group!r}")
        body, form = self.body(TOP_UP_BODY)
        amount = number_field(body, "amount", minimum=0, exclusive_minimum=True,
                              maximum=MAX_AMOUNT, from_form=form)
        change = self.apply(self.accounting.top_up, bid, amount, max_delta=MAX_AMOUNT)
        self.done({"budget": self.budget_json(bid), "change": _change_view(change)},
                  f"topped up {group} by {amount:g}")


class FreezeHandler(BudgetAction):
    """``POST /groups/{group}/freeze``: freeze or thaw a whole group (admins)."""

    @web.authenticated
    def post(self, group: str) -> None:
        path_name(group, "group")
        self.require_admin("freeze groups")
        body, form = self.body(FREEZE_BODY)
        frozen = bool_field(body, "frozen", from_form=form)
        try:
            change = self.apply(self.accounting.freeze_group, group, frozen)
        except KeyError:
            raise ApiError(404, f"no group {group!r}") from None
        self.done({"change": _change_view(change)},
                  f"{'froze' if frozen else 'thawed'} {group}")


class ImportHandler(BudgetAction):
    """``POST /import`` (form upload) or ``POST /api/budgets/import`` (``text/csv`` body)."""

    max_body_bytes = MAX_CSV_BYTES

    @web.authenticated
    def post(self) -> None:
        self.require_admin("import budgets")
        if self.wants_json():
            data = self.request.body.decode("utf-8", errors="replace")
        else:
            files = self.request.files.get("file") or []
            data = files[0].body.decode("utf-8", errors="replace") if files else (
                self.get_body_argument("csv", "")
            )
        try:
            changes = import_budgets(self.accounting, data, actor=self.viewer.name,
                                     audit=audit.record)
        except CsvImportError as e:
            self.import_failed(e)
            return
        self.done({"imported": len(changes), "changes": [_change_view(c) for c in changes]},
                  f"imported {len(changes)} budget(s)")

    def import_failed(self, e: CsvImportError) -> None:
        """400 listing every bad line; nothing was imported."""
        self.set_status(400)
        if self.wants_json():
            self.write_json({
                "status": 400, "message": str(e), "field": "body",
                "errors": [{"line": n, "reason": why} for n, why in e.errors],
            }, status=400)
            return
        now = self.accounting._now()
        self.render_page(
            "groups.html", status=400,
            groups=groups_view(self.accounting.db, None, now), done="",
            import_errors=e.errors, units=UNITS, periods=PERIODS, kinds=GROUP_KINDS,
            max_amount=MAX_AMOUNT,
        )


GROUP = r"([^/]+)"
handlers: list[tuple[str, type]] = [
    ("groups", GroupsHandler),
    ("api/groups", GroupsHandler),
    (f"api/groups/{GROUP}", GroupHandler),
    (f"groups/{GROUP}/budgets", CreateBudgetHandler),
    (f"api/groups/{GROUP}/budgets", CreateBudgetHandler),
    (f"groups/{GROUP}/freeze", FreezeHandler),
    (f"api/groups/{GROUP}/freeze", FreezeHandler),
    (r"budgets/(\d+)", BudgetHandler),
    (r"api/budgets/(\d+)", BudgetHandler),
    (r"budgets/(\d+)/top-up", TopUpHandler),
    (r"api/budgets/(\d+)/top-up", TopUpHandler),
    ("import", ImportHandler),
    ("api/budgets/import", ImportHandler),
]

# ---------------------------------------------------------------- OpenAPI

_NUM = {"type": "number", "minimum": 0, "maximum": MAX_AMOUNT}
_BUDGET = {
    "type": "object",
    "required": ["id", "group", "resource_class", "unit", "period", "amount", "used",
                 "reserved", "remaining", "frozen"],
    "properties": {
        "id": {"type": "integer"},
        "group": {"type": "string"},
        "resource_class": {"type": "string"},
        "model": {"type": ["string", "null"]},
        "unit": {"type": "string", "enum": list(UNITS)},
        "period": {"type": "string", "enum": list(PERIODS)},
        "amount": {"type": "number"},
        "used": {"type": "number"},
        "reserved": {"type": "number"},
        "remaining": {"type": "number", "minimum": 0},
        "forecast": {"type": "object", "description": "burn rate per day over the last "
                     "days and when the budget runs out at it ('never' when idle)",
                     "properties": {"burn_per_day": {"type": "number"},
                                    "window_days": {"type": "integer"},
                                    "runs_out_at": {"type": ["string", "null"]},
                                    "label": {"type": "string"}}},
        "per_user_cap": {"type": ["number", "null"]},
        "frozen": {"type": "boolean"},
        "starts_at": {"type": ["string", "null"]},
        "ends_at": {"type": ["string", "null"]},
        "resets_at": {"type": ["string", "null"]},
    },
}
_GROUP = {
    "type": "object",
    "required": ["name", "kind", "frozen", "budgets"],
    "properties": {
        "name": {"type": "string"},
        "kind": {"type": "string", "enum": list(GROUP_KINDS)},
        "frozen": {"type": "boolean"},
        "budgets": {"type": "array", "items": {"$ref": "#/components/schemas/Budget"}},
    },
}
_CHANGE = {
    "type": "object",
    "required": ["group", "action", "actor", "after"],
    "properties": {
        "budget_id": {"type": ["integer", "null"]},
        "group": {"type": "string"},
        "action": {"type": "string"},
        "actor": {"type": "string"},
        "before": {"type": ["object", "null"]},
        "after": {"type": "object"},
    },
}
_CHANGED = {
    "description": "the budget after the change, and the audited change",
    "content": {"application/json": {"schema": {
        "type": "object", "required": ["budget", "change"],
        "properties": {"budget": {"$ref": "#/components/schemas/Budget"},
                       "change": {"$ref": "#/components/schemas/BudgetChange"}},
    }}},
}
_GROUP_PARAM = {"name": "group", "in": "path", "required": True, "schema": NAME_SCHEMA}
_BUDGET_PARAM = {"name": "budget_id", "in": "path", "required": True,
                 "schema": {"type": "integer", "minimum": 1}}

# The request bodies: the document shows them and the handlers check JSON input against them.
CREATE_BODY: dict[str, Any] = {
    "type": "object", "required": ["resource_class", "amount"],
    "additionalProperties": False,
    "properties": {
        "resource_class": {"type": "string", "minLength": 1, "maxLength": 64,
                           "description": "a class of the catalog (else 422)"},
        "amount": _NUM,
        "unit": {"type": "string", "enum": list(UNITS), "default": "hours"},
        "period": {"type": "string", "enum": list(PERIODS), "default": "monthly"},
        "model": {"type": "string", "maxLength": 64},
        "per_user_cap": _NUM,
        "starts_at": {"type": "string", "format": "date"},
        "ends_at": {"type": "string", "format": "date"},
        "kind": {"type": "string", "enum": list(GROUP_KINDS),
                 "description": "change the group's kind"},
    },
}
CREATE_FIELDS = tuple(CREATE_BODY["properties"])
SET_BODY: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "minProperties": 1,
    "properties": {"amount": _NUM, "per_user_cap": {**_NUM, "type": ["number", "null"]},
                   "frozen": {"type": "boolean"}},
}
TOP_UP_BODY: dict[str, Any] = {
    "type": "object", "required": ["amount"], "additionalProperties": False,
    "properties": {"amount": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_AMOUNT}},
}
FREEZE_BODY: dict[str, Any] = {
    "type": "object", "required": ["frozen"], "additionalProperties": False,
    "properties": {"frozen": {"type": "boolean"}},
}


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


schemas: dict[str, Any] = {"Budget": _BUDGET, "Group": _GROUP, "BudgetChange": _CHANGE}

openapi_paths: dict[str, Any] = {
    "/api/groups": {"get": {
        "summary": "Groups the caller may see, with their budgets",
        "operationId": "listGroups",
        "responses": responses({"description": "groups", "content": {"application/json": {
            "schema": {"type": "object", "required": ["groups"], "properties": {
                "groups": {"type": "array", "items": {"$ref": "#/components/schemas/Group"}}}},
        }}}, 403),
    }},
    "/api/groups/{group}": {"get": {
        "summary": "One group and its budgets",
        "operationId": "getGroup",
        "parameters": [_GROUP_PARAM],
        "responses": responses({"description": "the group", "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/Group"}}}}, 400, 403, 404),
    }},
    "/api/groups/{group}/budgets": {"post": {
        "summary": "Create a budget for the group, or set it if it exists (admins)",
        "operationId": "createBudget",
        "parameters": [_GROUP_PARAM],
        "requestBody": _json_body(CREATE_BODY),
        "responses": responses(_CHANGED, 400, 403, 404, 413, 422),
    }},
    "/api/groups/{group}/freeze": {"post": {
        "summary": "Freeze (nothing is admitted, running servers stop) or thaw a group (admins)",
        "operationId": "freezeGroup",
        "parameters": [_GROUP_PARAM],
        "requestBody": _json_body(FREEZE_BODY),
        "responses": responses({"description": "the audited change", "content": {
            "application/json": {"schema": {
                "type": "object", "required": ["change"],
                "properties": {"change": {"$ref": "#/components/schemas/BudgetChange"}},
            }}}}, 400, 403, 404, 413),
    }},
    "/api/budgets/{budget_id}": {
        "get": {
            "summary": "One budget",
            "operationId": "getBudget",
            "parameters": [_BUDGET_PARAM],
            "responses": responses({"description": "the budget", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Budget"}}}},
                403, 404),
        },
        "patch": {
            "summary": "Set a budget's amount (never below what is used and reserved), "
            "per-user cap or frozen flag (admins)",
            "operationId": "setBudget",
            "parameters": [_BUDGET_PARAM],
            "requestBody": _json_body(SET_BODY),
            "responses": responses(_CHANGED, 400, 403, 404, 413),
        },
    },
    "/api/budgets/{budget_id}/top-up": {"post": {
        "summary": "Add to a budget (admins, and the leader of its group)",
        "operationId": "topUpBudget",
        "parameters": [_BUDGET_PARAM],
        "requestBody": _json_body(TOP_UP_BODY),
        "responses": responses(_CHANGED, 400, 403, 404, 413),
    }},
    "/api/budgets/import": {"post": {
        "summary": "Import budgets from CSV: every bad line is reported, then nothing is "
        "imported (admins)",
        "operationId": "importBudgets",
        "requestBody": {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}},
        "responses": responses({"description": "what was imported", "content": {
            "application/json": {"schema": {
                "type": "object", "required": ["imported", "changes"],
                "properties": {
                    "imported": {"type": "integer"},
                    "changes": {"type": "array",
                                "items": {"$ref": "#/components/schemas/BudgetChange"}},
                },
            }}}}, 400, 403, 413),
    }},
}
