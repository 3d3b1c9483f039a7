"""The meter's and portal's metrics without a hub: charged hours and money, stops at zero, tick
duration, budget levels (hybridhub.services.observability)."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from sqlalchemy import select

from hybridhub import metrics
from hybridhub.accounting.ledger import Accounting
from hybridhub.accounting.models import UsageEntry
from hybridhub.services.meter import Meter
from hybridhub.services.observability import BudgetCollector

G = "lab-metrics"


def value(metric, **labels) -> float:
    return metric.labels(**labels)._value.get() if labels else metric._value.get()


async def test_a_tick_counts_hours_money_and_stops_at_zero(db, clock):
    acct = Accounting(db, clock=clock, meter_interval=60, grace_seconds=0)
    acct.sync_groups({G: ["alice"]})
    acct.ensure_budget(G, "aws", 2)
    rid = acct.admit(username="alice", group=G, resource_class="aws", model="trn1", count=2,
                     hours=1, price_per_hour=1.5)
    acct.mark_running(rid)
    stopped = []

    async def stop(order) -> bool:
        stopped.append(order.reservation.id)
        acct.release(order.reservation.id, "stopped")  # as the spawner's stop does
        return True

    meter = Meter(acct, stop)
    hours0 = value(metrics.ACCELERATOR_HOURS, **{"class": "aws", "group": G})
    money0 = value(metrics.MONEY_CHARGED, **{"class": "aws", "group": G})
    stops0 = value(metrics.STOPS_AT_ZERO, **{"class": "aws", "group": G})
    ticks0 = metrics.METER_TICK._sum.get(), sum(b.get() for b in metrics.METER_TICK._buckets)
    clock.advance(3600)
    await meter.tick()
    clock.advance(60)
    await meter.tick()
    charged = ledger_hours(db)
    assert charged >= 2.0  # two accelerators for (at least) the hour
    assert value(metrics.ACCELERATOR_HOURS, **{"class": "aws", "group": G}) - hours0 == pytest.approx(charged)
    assert value(metrics.MONEY_CHARGED, **{"class": "aws", "group": G}) - money0 == pytest.approx(1.5 * charged)
    assert stopped == [rid] and value(metrics.STOPS_AT_ZERO, **{"class": "aws", "group": G}) - stops0 == 1
    assert sum(b.get() for b in metrics.METER_TICK._buckets) - ticks0[1] == 2
    assert metrics.METER_LAST_TICK._value.get() > 0
    await meter.tick()  # nothing new: nothing counted twice
    assert value(metrics.ACCELERATOR_HOURS, **{"class": "aws", "group": G}) - hours0 == pytest.approx(charged)
    text = generate_latest(_registry_with(BudgetCollector(db))).decode()
    assert f'hybridhub_budget_used_ratio{{class="aws",group="{G}"}} 1.0' in text
    assert "alice" not in text


def ledger_hours(db) -> float:
    with db.session() as s:
        return sum(float(h) for h in s.execute(select(UsageEntry.accelerator_hours)).scalars())


def _registry_with(collector):
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(collector)
    return registry


async def test_a_server_slow_to_stop_is_one_stop_at_zero(db, clock):
    acct = Accounting(db, clock=clock, meter_interval=60, grace_seconds=0)
    acct.sync_groups({G: ["bob"]})
    acct.ensure_budget(G, "enterprise", 1)
    rid = acct.admit(username="bob", group=G, resource_class="enterprise", model="h100", count=1, hours=1)
    acct.mark_running(rid)
    orders = []

    async def stop(order) -> bool:  # the hub answers 202: the server is still stopping, nothing released yet
        orders.append(order.reservation.id)
        return True

    meter = Meter(acct, stop)
    stops0 = value(metrics.STOPS_AT_ZERO, **{"class": "enterprise", "group": G})
    for _ in range(3):
        clock.advance(3600)
        await meter.tick()
    assert orders.count(rid) >= 2  # asked again while it stops
    assert value(metrics.STOPS_AT_ZERO, **{"class": "enterprise", "group": G}) - stops0 == 1
