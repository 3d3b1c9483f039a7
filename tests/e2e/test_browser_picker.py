"""A student's first path in a real browser: log in, pick hardware, land in JupyterLab, stop."""


import pytest

from hybridhub.hub.config import DEMO_USER_PASSWORD
from tests.fixtures.browser import login
from tests.fixtures.env import docs_artifact

pytestmark = pytest.mark.browser


@pytest.fixture
def hub(hub_factory):
    return hub_factory(env={"HYBRIDHUB_DEMO_INVENTORY": "1"})  # the demo as README's screenshot shows it


def test_student_picks_hardware_lands_in_lab_and_stops(hub, page, tmp_path):
    login(page, hub.url, "alice", DEMO_USER_PASSWORD)
    page.goto(f"{hub.url}/hub/spawn")
    for rc in ("Community GPU", "Enterprise GPU", "AWS Trainium / Inferentia"):
        assert page.get_by_role("group", name=rc).is_visible()
    row = page.locator("tr[data-offering='community/rtx4090']")
    assert "$0.35" in row.inner_text() and "24 GB" in row.inner_text()
    assert "simulated" in row.inner_text()
    assert row.locator(".free-now").inner_text().strip() == "4"  # the demo's simulated inventory
    assert "course-ml101" in page.locator("#class-community .budget").inner_text()  # once per class
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
    row = page.locator("#running-servers tr.running-server")
    assert row.count() == 1
    text = row.inner_text()
    assert "RTX 4090 × 2" in text and "community" in text and "/ 1 h" in text, text
    assert row.locator(".cost").inner_text().startswith("$0.0")  # seconds of 2 x $0.35/h
    assert row.locator(".stops-at").inner_text().endswith("UTC")
    assert "session #" in text  # the provenance record, linked in the portal
    page.click("#stop")
    hub.wait_stopped("alice")
    page.reload()
    assert page.locator("#start").is_visible()


def test_newcomer_gets_a_preselected_offering_a_live_reservation_line_and_choices_kept(hub, page):
    login(page, hub.url, "alice", DEMO_USER_PASSWORD)
    page.goto(f"{hub.url}/hub/spawn")
    checked = page.locator("input[name=offering]:checked")
    assert checked.get_attribute("value") == "community/rtx3090"  # the cheapest offering alice may use
    summary = page.locator("#reserve-summary")
    assert "1 x 2 h x 0.5 = 1 accelerator-hours of course-ml101's community budget (≈ $0.44)" in summary.inner_text()
    assert page.locator("tr[data-offering='enterprise/h100'] .max-hours").inner_text().endswith(" h")
    assert page.locator(".class-trust").count() == 3  # trust said once per class, not per row
    assert page.locator("td.trust").count() == 0

    page.get_by_label("H100 80GB", exact=True).check()
    page.get_by_label("Number of H100 80GB").select_option("8")
    page.get_by_label("Requested hours").fill("3")
    assert "8 x 3 h x 4 = 96 accelerator-hours of course-ml101's enterprise budget (≈ $60.00)" in summary.inner_text()
    page.get_by_role("button", name="Start").click()  # 96 > the course's 10 enterprise hours
    error = page.locator(".spawn-error-msg")
    error.wait_for()
    assert "This launch reserves 8 x 3 h x 4 = 96 accelerator-hours" in error.inner_text()
    assert page.locator("input[name=offering]:checked").get_attribute("value") == "enterprise/h100"
    assert page.get_by_label("Number of H100 80GB").input_value() == "8"
    assert page.get_by_label("Requested hours").input_value() == "3"
    assert hub.server_model("alice") is None
