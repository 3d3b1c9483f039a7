"""The hub's provider-bills runner: Theta's bill and balance (the local controller) into the accounting
database, with the hub's classes on the theta backend (what the portal's reconciliation compares)."""

from __future__ import annotations

from datetime import date, datetime

from traitlets.config import Config

from hybridhub.accounting.provider_bills import balances, reconciliation
from hybridhub.spawner.provider_bills import ProviderBillsRunner
from tests.fixtures.theta import backend_traits, theta_api, theta_catalog  # noqa: F401  (fixture)

NOW = datetime(2026, 12, 7, 12, 0)


def runner(ctl, tmp_path, **theta) -> ProviderBillsRunner:
    config = Config()
    config.HybridSpawner.db_url = f"sqlite:///{tmp_path / 'acct.sqlite'}"
    config.HybridSpawner.backend_override = ""
    config.HybridSpawner.catalog = theta_catalog()
    for key, value in backend_traits(ctl, **theta).items():
        setattr(config.ThetaBackend, key, value)
    config.ProviderBillsRunner.days = 7
    return ProviderBillsRunner(config=config, clock=lambda: NOW)


async def test_the_runner_records_thetas_bill_balance_and_classes(theta_api, tmp_path):  # noqa: F811
    theta_api.usage = {"2026-11-30": 9.0, "2026-12-06": 1.25, "2026-12-07": 0.5}  # the first is before the 7 days
    theta_api.balance_usd = 12.0
    r = runner(theta_api, tmp_path)
    assert await r.record_once() == ["theta"]
    db = r.spawner.accounting.db
    [bal] = balances(db)
    assert (bal.balance_usd, bal.running_usd_per_hour, bal.resource_classes) == (12.0, 0.0, ["community",
                                                                                               "enterprise"])
    assert bal.fetched_at == NOW and bal.covers_next_day
    days = reconciliation(db, "theta", date(2026, 11, 1), date(2026, 12, 8))
    assert [(d.day, d.provider_usd) for d in days] == [("2026-12-06", 1.25), ("2026-12-07", 0.5)]
    usage = [r for r in theta_api.requests if r["path"].endswith("/billing/usage")]
    assert usage[-1]["query"] == "start_date=2026-12-01&end_date=2026-12-07"


async def test_a_refused_key_records_nothing(theta_api, tmp_path, caplog):  # noqa: F811
    r = runner(theta_api, tmp_path, api_key="revoked")
    assert await r.record_once() == []
    assert balances(r.spawner.accounting.db) == [] and "cannot read the project's billing" in caplog.text
