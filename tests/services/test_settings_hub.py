"""One source of truth for the metering settings: the value the hub is configured with is the one
the hub, the meter, the portal and the course scheduler use, read back from each process."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from hybridhub.accounting.db import Database
from hybridhub.accounting.models import Reservation
from hybridhub.accounting.settings import ENV_GRACE, ENV_INTERVAL, MeterSettings
from tests.fixtures.env import process_environments

INTERVAL, GRACE = 2.0, 7.0
OPTS = {"class": "community", "model": "rtx4090", "count": 1, "hours": 1, "group": "lab-vision"}
SERVICES = ("hybridhub.services.meter", "hybridhub.web.app", "hybridhub.services.course_scheduler")


@pytest.fixture
def hub(hub_factory, hub_db_url):
    """A demo hub configured (as README says) with a 2 s meter interval and a 7 s grace."""
    return hub_factory(db_url=hub_db_url, env={ENV_INTERVAL: str(INTERVAL), ENV_GRACE: str(GRACE)})


def reservation(db_url: str, user: str) -> Reservation:
    with Database(db_url).session() as s:
        return s.scalars(select(Reservation).where(Reservation.username == user)
                         .order_by(Reservation.id.desc())).first()


def charged_seconds(r: Reservation) -> float:
    return r.amount_charged / (r.amount_reserved / (r.hours * 3600.0))


def test_every_process_uses_the_configured_interval_and_grace(hub):
    for marker in SERVICES:  # the services' own environments, as the hub started them
        envs = [e for cmd, e in process_environments()
                if marker.encode() in cmd and e.get("HYBRIDHUB_DB_URL") == hub.db_url]
        assert envs, f"no {marker} process"
        assert any(MeterSettings.from_env(e) == MeterSettings(INTERVAL, GRACE) for e in envs), (marker, envs)

    r = hub.spawn("carol", OPTS)
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("carol")
    started = time.monotonic()
    deadline = started + 4 * INTERVAL + 5
    while True:  # the meter charges every INTERVAL seconds while the server runs
        running = reservation(hub.db_url, "carol")
        if running.charged_until and running.started_at and running.charged_until > running.started_at:
            break
        assert time.monotonic() < deadline, "the meter did not tick within a few intervals"
        time.sleep(0.2)
    hub.stop_server("carol")
    ran = time.monotonic() - started
    closed = reservation(hub.db_url, "carol")
    assert closed.state == "closed"
    # the hub's release charges what was served, at least one interval: never its 60 s default
    assert charged_seconds(closed) <= ran + INTERVAL + 1, (charged_seconds(closed), ran)
