"""A course session in a real browser: the instructor presses "Start now" in the portal,
a student who logs in lands in their running JupyterLab (managed scheduler service)."""

from __future__ import annotations

import time

import pytest
import requests

from hybridhub.hub.config import DEMO_USER_PASSWORD
from tests.fixtures.browser import login
from tests.fixtures.courses import stop_all_servers
from tests.fixtures.env import docs_artifact
from tests.fixtures.hub import hub_factory, hub_prereqs  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser


def test_instructor_starts_now_and_a_student_lands_in_the_server(
    hub_factory, chromium, page, request, tmp_path  # noqa: F811
):
    hub = hub_factory(env={"HYBRIDHUB_COURSE_INTERVAL": "0.5"})
    request.addfinalizer(lambda: stop_all_servers(hub))
    portal = f"{hub.url}/services/hybridhub-portal/"
    start = time.time() + 3600
    r = requests.post(f"{portal}api/courses", timeout=30,
                      headers={"Authorization": f"token {hub.user_token('ivy')}"},
                      json={"group": "course-ml101", "class": "community", "model": "rtx4090",
                            "count": 1, "title": "Lab 2: transformers",
                            "starts_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)),
                            "ends_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                     time.gmtime(start + 1800))})
    assert r.status_code == 201, r.text
    session_id = r.json()["id"]

    login(page, hub.url, "ivy", DEMO_USER_PASSWORD)
    page.goto(f"{portal}courses")
    row = page.locator(f"tr[data-session='{session_id}']")
    assert "scheduled" in row.locator(".state").inner_text()
    row.get_by_role("button", name="Start now").click()
    page.wait_for_url("**/courses?done=**")
    assert "started" in page.locator("#course-done").inner_text()
    assert "running" in row.locator(".state").inner_text()
    page.screenshot(path=str(docs_artifact("course-session.png", tmp_path)), full_page=True)

    student = chromium.new_context(viewport={"width": 1400, "height": 1000})
    student.set_default_timeout(120_000)
    try:
        alice = student.new_page()
        login(alice, hub.url, "alice", DEMO_USER_PASSWORD)
        alice.wait_for_url("**/user/alice/lab**", timeout=120_000)
        alice.wait_for_selector("#jp-main-dock-panel", timeout=120_000)
        model = hub.server_model("alice")
        assert model["ready"] and model["user_options"]["group"] == "course-ml101"
        alice.goto(f"{hub.url}/hub/home")
        sessions = alice.locator("#course-sessions")
        assert "Lab 2: transformers" in sessions.inner_text()
        assert "your server: ready" in sessions.inner_text()
    finally:
        student.close()
    assert hub.server_model("ivy") is None  # the instructor has no seat
