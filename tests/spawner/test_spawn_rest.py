"""The first path end to end through a real hub: REST spawn on the local backend, and every bad option."""

import pytest

pytestmark = pytest.mark.usefixtures("hub_prereqs")

GOOD = {"class": "community", "model": "rtx4090", "count": 1, "hours": 1, "group": "course-ml101"}


def test_rest_spawn_to_ready_and_stop(demo_hub):
    hub = demo_hub
    r = hub.spawn("alice", GOOD)
    assert r.status_code in (201, 202), r.text
    model = hub.wait_ready("alice")
    assert model["user_options"] == {**GOOD, "profile": "community/rtx4090"}  # the admin page's "profile"
    # the server answers through the proxy, with the hardware it was given in its environment
    token = hub.user_token("alice")
    api = hub.url + model["url"] + "api/kernelspecs"
    import requests

    assert requests.get(api, headers={"Authorization": f"token {token}"}, timeout=30).status_code == 200
    hub.stop_server("alice")
    assert hub.server_model("alice") is None


BAD = [
    ({**GOOD, "class": "quantum"}, "class", "allowed: ['aws', 'community', 'enterprise']"),
    ({**GOOD, "model": "rtx9999"}, "model", "allowed: ['rtx3090', 'rtx4090', 'rtx5090']"),
    ({**GOOD, "count": 5}, "count", "allowed: [1, 2]"),
    ({**GOOD, "hours": 100}, "hours", "at most 8"),
    ({**GOOD, "hours": -1}, "hours", "at least 0.25"),
    ({**GOOD, "hours": 1e-9}, "hours", "at least 0.25"),
    ({**GOOD, "hours": " 1 "}, "hours", "must be a JSON number"),
    ({**GOOD, "count": "1"}, "count", "must be a JSON integer"),
    ({**GOOD, "count": "\u0661"}, "count", "must be a JSON integer"),
    ({**GOOD, "group": "lab-vision"}, "group", "not a member of 'lab-vision'"),
    ({k: v for k, v in GOOD.items() if k != "model"}, "model", "is required"),
    ({k: v for k, v in GOOD.items() if k != "count"}, "count", "is required"),
    ({**GOOD, "gpus": 4}, "gpus", "unknown option"),
]


@pytest.mark.parametrize("body, field, allowed", BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_invalid_options_get_400_naming_the_field_and_nothing_starts(demo_hub, body, field, allowed):
    r = demo_hub.spawn("bob", body)
    assert r.status_code == 400, r.text
    message = r.json()["message"]
    assert f"Invalid option {field}:" in message and allowed in message
    assert demo_hub.server_model("bob") is None
