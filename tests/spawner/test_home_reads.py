"""The hub's pages read the accounting database without waiting for its writers (SQLite).

A demo hub on its default SQLite file.  Another process holds SQLite's write lock
(``BEGIN IMMEDIATE``, as the meter's tick or an admission does) while a student loads her
home page, whose banners, course sessions and running servers come from that file.  A read
in a plain ``BEGIN`` (WAL mode) goes on beside the writer; one that began ``IMMEDIATE``
would wait for the lock.  The writer lets go once the page came back, or after
:data:`HOLD_SECONDS`: a page that waited for it comes back only then.
"""

from __future__ import annotations

import sqlite3
import threading

import pytest

from tests.fixtures.hub import hub_prereqs  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("hub_prereqs")

HOLD_SECONDS = 20.0  #: the writer's longest hold (SQLite's busy timeout in the hub is 30 s)
LAUNCH = {"class": "community", "model": "rtx4090", "count": 1, "hours": 1, "group": "course-ml101"}


def test_the_home_page_does_not_wait_for_a_writer(hub_factory):
    hub = hub_factory()
    assert hub.spawn("alice", LAUNCH).status_code in (201, 202)
    hub.wait_ready("alice")
    session = hub.signed_in("alice")
    home = f"{hub.url}/hub/home"
    assert "Your running servers" in session.get(home, timeout=60).text  # read from the accounting file

    writer = sqlite3.connect(hub.db_url.removeprefix("sqlite:///"), timeout=10, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # the write lock, as a tick holds it
    page_back, released = threading.Event(), threading.Event()
    result: dict = {}

    def load() -> None:
        result["r"] = session.get(home, timeout=60)
        result["while_locked"] = not released.is_set()
        page_back.set()

    loader = threading.Thread(target=load)
    loader.start()
    try:
        page_back.wait(HOLD_SECONDS)
    finally:
        released.set()
        writer.execute("ROLLBACK")
        writer.close()
    loader.join(60)
    assert result["r"].status_code == 200, result["r"].text[:500]
    assert result["while_locked"], f"the home page waited for the writer's lock ({HOLD_SECONDS:g} s)"
    assert "Your running servers" in result["r"].text  # read while the writer held its lock
    hub.stop_server("alice")
