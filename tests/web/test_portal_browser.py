"""The portal in a real browser: the admin raises a group's budget through the hub's navbar
link, and the student, who had the picker open, sees the new remaining quota when she reloads it
(the hub reuses its groups' budgets across pages only while the database is unchanged)."""

from __future__ import annotations

import pytest

from hybridhub.hub.config import DEMO_ADMIN_PASSWORD, DEMO_USER_PASSWORD
from tests.fixtures.browser import login
from tests.fixtures.portal import wait_for_portal

pytestmark = pytest.mark.browser


@pytest.fixture
def hub(hub_factory):
    hub = hub_factory()
    wait_for_portal(f"{hub.url}/services/hybridhub-portal/")
    return hub


def test_admin_raises_budget_and_student_sees_it_in_the_picker(hub, page, chromium):
    student = chromium.new_context()
    try:
        spage = student.new_page()
        login(spage, hub.url, "alice", DEMO_USER_PASSWORD)
        spage.goto(f"{hub.url}/hub/spawn")
        cell = spage.locator("#class-community .budget [data-group='course-ml101']")
        assert "40.00" in cell.inner_text()

        login(page, hub.url, "admin", DEMO_ADMIN_PASSWORD)
        page.goto(f"{hub.url}/hub/home")
        page.get_by_role("link", name="Quotas & usage").click()  # the hub's navbar link
        page.wait_for_selector("#whoami")
        assert "admin (admin)" in page.inner_text("#whoami")
        page.get_by_role("link", name="Groups & budgets").click()
        row = page.locator("section[data-group='course-ml101'] tr[data-class='community']")
        assert row.locator(".remaining").inner_text() == "40.00"
        row.locator("form.set-amount input[name=amount]").fill("123.5")
        spage.reload()  # the hub's read of the group's budget is fresh (well within UNCHANGED_SECONDS)
        assert "40.00" in cell.inner_text()
        row.locator("form.set-amount button").click()
        page.wait_for_selector("#done")
        row = page.locator("section[data-group='course-ml101'] tr[data-class='community']")
        assert row.locator(".remaining").inner_text() == "123.50"
        spage.reload()
        assert "123.50" in cell.inner_text()

        # A form post without the XSRF token is refused and changes nothing.
        budget_id = row.get_attribute("data-budget")
        r = page.request.post(f"{hub.url}/services/hybridhub-portal/budgets/{budget_id}/top-up",
                              form={"amount": "5"})
        assert r.status == 403
        page.goto(f"{hub.url}/services/hybridhub-portal/audit")
        assert "123.5" in page.inner_text("#audit-table") and "admin" in page.inner_text("#audit-table")

        # and in the portal she sees her group's budget, read-only
        spage.goto(f"{hub.url}/services/hybridhub-portal/groups")
        srow = spage.locator("section[data-group='course-ml101'] tr[data-class='community']")
        assert srow.locator(".remaining").inner_text() == "123.50"
        assert srow.locator("form").count() == 0
    finally:
        student.close()
