"""A student's first path in a real browser: log in, pick hardware, land in JupyterLab, stop."""


import pytest

from portal.hubconfig import DEMO_USER_PASSWORD
from tests.fixtures.browser import login
from tests.fixtures.env import docs_artifact

pytestmark = pytest.mark.browser


@pytest.fixture
def hub(hub_factory):
    return hub_factory()


def test_student_picks_hardware_lands_in_lab_and_stops(hub, page, tmp_path):
    login(page, hub.url, "alice", DEMO_USER_PASSWORD)
    page.goto(f"{hub.url}/hub/spawn")
    for rc in ("Community GPU", "Enterprise GPU", "AWS Trainium / Inferentia"):
        assert page.get_by_role("group", name=rc).is_visible()
    row = page.locator("tr[data-offering='community/rtx4090']")
    assert "$0.35" in row.inner_text() and "24 GB" in row.inner_text()
    assert "simulated" in row.inner_text()
    assert "course-ml101" in row.locator(".remaining").inner_text()
    page.screenshot(path=str(docs_artifact("picker.png", tmp_path)), full_page=True)  # README's screenshot

    page.get_by_label("RTX 4090", exact=True).check()
    page.get_by_label("Number of RTX 4090").select_option("2")
    page.get_by_label("Requested hours").fill("1")
    page.get_by_role("button", name="Start").click()
    page.wait_for_url("**/user/alice/lab**", timeout=120_000)
    page.wait_for_selector("#jp-main-dock-panel", timeout=120_000)
    model = hub.server_model("alice")
    assert model["ready"] and model["user_options"]["count"] == 2

    page.goto(f"{hub.url}/hub/home")
    page.click("#stop")
    hub.wait_stopped("alice")
    page.reload()
    assert page.locator("#start").is_visible()
