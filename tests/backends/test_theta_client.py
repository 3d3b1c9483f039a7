"""The Theta client against the local controller: the contract of Theta's own client, and each failure."""

from __future__ import annotations

import pytest

from hybridhub.backends.theta import body as tb
from hybridhub.backends.theta.client import MAX_ERROR_DETAIL, ThetaClient, ThetaError, ThetaTimeout
from tests.fixtures.theta import KEY, TEMPLATE, theta_api  # noqa: F401  (fixture)


def client(ctl, key: str = KEY, **kw) -> ThetaClient:
    return ThetaClient(ctl.url + "/", ctl.project, key, **kw)  # a trailing "/" is dropped, as Theta's client does


async def test_requests_carry_the_key_header_only_and_encode_ids(theta_api):  # noqa: F811
    c = client(theta_api)
    listed = tb.resources(await c.list_gpu_resources())
    assert {r.id for r in listed} == {"community_node/1", "h100_80gb"}
    one = tb.resource(await c.get_gpu_resource("community_node/1"))
    assert one.price_per_hour_usd == 0.29 and one.available == 2
    assert tb.resource(await c.get_gpu_resource("h100_80gb", "eu-west")).price_per_hour_usd == 2.3
    with pytest.raises(ThetaError) as e:
        await c.start_gpu_deployment("dplb/a")
    assert e.value.status == 404
    paths = [(r["method"], r["path"], r["query"]) for r in theta_api.requests]
    project = f"/v1/projects/{theta_api.project}"
    assert paths == [("GET", f"{project}/gpu-resources", ""),
                     ("GET", f"{project}/gpu-resources/community_node%2F1", ""),
                     ("GET", f"{project}/gpu-resources/h100_80gb", "region=eu-west"),
                     ("POST", f"{project}/gpu-deployments/dplb%2Fa/start", "")]
    for r in theta_api.requests:
        headers = {k.lower(): v for k, v in r["headers"].items()}
        assert headers["x-api-key"] == KEY and "authorization" not in headers
        assert headers["content-type"] == "application/json"
    assert KEY not in repr(c)


async def test_wrong_key_is_a_403_naming_no_key(theta_api):  # noqa: F811
    with pytest.raises(ThetaError) as e:
        await client(theta_api, "wrong-key-xyz").get_billing_balance()
    assert e.value.status == 403 and e.value.auth
    assert str(e.value) == "Controller API error (403): not authorized"
    theta_api.fail_next("billing/balance", 403, {"error": "key wrong-key-xyz is revoked"})
    with pytest.raises(ThetaError) as e:
        await client(theta_api, "wrong-key-xyz").get_billing_balance()
    assert "wrong-key-xyz" not in str(e.value) and "{error}" not in str(e.value)


async def test_a_10kb_error_body_is_cut_at_4kb(theta_api):  # noqa: F811
    theta_api.fail_next("billing/balance", 502, "x" * 10_000)
    with pytest.raises(ThetaError) as e:
        await client(theta_api).get_billing_balance()
    message = str(e.value)
    assert e.value.status == 502 and message.endswith("...") and len(message) < 4200
    assert message.count("x") == MAX_ERROR_DETAIL


async def test_a_200_with_status_error_is_an_error(theta_api):  # noqa: F811
    theta_api.fail_next("billing/balance", 200, {"status": "error", "message": "upstream error"})
    with pytest.raises(ThetaError) as e:
        await client(theta_api).get_billing_balance()
    assert str(e.value) == "Controller API error: upstream error" and e.value.status is None
    theta_api.fail_next("billing/balance", 200, {"status": "success"})
    with pytest.raises(ThetaError, match="without a body"):
        await client(theta_api).get_billing_balance()
    theta_api.fail_next("billing/balance", 200, "not json")
    with pytest.raises(ThetaError, match="invalid response"):
        await client(theta_api).get_billing_balance()


async def test_a_slow_answer_is_a_timeout(theta_api):  # noqa: F811
    theta_api.fail_next("billing/balance", 200, {"status": "success", "body": {}}, delay=1.5)
    with pytest.raises(ThetaTimeout):
        await client(theta_api, timeout=0.5).get_billing_balance()


async def test_delete_answers_204_and_none(theta_api):  # noqa: F811
    theta_api.fail_next("gpu-deployments/dplb_x", 204, None, method="DELETE")
    assert await client(theta_api).delete_gpu_deployment("dplb_x") is None


async def test_controller_validates_create_as_thetas_tool_schema(theta_api):  # noqa: F811
    c = client(theta_api)
    good = {"deployment_template_id": TEMPLATE, "resource_id": "community_node/1",
            "container_image": theta_api.templates[0]["container_images"][0], "ssh_public_key": "ssh-ed25519 AAAA x"}
    for bad, message in (({}, "max_price_per_hour_usd is required"), ({"name": "bad-name"}, "name must match"),
                         ({"display_name": "d" * 101}, "display_name"),
                         ({"max_price_per_hour_usd": 0}, "above 0"), ({"ssh_port": 0}, "ssh_port"),
                         ({"container_image": "other:1"}, "not allowed")):
        with pytest.raises(ThetaError, match=message):
            await c.create_gpu_deployment(good | bad)
    with pytest.raises(ValueError, match="required for a community GPU"):
        tb.deployment_body(template_id=TEMPLATE, resource_id="community_node/1", image="i", ssh_public_key="k",
                           name="hh1", display_name="d")
    assert not theta_api.nodes


async def test_billing_usage_dates_are_checked(theta_api):  # noqa: F811
    c = client(theta_api)
    assert tb.daily_usage(await c.get_billing_usage("2026-01-01", "2026-12-31")) == {}
    with pytest.raises(ValueError, match="366"):
        await c.get_billing_usage("2026-01-01", "2027-01-02")
    with pytest.raises(ValueError):
        await c.get_billing_usage("2026-1-1", "2026-01-02")
