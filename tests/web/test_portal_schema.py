"""The portal's REST API against its own OpenAPI document, with schemathesis, through a real
hub's proxy and an admin token: no 5xx, every status, header and body as documented."""

from __future__ import annotations

import importlib

import pytest
from hypothesis import HealthCheck, given, settings

from hybridhub.web.app import HANDLER_MODULES
from tests.fixtures.env import require
from tests.fixtures.hub import Hub
from tests.fixtures.portal import wait_for_portal

pytestmark = pytest.mark.usefixtures("hub_prereqs")
PORTAL = "/services/hybridhub-portal"


@pytest.fixture(scope="module")
def st():
    """schemathesis, with a serializer for the CSV import body."""
    try:
        import schemathesis
    except ImportError:
        require(False, "schemathesis (pip)")

    @schemathesis.serializer("text/csv")
    def _csv(ctx, value) -> bytes:
        return str(value).encode()

    return schemathesis


@pytest.fixture(scope="module")
def schema_hub(hub_prereqs, tmp_path_factory):
    hub = Hub(tmp_path_factory.mktemp("hub")).start()
    wait_for_portal(f"{hub.url}{PORTAL}/")
    yield hub
    hub.stop()


@pytest.fixture(scope="module")
def api_schema(st, schema_hub):
    headers = {"Authorization": f"token {schema_hub.user_token('admin')}"}
    schema = st.openapi.from_url(f"{schema_hub.url}{PORTAL}/api/openapi.json", headers=headers)
    return schema, headers


@pytest.mark.parametrize("module", HANDLER_MODULES)
def test_api_conforms_to_its_openapi_document(module, api_schema, schema_hub):
    """Each handler module's operations, ~20 generated requests each."""
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_schema_conformance, response_headers_conformance]
    schema, headers = api_schema
    paths = set(importlib.import_module(module).openapi_paths)
    operations = [op for op in (r.ok() for r in schema.get_all_operations()) if op.path in paths]
    assert operations and {op.path for op in operations} == paths
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        def check(case):
            case.call_and_validate(base_url=f"{schema_hub.url}{PORTAL}", headers=headers,
                                   checks=checks)

        check()
