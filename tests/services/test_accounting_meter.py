"""The metering service stops servers through the hub's REST API (a local tornado stand-in)."""

from __future__ import annotations

import logging

import pytest
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from hybridhub.accounting.ledger import Accounting
from hybridhub.hubapi import HubApi, server_path
from hybridhub.services.meter import Meter, from_env, hub_stopper

G = "course-ml101"
TOKEN = "secret-service-token-123"


def test_stop_url_for_named_and_default_servers():
    hub = HubApi("http://hub/hub/api/", TOKEN)
    assert hub.base_url + server_path("alice", "gpu 1") == (
        "http://hub/hub/api/users/alice/servers/gpu%201"
    )
    assert hub.base_url + server_path("bob@x", "") == "http://hub/hub/api/users/bob%40x/server"
    assert TOKEN not in repr(hub)


def test_from_env_needs_hub_url_and_token(tmp_path):
    with pytest.raises(SystemExit):
        from_env({"HYBRIDHUB_DB_URL": f"sqlite:///{tmp_path}/x.sqlite"})


class FakeHubAPI(web.RequestHandler):
    calls: list[tuple[str, str | None]] = []

    def delete(self, path: str) -> None:
        self.calls.append((path, self.request.headers.get("Authorization")))
        self.set_status(204)


@pytest.fixture
async def hub_api():
    FakeHubAPI.calls = []
    sock, port = bind_unused_port()
    server = HTTPServer(web.Application([(r"/hub/api/(.*)", FakeHubAPI)]))
    server.add_sockets([sock])
    yield f"http://127.0.0.1:{port}/hub/api"
    server.stop()


async def test_meter_warns_then_stops_the_server_through_the_hub(db, clock, hub_api, caplog):
    acct = Accounting(db, clock=clock, meter_interval=60, grace_seconds=120)
    acct.sync_groups({G: ["alice", "bob"]})
    acct.ensure_budget(G, "aws", 10)
    named = acct.admit(username="alice", group=G, resource_class="aws", model="trn1",
                       count=1, hours=1, server_name="gpu")
    default = acct.admit(username="bob", group=G, resource_class="aws", model="trn1",
                         count=1, hours=2)
    acct.mark_running(named)
    acct.mark_running(default)
    meter = Meter(acct, hub_stopper(HubApi(hub_api, TOKEN)))
    clock.advance(3600)
    report = await meter.tick()
    assert report.to_stop == [] and FakeHubAPI.calls == []
    clock.advance(120)
    with caplog.at_level(logging.DEBUG):
        report = await meter.tick()
    assert [o.reservation.id for o in report.to_stop] == [named]
    assert FakeHubAPI.calls == [("users/alice/servers/gpu", f"token {TOKEN}")]
    assert any("stopping alice's server 'gpu'" in r.getMessage() for r in caplog.records)
    assert TOKEN not in caplog.text and TOKEN not in repr(meter.stop)
    acct.release(named, "stopped by meter")
    clock.advance(3600)
    await meter.tick()
    clock.advance(120)
    await meter.tick()
    assert FakeHubAPI.calls[-1] == ("users/bob/server", f"token {TOKEN}")


async def test_failed_stop_is_retried_next_tick(db, clock):
    acct = Accounting(db, clock=clock, grace_seconds=0)
    acct.sync_groups({G: ["alice"]})
    acct.ensure_budget(G, "aws", 10)
    rid = acct.admit(username="alice", group=G, resource_class="aws", model="trn1",
                     count=1, hours=1)
    acct.mark_running(rid)
    attempts: list[int] = []

    async def flaky_stop(order) -> bool:
        attempts.append(order.reservation.id)
        return len(attempts) > 1

    meter = Meter(acct, flaky_stop)
    clock.advance(3600)
    await meter.tick()
    clock.advance(60)
    await meter.tick()
    assert attempts == [rid, rid]
