"""The portal's REST API against its own OpenAPI document, through a real hub's proxy, on
SQLite and PostgreSQL, as a student (alice) and a quota admin.

First the inputs that once answered 500 or were accepted although the document forbids them,
each as a person sends it; then schemathesis over every operation: positive and negative data,
methods the document does not list, no 5xx, every status, header and body as documented."""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, settings

from hybridhub.web.app import SERVICE_NAME, load_modules, openapi_document
from hybridhub.web.base import CHECKED_KEYWORDS
from tests.fixtures.env import IN_CI
from tests.fixtures.portal import Portal, ready_portal

# The test extra installs schemathesis: a missing one fails under CI and skips elsewhere.
schemathesis = importlib.import_module("schemathesis") if IN_CI else pytest.importorskip("schemathesis")

pytestmark = pytest.mark.usefixtures("hub_prereqs")
#: The callers: a student (member of course-ml101) and a quota admin.
ROLES = ("alice", "admin")
#: Fuzzed requests per operation, role and database, in each of positive and negative mode
#: (the coverage phase adds its own edge cases and undocumented methods).
MAX_EXAMPLES = 8


@pytest.fixture(scope="module")
def portal(demo_hub) -> Portal:
    return ready_portal(demo_hub)


@pytest.fixture(scope="module")
def document(portal) -> dict[str, Any]:
    return requests.get(portal.url + "api/openapi.json", timeout=10).json()


def conforms(document: dict[str, Any], path: str, method: str, response: requests.Response) -> None:
    """The response's status is documented for the operation and its JSON body follows the schema."""
    from jsonschema import Draft202012Validator

    documented = document["paths"][path][method]["responses"]
    assert str(response.status_code) in documented, (response.status_code, sorted(documented))
    schema = documented[str(response.status_code)]["content"]["application/json"]["schema"]
    errors = list(Draft202012Validator({**schema, "components": document["components"]})
                  .iter_errors(response.json()))
    assert not errors, (response.text, [e.message for e in errors])


def refused(document, path: str, method: str, r: requests.Response, status: int, field: str,
            *words: str) -> None:
    """A documented ``status`` whose error body names ``field`` and says each of ``words``."""
    assert r.status_code == status, r.text
    conforms(document, path, method, r)
    body = r.json()
    assert body["status"] == status and body["field"] == field, body
    assert all(w in body["message"] for w in words), body


@pytest.fixture
def no_traceback(portal):
    """The hub's log (the portal's output goes there) gets no traceback during the test."""
    before = len(portal.hub.log())
    yield
    new = portal.hub.log()[before:]
    assert "Traceback" not in new and "Uncaught exception" not in new, new[-3000:]


# ---------------------------------------------------------------- query parameters


BAD_LIMITS = [
    ("abc", "limit must be an integer from 1 to 1000, got 'abc'"),
    ("1.5", "limit must be an integer from 1 to 1000, got '1.5'"),
    ("-1", "limit must be an integer from 1 to 1000, got -1"),
    ("0", "limit must be an integer from 1 to 1000, got 0"),
    ("1001", "limit must be an integer from 1 to 1000, got 1001"),
    ("99999999999999999999", "limit must be an integer from 1 to 1000, got 99999999999999999999"),
    ("", "limit must be an integer from 1 to 1000, got ''"),
]


@pytest.mark.parametrize("user", ROLES)
def test_session_limit_outside_the_document_is_400_naming_it(portal, document, no_traceback, user):
    for value, message in BAD_LIMITS:
        r = portal.call(user, "GET", "api/sessions", params={"limit": value})
        refused(document, "/api/sessions", "get", r, 400, "limit", message)
    r = portal.call(user, "GET", "api/sessions", params=[("limit", "5"), ("limit", "6")])
    refused(document, "/api/sessions", "get", r, 400, "limit", "once")
    for value in ("1", "1000"):
        r = portal.call(user, "GET", "api/sessions", params={"limit": value})
        assert r.status_code == 200, r.text
        conforms(document, "/api/sessions", "get", r)


BAD_QUERIES = [
    # path, parameter, value, words of the message
    ("api/usage", "since", "2026-01-01T10:00", ("since must be a date YYYY-MM-DD",)),
    ("api/usage", "since", "20260101", ("since must be a date YYYY-MM-DD",)),
    ("api/usage", "until", "", ("until must be a date YYYY-MM-DD",)),
    ("api/usage", "bucket", "", ("bucket must be one of ['day', 'week', 'month']",)),
    ("api/usage.csv", "until", "2026-02-30", ("until must be a date YYYY-MM-DD",)),
    ("api/usage.csv", "bucket", "Day", ("bucket must be one of",)),
    ("api/demand", "since", "yesterday", ("since must be a date YYYY-MM-DD",)),
    ("api/demand", "until", "2026-1-5", ("until must be a date YYYY-MM-DD",)),
    ("api/demand.csv", "since", "2026-01-01 00:00", ("since must be a date YYYY-MM-DD",)),
    ("api/demand.csv", "until", "", ("until must be a date YYYY-MM-DD",)),
    ("api/usage", "group", "lab\x00vision", ("group must not contain control characters",)),
    ("api/usage.csv", "user", "", ("user must be 1 to 255 characters",)),
    ("api/sessions", "user", "alice\x00", ("user must not contain control characters",)),
    ("api/audit", "group", "x" * 256, ("group must be 1 to 255 characters, got 256",)),
]


@pytest.mark.parametrize("user", ROLES)
def test_report_queries_outside_the_document_are_400_naming_them(portal, document, no_traceback,
                                                                 user):
    for path, name, value, words in BAD_QUERIES:
        r = portal.call(user, "GET", path, params={name: value})
        refused(document, "/" + path, "get", r, 400, name, *words)
        r = portal.call(user, "GET", path, params=[(name, "2026-01-01"), (name, "2026-01-02")])
        refused(document, "/" + path, "get", r, 400, name, f"{name} must be given once")
    r = portal.call(user, "GET", "api/usage", params={"since": "2026-01-01", "bucket": "month"})
    assert r.status_code == 200, r.text
    conforms(document, "/api/usage", "get", r)


GROUP_PATHS = [("get", "api/groups/{}", "/api/groups/{group}", None),
               ("post", "api/groups/{}/budgets", "/api/groups/{group}/budgets",
                {"resource_class": "aws", "amount": 1}),
               ("post", "api/groups/{}/freeze", "/api/groups/{group}/freeze", {"frozen": True}),
               ("get", "api/groups/{}/trust", "/api/groups/{group}/trust", None),
               ("put", "api/groups/{}/trust", "/api/groups/{group}/trust", {"barred_untrusted": True})]


@pytest.mark.parametrize("user", ROLES)
def test_a_group_name_with_a_control_character_is_400(portal, document, no_traceback, user):
    """No group can be called that: refused before any database is asked (PostgreSQL refuses NUL)."""
    for method, url, template, body in GROUP_PATHS:
        r = portal.call(user, method.upper(), url.format("lab%00vision"), json=body)
        refused(document, template, method, r, 400, "group", "must not contain control characters")


def test_an_html_form_may_leave_a_filter_empty(portal):
    """The usage and demand pages' forms send empty fields: on a page that is "no filter"."""
    for page in ("usage?group=&since=&until=&bucket=day", "demand?since=&until="):
        r = portal.call("alice", "GET", page)
        assert r.status_code == 200, r.text[:500]


# ---------------------------------------------------------------- CSV import


STRAY_CR = [
    "group,resource_class,amount\ncourse-ml101,aws\r,33\n",
    "group,resource_class,amount\r\ncourse-ml101,aws,33\rlab-vision,aws,\n",
    'group,resource_class,amount\ncourse-ml101,aws,"33\n' + "x\n" * 70_000,  # a field over csv's limit
    "group,resource_class,amount\r\ncourse-ml101\x00,aws,33\r\n",  # PostgreSQL refuses NUL
]


def test_csv_that_is_not_clean_text_is_400_listing_the_line(portal, document, no_traceback):
    before = portal.call("admin", "GET", "api/groups").json()
    for data in STRAY_CR:
        r = portal.call("admin", "POST", "api/budgets/import", data=data.encode(),
                        headers={"Content-Type": "text/csv"})
        assert r.status_code == 400, r.text[:500]
        conforms(document, "/api/budgets/import", "post", r)
        assert r.json()["field"] == "body" and r.json()["errors"], r.text[:500]
        assert all(e["line"] >= 2 for e in r.json()["errors"]), r.text[:500]
        r = portal.call("alice", "POST", "api/budgets/import", data=data.encode(),
                        headers={"Content-Type": "text/csv"})
        refused(document, "/api/budgets/import", "post", r, 403, None, "import budgets")
    assert portal.call("admin", "GET", "api/groups").json() == before


# ---------------------------------------------------------------- course sessions


def test_start_refused_by_the_session_state_is_a_documented_409(portal, document, no_traceback):
    soon = time.time() + 3 * 3600
    window = {"starts_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(soon)),
              "ends_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(soon + 1800))}
    r = portal.call("admin", "POST", "api/courses", json={
        "group": "course-ml101", "class": "community", "model": "rtx3090", "count": 1,
        "title": "Cancelled before it starts", **window})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    r = portal.call("admin", "POST", f"api/courses/{sid}/cancel")
    assert r.status_code == 200, r.text
    r = portal.call("admin", "POST", f"api/courses/{sid}/start")
    assert r.status_code == 409, r.text
    conforms(document, "/api/courses/{id}/start", "post", r)
    assert r.json()["status"] == 409 and "cancelled" in r.json()["message"]
    r = portal.call("alice", "POST", f"api/courses/{sid}/start")
    refused(document, "/api/courses/{id}/start", "post", r, 403, None, "course-ml101")


# ---------------------------------------------------------------- JSON bodies


def test_unknown_group_and_class_create_nothing(portal, document, no_traceback):
    path = "/api/groups/{group}/budgets"
    before = portal.call("admin", "GET", "api/groups").json()
    r = portal.call("admin", "POST", "api/groups/0/budgets",
                    json={"resource_class": "0", "amount": 1, "kind": None})
    refused(document, path, "post", r, 400, "kind", "kind must be one of")
    r = portal.call("admin", "POST", "api/groups/0/budgets", json={"resource_class": "0", "amount": 1})
    refused(document, path, "post", r, 404, "group", "no group '0'")
    r = portal.call("admin", "POST", "api/groups/no-such-lab/budgets",
                    json={"resource_class": "aws", "amount": 1, "kind": "lab"})
    refused(document, path, "post", r, 404, "group", "no group 'no-such-lab'")
    r = portal.call("admin", "POST", "api/groups/lab-vision/budgets",
                    json={"resource_class": "0", "amount": 1})
    refused(document, path, "post", r, 422, "resource_class", "no resource class '0'",
            "'community'")
    r = portal.call("alice", "POST", "api/groups/0/budgets",
                    json={"resource_class": "0", "amount": 1, "kind": None})
    refused(document, path, "post", r, 403, None, "create budgets")
    assert portal.call("admin", "GET", "api/groups").json() == before
    assert portal.call("admin", "GET", "api/groups/0").status_code == 404


BAD_BODIES = [
    # path (budget: the first lab-vision budget), method, body, field, words of the message
    ("top-up", "post", {"amount": 1, "note": "x"}, "note", "unknown field 'note'"),
    ("top-up", "post", {"amount": None}, "amount", "amount must be a finite number"),
    ("top-up", "post", {"amount": 10**400}, "amount", "at most 1e+06"),
    ("top-up", "post", [1], "body", "must be a JSON object"),
    ("budgets", "post", {"resource_class": "aws", "amount": 1, "model": None}, "model",
     "model must be a string"),
    ("budgets", "post", {"resource_class": "aws", "amount": 1, "per_user_cap": None},
     "per_user_cap", "per_user_cap must be a finite number"),
    ("budgets", "post", {"resource_class": "aws", "amount": 1, "starts_at": "2026-01-01T00:00"},
     "starts_at", "starts_at must be a date YYYY-MM-DD"),
    ("budgets", "post", {"resource_class": "", "amount": 1}, "resource_class",
     "resource_class must be 1 to 64 characters"),
    ("budgets", "post", {"resource_class": "aws", "amount": True}, "amount",
     "amount must be a finite number"),
    ("freeze", "post", {"frozen": True, "why": "audit"}, "why", "unknown field 'why'"),
    ("freeze", "post", {"frozen": None}, "frozen", "frozen must be true or false"),
    ("trust", "put", {"barred_untrusted": None}, "barred_untrusted", "must be true or false"),
    ("trust", "put", {"confidential_dirs": None}, "confidential_dirs",
     "confidential_dirs must be a list"),
    ("trust", "put", {"confidential_dirs": ["grades", 3]}, "confidential_dirs",
     "confidential_dirs[1] must be a string"),
    ("trust", "put", {"barred": True}, "barred", "unknown field 'barred'"),
]
PATHS = {"top-up": ("/api/budgets/{budget_id}/top-up", "api/budgets/{}/top-up"),
         "budgets": ("/api/groups/{group}/budgets", "api/groups/lab-vision/budgets"),
         "freeze": ("/api/groups/{group}/freeze", "api/groups/lab-vision/freeze"),
         "trust": ("/api/groups/{group}/trust", "api/groups/lab-vision/trust")}


def test_bodies_outside_the_document_are_400_naming_the_field(portal, document, no_traceback):
    before = portal.call("admin", "GET", "api/groups").json()
    trust = portal.call("admin", "GET", "api/groups/lab-vision/trust").json()
    budget = portal.budget("lab-vision")["id"]
    for kind, method, body, field, words in BAD_BODIES:
        template, url = PATHS[kind]
        r = portal.call("admin", method.upper(), url.format(budget), json=body)
        refused(document, template, method, r, 400, field, words)
    assert portal.call("admin", "GET", "api/groups").json() == before
    assert portal.call("admin", "GET", "api/groups/lab-vision/trust").json() == trust


# ---------------------------------------------------------------- schemathesis

#: The document as the portal builds it (the served one is checked to be the same): the
#: operations are known when the tests are collected, before any hub runs.
DOCUMENT = openapi_document(load_modules(), f"/services/{SERVICE_NAME}/")
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT)
CHECKS = [getattr(schemathesis.checks, name) for name in (
    "not_a_server_error", "status_code_conformance", "content_type_conformance",
    "response_headers_conformance", "response_schema_conformance",
    "negative_data_rejection", "unsupported_method")]


@schemathesis.serializer("text/csv")
def _csv(ctx, value) -> bytes:
    return str(value).encode()


def test_the_served_document_is_the_one_tested(document):
    assert document == DOCUMENT


def _rules(schema: Any) -> Iterator[dict[str, Any]]:
    """Every (sub)schema the portal checks input against."""
    if isinstance(schema, dict):
        yield schema
        for key in ("properties",):
            for sub in schema.get(key, {}).values():
                yield from _rules(sub)
        if "items" in schema:
            yield from _rules(schema["items"])


def test_the_portal_checks_every_rule_its_document_states():
    """Each query parameter and JSON body schema uses only keywords the portal enforces."""
    for path, item in DOCUMENT["paths"].items():
        for method, op in item.items():
            params = [p["schema"] for p in op.get("parameters", ()) if p["in"] == "query"]
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            for schema in [*params, *([body["schema"]] if body else [])]:
                for rule in _rules(schema):
                    unchecked = set(rule) - CHECKED_KEYWORDS - {"description"}
                    assert not unchecked, (method, path, unchecked)


@pytest.fixture(params=ROLES)
def role(request) -> str:
    return request.param


@SCHEMA.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_api_follows_its_openapi_document(case, portal, role):
    """Each operation: its examples, coverage (edge values, negative data, methods the
    document does not list) and fuzzing with positive and negative data, as each role."""
    case.call_and_validate(base_url=portal.url.rstrip("/"),
                           headers={"Authorization": f"token {portal.token(role)}"},
                           checks=CHECKS)
