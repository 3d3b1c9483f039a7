"""Providers' bills beside hybridhub's charges, on SQLite and PostgreSQL (the Theta reconciliation's data)."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pytest

from hybridhub.accounting.ledger import Accounting
from hybridhub.accounting.provider_bills import balances, last_days, reconciliation, record

T0 = datetime(2026, 11, 2, 9, 0)


@pytest.fixture
def acct(db, clock) -> Accounting:
    a = Accounting(db, clock=clock)
    a.sync_groups({"lab": ["carol"], "course": ["alice"]}, kinds={"lab": "lab", "course": "course"})
    for group in ("lab", "course"):
        a.ensure_budget(group, "community", 100.0)
        a.ensure_budget(group, "aws", 100.0)
    return a


def use(acct: Accounting, user: str, group: str, rc: str, start: datetime, hours: float, price: float) -> None:
    rid = acct.admit(username=user, group=group, resource_class=rc, model="m", count=1, hours=hours,
                     price_per_hour=price)
    acct.mark_running(rid, start)
    acct.release(rid, "stopped", now=start + timedelta(hours=hours))


def test_days_compare_charges_per_group_with_the_providers_bill(acct):
    use(acct, "carol", "lab", "community", T0, 2.0, 0.35)
    use(acct, "alice", "course", "community", T0 + timedelta(hours=3), 1.0, 0.35)
    use(acct, "carol", "lab", "aws", T0, 1.0, 9.0)  # not a Theta class
    record(acct.db, "theta", {date(2026, 11, 2): 0.9, date(2026, 11, 4): 0.2}, 40.0, 0.29, T0)
    record(acct.db, "theta", {date(2026, 11, 2): 1.0}, 30.0, 2.0, T0 + timedelta(days=3), ["community"])  # newer
    days = reconciliation(acct.db, "theta", date(2026, 11, 1), date(2026, 11, 5))  # on the recorded classes
    assert [(d.day, d.charged, d.provider_usd) for d in days] == [
        ("2026-11-02", {"course": pytest.approx(0.35), "lab": pytest.approx(0.7)}, 1.0),
        ("2026-11-04", {}, 0.2)]
    assert days[0].difference_usd == pytest.approx(1.0 - 1.05)
    [bal] = balances(acct.db)
    assert (bal.provider, bal.balance_usd, bal.running_usd_per_hour) == ("theta", 30.0, 2.0)
    assert not bal.covers_next_day  # 24 h at $2/h is $48
    assert reconciliation(acct.db, "theta", date(2026, 11, 1), date(2026, 11, 5), ["aws"])[0].charged == {"lab": 9.0}
    assert last_days(date(2026, 11, 4), 3) == (date(2026, 11, 2), date(2026, 11, 5))
