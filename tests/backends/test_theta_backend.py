"""ThetaBackend against the local controller, without a hub: the quote check, warm-up, a node taken or lost,
a refused key, and the reconciliation hook (the server started over SSH is a plain ``sleep`` here)."""

from __future__ import annotations

import pytest
from traitlets.config import Config

from hybridhub.backends.base import KnownServer
from hybridhub.backends.theta import ThetaBackend, ThetaClient
from hybridhub.backends.theta.billing import balance, format_report, reconcile_days
from hybridhub.backends.theta.offering import display_name, marker
from hybridhub.catalog import load_catalog
from tests.fixtures.hubless import hubless_backend
from tests.fixtures.theta import KEY, TEMPLATE, backend_traits, theta_api, theta_catalog, theta_controller  # noqa: F401


def config_for(ctl, **more) -> Config:
    config = Config()
    for key, value in backend_traits(ctl, node_cmd=["/bin/sleep", "60"], **more).items():
        setattr(config.ThetaBackend, key, value)
    return config


def backend(ctl, cap: float = 0.40, offering: str = "rtx4090", cls: str = "community", **more) -> ThetaBackend:
    catalog = load_catalog(theta_catalog(cap))
    return hubless_backend(ThetaBackend, config_for(ctl, **more), catalog.offering(cls, offering), username="alice")


def creates(ctl) -> list[dict]:
    return [r for r in ctl.requests if r["method"] == "POST" and r["path"].endswith("/gpu-deployments")]


async def test_a_quote_above_the_ceiling_is_refused_before_anything_is_created(theta_api):  # noqa: F811
    b = backend(theta_api, cap=0.20)
    with pytest.raises(Exception) as e:
        await b.start()
    assert e.value.status_code == 409
    assert "$0.29/h" in e.value.jupyterhub_message and "$0.20/h" in e.value.jupyterhub_message
    assert creates(theta_api) == [] and not theta_api.nodes


async def test_wrong_key_is_unavailable_for_the_user_and_an_error_for_admins(theta_api, caplog):  # noqa: F811
    b = backend(theta_api, api_key="not-the-key")
    with pytest.raises(Exception) as e:
        await b.start()
    assert e.value.status_code == 503 and "This hardware is unavailable" in e.value.jupyterhub_message
    assert "refused this hub's API key (HTTP 403)" in caplog.text and "not-the-key" not in caplog.text
    result = await ThetaBackend.reconcile([], config_for(theta_api, api_key="not-the-key"))
    assert not result and caplog.text.count("refused this hub's API key") == 2


async def test_the_node_taken_between_listing_and_create(theta_api):  # noqa: F811
    assert await ThetaBackend.free_now(load_catalog(theta_catalog()).offering("community", "rtx4090"),
                                       config_for(theta_api)) == 2
    theta_api.fail_next("/gpu-deployments", 404, {"message": "resource community_node/1 is no longer available"},
                        method="POST")
    b = backend(theta_api)
    with pytest.raises(Exception) as e:
        await b.start()
    assert e.value.status_code == 503 and "taken" in e.value.jupyterhub_message
    assert not theta_api.nodes and b.deployment_id is None


async def test_a_timeout_is_unavailable_never_a_500(theta_api):  # noqa: F811
    theta_api.fail_next("gpu-resources", 200, {"status": "success", "body": {}}, delay=1.5)
    b = backend(theta_api, request_timeout=0.5)
    with pytest.raises(Exception) as e:
        await b.start()
    assert e.value.status_code == 503 and "did not answer in time" in e.value.jupyterhub_message


async def test_start_through_warm_up_then_lost_node_then_stop(theta_controller):  # noqa: F811
    ctl = theta_controller
    ctl.warm_up(404, 503, 401)
    b = backend(ctl)
    url = await b.start()
    [dep_id] = ctl.nodes
    node = ctl.nodes[dep_id]
    assert url.startswith("http://127.0.0.1:") and b.deployment_id == dep_id
    [create] = creates(ctl)
    assert '"max_price_per_hour_usd": 0.4' in create["body"] and b.api_token not in create["body"]
    assert node.request["name"].startswith(marker(b.hub_id))
    assert node.request["ssh_public_key"].startswith("ssh-ed25519")
    assert "PRIVATE KEY" not in str(b.get_state()) and set(b.get_state()) == {"deployment_id", "deployment_name",
                                                                               "http_url"}
    ps = ctl._docker("exec", node.container, "sh", "-c", "ps -eo args")
    assert "/bin/sleep 60" in ps and b.api_token not in ps  # started over SSH; the token is not on a command line
    env = ctl._docker("exec", node.container, "sh", "-c", "cat /proc/$(pgrep -f 'sleep 60' | head -1)/environ")
    assert f"JUPYTERHUB_API_TOKEN={b.api_token}" in env  # ...but in the server's environment
    assert await b.poll() is None
    ctl.balance_usd = 5.0  # less than 24 h of the running node at $0.29/h
    bal = await balance(ThetaClient(ctl.url, ctl.project, KEY))
    assert bal.running_usd_per_hour == 0.29 and not bal.covers_next_day
    assert "WARNING: the balance will not cover the running nodes for the next 24 h ($6.96)" in format_report([], bal)
    ctl.lose_node(dep_id)
    status = await b.poll()
    assert "NodeLost" in status and "went offline" in status and b.end_reason(status) == "host lost"
    await b.stop()
    assert node.status == "deleted" and ctl.live_containers() == []


async def test_reconcile_deletes_only_this_hubs_unknown_deployments(theta_controller):  # noqa: F811
    ctl = theta_controller
    config = config_for(ctl)
    hub_id = config.ThetaBackend.hub_id
    kept = await backend(ctl).start()  # a server the hub knows
    known_id = next(iter(ctl.nodes))
    orphan = await backend(ctl).start()  # its hub forgot it
    orphan_id = [i for i in ctl.nodes if i != known_id][0]
    assert kept and orphan
    ctl.resources[0]["capacity"] = 3
    other = {"deployment_template_id": TEMPLATE, "resource_id": "community_node/1", "name": "someoneelse1",
             "container_image": ctl.templates[0]["container_images"][0], "ssh_public_key": "ssh-ed25519 AAAA x",
             "max_price_per_hour_usd": 1.0, "display_name": display_name("alice", "")}
    from hybridhub.backends.theta.client import ThetaClient

    foreign = (await ThetaClient(ctl.url, ctl.project, KEY).create_gpu_deployment(other))["id"]
    known = [KnownServer("alice", "", {"deployment_id": known_id})]
    result = await ThetaBackend.reconcile(known, config)
    assert result.removed == [orphan_id] and result.gone == []
    assert ctl.nodes[orphan_id].status == "deleted"
    assert ctl.nodes[known_id].status == "running" and ctl.nodes[foreign].status in ("pending", "running")
    ctl.lose_node(known_id)
    result = await ThetaBackend.reconcile(known, config)
    assert result.gone == [("alice", "")] and result.removed == [] and hub_id


async def test_home_follows_the_user_without_confidential_folders(theta_controller, tmp_path):  # noqa: F811
    ctl = theta_controller
    home = tmp_path / "homes" / "alice"
    (home / "secret").mkdir(parents=True)
    (home / "notes.txt").write_text("mine")
    (home / "secret" / "plan.txt").write_text("confidential")
    b = backend(ctl, home_dir=str(tmp_path / "homes" / "{username}"), node_home="/home/alice")
    b.hide_paths(["secret"])
    await b.start()
    node = next(iter(ctl.nodes.values()))

    def on_node(cmd: str) -> str:
        return ctl._docker("exec", node.container, "sh", "-c", cmd)

    assert on_node("cat /home/alice/notes.txt") == "mine"
    assert on_node("ls -A /home/alice/secret; stat -c %a /home/alice/secret") == "555\n"  # there, empty, read-only
    assert "HOME=/home/alice" in on_node("cat /proc/$(pgrep -f 'sleep 60' | head -1)/environ")
    on_node("echo result > /home/alice/result.txt && chmod 0755 /home/alice/secret && "
            "echo leak > /home/alice/secret/leak.txt && echo changed > /home/alice/notes.txt")
    assert "PRIVATE KEY" not in str(b.get_state()) and "_key" not in b.get_state()
    await b.stop()
    assert (home / "result.txt").read_text() == "result\n" and (home / "notes.txt").read_text() == "changed\n"
    assert sorted(p.name for p in (home / "secret").iterdir()) == ["plan.txt"]  # nothing came back into it
    assert not (home / ".hybridhub").exists() and node.status == "deleted"


def test_billing_days_compare_charges_per_group_with_thetas_day():
    rows = [{"period": "2026-12-06", "group": "g1", "resource_class": "community", "cost": 0.5},
            {"period": "2026-12-06", "group": "g2", "resource_class": "community", "cost": 0.25},
            {"period": "2026-12-06", "group": "g1", "resource_class": "aws", "cost": 9.0},  # not a Theta class
            {"period": "2026-12-07", "group": "g1", "resource_class": "enterprise", "cost": 1.0}]
    days = reconcile_days(rows, {"2026-12-06": 0.8, "2026-12-08": 0.1}, ["community", "enterprise"])
    assert [(d.day, d.charged, d.theta_usd) for d in days] == [
        ("2026-12-06", {"g1": 0.5, "g2": 0.25}, 0.8), ("2026-12-07", {"g1": 1.0}, 0.0), ("2026-12-08", {}, 0.1)]
    assert [round(d.difference_usd, 4) for d in days] == [0.05, -1.0, 0.1]


async def test_after_a_hub_restart_the_stop_still_brings_the_home_back(theta_controller, tmp_path):  # noqa: F811
    """The hub restarts between start and stop: a new spawner loads the state and finds the launch's key
    in the hub's key folder (0700, key 0600), not in the state; the confidential folder stays out."""
    ctl = theta_controller
    home = tmp_path / "homes" / "alice"
    (home / "secret").mkdir(parents=True)
    (home / "notes.txt").write_text("mine")
    traits = {"home_dir": str(tmp_path / "homes" / "{username}"), "node_home": "/home/alice",
              "key_dir": str(tmp_path / "hub" / "keys")}
    first = backend(ctl, **traits)
    first.hide_paths(["secret"])
    await first.start()
    node = next(iter(ctl.nodes.values()))
    keys = list((tmp_path / "hub" / "keys").iterdir())
    assert [k.name for k in keys] == [f"{first.deployment_name}.key"]
    assert oct(keys[0].stat().st_mode & 0o777) == "0o600" and oct(keys[0].parent.stat().st_mode & 0o777) == "0o700"
    ctl._docker("exec", node.container, "sh", "-c", "echo after > /home/alice/notes.txt && "
                "chmod 0755 /home/alice/secret && echo leak > /home/alice/secret/leak.txt")
    state = first.get_state()
    assert "PRIVATE KEY" not in str(state) and state["hidden_paths"] == ["secret"]
    restarted = backend(ctl, **traits)  # the hub's new process: nothing in memory but the state
    restarted.load_state(state)
    await restarted.stop()
    assert (home / "notes.txt").read_text() == "after\n"
    assert list((home / "secret").iterdir()) == []  # nothing came back into the confidential folder
    assert node.status == "deleted" and list((tmp_path / "hub" / "keys").iterdir()) == []


def test_the_key_store_refuses_a_folder_it_does_not_own_alone(tmp_path):
    from hybridhub.backends.theta.keys import KeyStore
    from hybridhub.backends.theta.ssh import LaunchKey

    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(ValueError, match="key_dir"):
        KeyStore(tmp_path / "link").keep("abc123", LaunchKey())
    with pytest.raises(ValueError, match="deployment name"):
        KeyStore(tmp_path / "k").keep("../../etc/x", LaunchKey())
    store, key = KeyStore(tmp_path / "k"), LaunchKey()
    store.keep("abc123", key)
    assert store.get("abc123").fingerprint == key.fingerprint and store.get("other") is None
    with pytest.raises(FileExistsError):
        store.keep("abc123", LaunchKey())  # never over an existing key
