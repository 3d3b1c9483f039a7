"""Money where the user works: the Lab's session and the hub's home page show the cost so far
and the hourly price in money, at the price the launch was admitted at (not the catalog's)."""

from __future__ import annotations

from hybridhub.accounting.lab_session import fmt_money, session_state
from hybridhub.accounting.ledger import Accounting
from hybridhub.catalog import load_catalog
from hybridhub.spawner.home import running_servers


def _running(db, clock, price: float) -> tuple[Accounting, int]:
    acct = Accounting(db, clock=clock, meter_interval=60, grace_seconds=300)
    acct.sync_groups({"lab-vision": ["carol"]}, kinds={"lab-vision": "lab"})
    acct.ensure_budget("lab-vision", "enterprise", 100)
    rid = acct.admit(username="carol", group="lab-vision", resource_class="enterprise", model="h100",
                     count=2, hours=2, price_per_hour=price)
    acct.mark_running(rid)
    return acct, rid


def test_session_state_has_cost_and_hourly_price_at_the_admitted_price(db, clock):
    acct, _ = _running(db, clock, price=3.25)  # the catalog says otherwise: the admitted price counts
    before = session_state(acct, "carol", "")["reservation"]
    assert (before["cost"], before["cost_text"]) == (0.0, "$0.00")
    assert before["price_per_hour"] == 3.25 and before["hourly_price"] == 6.5
    assert before["hourly_price_text"] == "$6.50/h" and before["currency"] == "USD"
    clock.advance(30 * 60)
    acct.meter()  # the meter charges the half hour: 2 x 0.5 h x $3.25
    after = session_state(acct, "carol", "")["reservation"]
    assert after["cost"] == 3.25 and after["cost_text"] == "$3.25"
    assert after["charged_text"] == "1 h"  # hours alongside money


def test_home_page_uses_the_admitted_price_not_the_catalogs(db, clock):
    acct, _ = _running(db, clock, price=1.0)
    catalog = load_catalog(backend_override="local")
    assert catalog.offering("enterprise", "h100").price_per_hour != 1.0
    clock.advance(60 * 60)
    acct.meter()
    (row,) = running_servers(acct, catalog, "carol", now=None)
    assert row["cost_so_far"] == "$2.00" and row["hourly_price"] == "$2.00/h"


def test_money_format():
    assert [fmt_money(v) for v in (0, 0.004, 0.005, 1.234, 12.5, -1)] == [
        "$0.00", "< $0.01", "$0.01", "$1.23", "$12.50", "$0.00"]
