"""Property test of the accounting over random lives of launches, on SQLite and PostgreSQL.

A hypothesis state machine plays the hub and the meter service against one database (the
``db`` fixture): launches are admitted (:meth:`Accounting.admit`, as ``HybridSpawner._admit``
calls it), answer (``mark_running``) or fail to start (``release(..., "failed to start")``),
are stopped (``release(..., "stopped")``, also on the meter's stop orders), the meter ticks,
time passes (an injected clock: nothing sleeps), and the hub or the meter restarts (a fresh
:class:`Accounting`, its process's connections closed), possibly repeating the last
call it made before it went down, which the idempotency keys must make harmless.

After every step and at the end (every launch released), in exact stored integer units
(:data:`~hybridhub.accounting.models.SCALE` per unit):

* a launch that never answered was charged nothing and has no ledger line;
* a launch that answered and was released, having served ``s`` seconds, was charged at
  least ``s`` and at least one meter interval (the minimum charge), and at most
  ``max(s, interval)``, so at most ``s + interval``;
* a running launch's ledger lines cover exactly ``[started_at, charged_until]`` with
  ``charged_until <= now``, and a tick leaves less than one interval of it unbilled;
* every budget's ``used`` is the sum of its ledger lines, its ``reserved`` the sum of its
  open reservations' holds (``amount_reserved - amount_charged``, never below zero), and
  the same for each user's per-user-cap usage; the charged hours equal the ledger;
* nothing is negative; a launch is admitted exactly when its cost fits what is left.

The rounding the code does, and so the only slack allowed: every ledger line is
``ceil_units(x)`` of its exact cost ``x`` (:func:`hybridhub.accounting.periods.ceil_units`:
``ceil(round(x, 3))``, at least 1), which lies in ``[x - 0.0005, x + 1)`` stored units, plus
IEEE noise of the product (relative 1e-15, far below 1e-6 units at these sizes).
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta
from fractions import Fraction

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select, text

from hybridhub.accounting.db import Database
from hybridhub.accounting.ledger import Accounting, QuotaExceeded
from hybridhub.accounting.models import Budget, ChargedHour, Reservation, UsageEntry, UserUsage, to_units
from hybridhub.accounting.periods import ceil_units, cost

START_US = 1794312000 * 10**6  # 2026-11-10 12:00:00 UTC; no run reaches the next month
EPOCH = datetime(1970, 1, 1)
US = 10**6
HOUR_US = 3600 * US
USERS = ("ana", "ben")
#: group -> (resource class, unit); the lab's budget is in hours, the project's in credits
GROUPS = {"lab-a": ("aws", "hours"), "proj-b": ("slurm", "credits")}
#: the rounding of one ledger line, from ceil_units: below by 0.0005 units at most, plus float noise
LINE_BELOW = Fraction(1, 2000) + Fraction(1, 10**6)
#: ... and above by less than one unit
LINE_ABOVE = 1

#: a launch's arguments, and what its server does at once
LAUNCH = dict(
    group=st.sampled_from(sorted(GROUPS)),
    user=st.sampled_from(USERS),
    count=st.integers(1, 3),
    hours=st.sampled_from([0.01, 0.1, 1 / 3, 1.0]),
    weight=st.sampled_from([1.0, 1.5, 4.0]),
    price=st.sampled_from([0.5, 2.75]),
    outcome=st.sampled_from(["answers", "answers", "fails", "pending"]),
)

SETTINGS = settings(
    max_examples=30,
    stateful_step_count=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

TABLES = ("notices", "usage_entries", "charged_hours", "reservations", "user_usage", "budgets",
          "group_members", "groups")


def at(t_us: int) -> datetime:
    """The stored (naive UTC) datetime of model time ``t_us`` (microseconds after START)."""
    return EPOCH + timedelta(microseconds=START_US + t_us)


def us(dt: datetime) -> int:
    return (dt - EPOCH) // timedelta(microseconds=1)


def exact_units(r, span_us: int) -> Fraction:
    """The exact cost of ``span_us`` microseconds of ``r`` at its rate, in stored units."""
    return Fraction(to_units(r.amount_reserved)) * span_us / (Fraction(r.hours) * HOUR_US)


class Launch:
    """The model of one launch: what the hub did to it and when (model microseconds)."""

    def __init__(self, rid: int, key: str, kwargs: dict):
        self.rid = rid
        self.key = key
        self.kwargs = kwargs
        self.answered_at: int | None = None
        self.closed_at: int | None = None

    @property
    def state(self) -> str:
        if self.closed_at is not None:
            return "closed"
        return "admitted" if self.answered_at is None else "running"


class AccountingMachine(RuleBasedStateMachine):
    """The hub and the meter against one database; see the module's docstring."""

    database: Database  # the hub's engine (the db fixture), set by the test
    meter_database: Database  # the meter service's engine on the same database

    def __init__(self):
        super().__init__()
        with self.database.engine.begin() as conn:
            for table in TABLES:
                conn.execute(text(f"DELETE FROM {table}"))
        self.t_us = 0
        self.launches: dict[int, Launch] = {}
        self.stop_orders: list[int] = []
        self.last_call: tuple | None = None
        self.interval = 60.0

    # ------------------------------------------------------------ set-up

    def clock(self) -> float:
        return (START_US + self.t_us) / US

    def process(self, db: Database) -> Accounting:
        """A (re)started process: its connections closed, a new Accounting over ``db``."""
        db.dispose()
        return Accounting(db, clock=self.clock, meter_interval=self.interval, grace_seconds=self.grace)

    @initialize(
        interval=st.sampled_from([60.0, 45.5, 7.0]),
        grace=st.sampled_from([0.0, 120.0]),
        lab=st.sampled_from([0.05, 0.5, 3.0]),
        cap=st.sampled_from([None, 0.5, 1.0]),  # per-user cap, as a share of the lab's budget
        credits=st.sampled_from([1.0, 20.0]),
        first=st.lists(st.fixed_dictionaries(LAUNCH), min_size=1, max_size=3),
    )
    def setup(self, interval, grace, lab, cap, credits, first):
        """The settings, the budgets and the first launches (however the rules are drawn)."""
        self.interval, self.grace = interval, grace
        self.hub = self.process(self.database)
        self.meter = self.process(self.meter_database)
        self.hub.sync_groups({g: USERS for g in GROUPS})
        self.hub.ensure_budget("lab-a", "aws", lab, per_user_cap=None if cap is None else lab * cap)
        self.hub.ensure_budget("proj-b", "slurm", credits, unit="credits")
        for kwargs in first:
            self.launch(**kwargs)

    def teardown(self):
        # the end (unless a step failed, which hypothesis is reporting): every server goes
        # away, the meter ticks once more, and all is settled
        if hasattr(self, "hub") and sys.exc_info()[0] is None:
            self.t_us += 7 * US
            for launch in self.launches.values():
                if launch.state != "closed":
                    self.release(launch, "stopped")
            self.tick()
            self.check_everything()
            left = self.read()["budgets"]
            assert all(b["reserved"] == 0 for b in left.values()), left

    # ------------------------------------------------------------ the hub's and the meter's calls

    def pick(self, states: tuple[str, ...], n: int) -> Launch | None:
        found = [launch for launch in self.launches.values() if launch.state in states]
        return found[n % len(found)] if found else None

    def release(self, launch: Launch, reason: str) -> None:
        done = self.hub.release(launch.rid, reason, now=self.clock())
        assert not done.already_closed
        if launch.answered_at is None:
            assert done.charged == 0, (reason, done)
        launch.closed_at = self.t_us
        self.last_call = ("release", launch.rid, reason, self.clock())

    def tick(self) -> None:
        now = self.clock()
        report = self.meter.meter(now=now)
        self.last_call = ("tick", now)
        running = {launch.rid for launch in self.launches.values() if launch.state == "running"}
        ordered = {order.reservation.id for order in report.to_stop}
        assert ordered <= running, (ordered, running)
        self.stop_orders = sorted(ordered)
        # a tick bills every running server up to less than one interval before now
        interval_us = round(self.interval * US)
        for r in self.read()["reservations"].values():
            if r.state == "running":
                assert 0 <= self.t_us + START_US - us(r.charged_until) < interval_us, r

    @rule(**LAUNCH)
    def launch(self, group, user, count, hours, weight, price, outcome):
        """The hub admits a launch as ``HybridSpawner._admit`` does, or it is refused; the
        server answers at once, fails to start, or is still starting."""
        if len(self.launches) >= 6:
            return
        rc, unit = GROUPS[group]
        name = f"s{len(self.launches)}"
        kwargs = dict(username=user, group=group, resource_class=rc, model="m", count=count,
                      hours=hours, billing_weight=weight, price_per_hour=price, server_name=name)
        key = f"launch:{user}:{name}:{self.t_us}"
        before = self.read()
        budget = next(b for b in before["budgets"].values() if b["rc"] == rc)
        asked = ceil_units(cost(unit, count, hours, weight, price))
        fits = budget["amount"] - budget["used"] - budget["reserved"] >= asked
        if budget["cap"] is not None:
            mine = before["users"].get((budget["id"], user), {"used": 0, "reserved": 0})
            fits = fits and budget["cap"] - mine["used"] - mine["reserved"] >= asked
        try:
            rid = self.hub.admit(idempotency_key=key, **kwargs)
        except QuotaExceeded:
            assert not fits, (budget, asked)  # refused only when it does not fit
            assert self.read()["reservations"].keys() == before["reservations"].keys()
            return
        assert fits, (budget, asked)
        assert rid not in self.launches
        self.launches[rid] = Launch(rid, key, kwargs)
        self.last_call = ("admit", rid, key, kwargs)
        after = self.read()
        assert to_units(after["reservations"][rid].amount_reserved) == asked
        b = after["budgets"][budget["id"]]
        assert b["amount"] - b["used"] - b["reserved"] >= 0, b  # admission never overspends
        if outcome != "pending":
            self.start_ends(rid, outcome == "answers")

    @rule(n=st.integers(0, 5), answered=st.sampled_from([True, True, True, False]))
    def start_pending(self, n, answered):
        """A server that was still starting answers, or dies or never answers."""
        if launch := self.pick(("admitted",), n):
            self.start_ends(launch.rid, answered)

    def start_ends(self, rid: int, answered: bool) -> None:
        """The server answers (metering starts), or dies or never answers (no charge)."""
        launch = self.launches[rid]
        if not answered:
            self.release(launch, "failed to start")
            return
        assert self.hub.mark_running(launch.rid)
        launch.answered_at = self.t_us
        self.last_call = ("answer", launch.rid, self.clock())

    @rule(n=st.integers(0, 5))
    def stop(self, n):
        """The user stops the server, or it exits."""
        if launch := self.pick(("running",), n):
            self.release(launch, "stopped")

    @rule()
    def obey_stop_orders(self):
        """The meter service stops what the last tick listed; the spawner's stop releases it."""
        for rid in self.stop_orders:
            if self.launches[rid].state != "closed":
                self.release(self.launches[rid], "stopped")
        self.stop_orders = []

    @rule(intervals=st.sampled_from([0, 1, 1, 2, 5]), late_us=st.integers(0, 2 * US))
    def meter_tick(self, intervals, late_us):
        """The meter service ticks (now, or after some intervals and a little lag); with no
        server running it only lets the time pass (a tick is slow, and would charge nothing)."""
        if intervals:
            self.t_us += intervals * round(self.interval * US) + late_us
        if any(launch.state == "running" for launch in self.launches.values()):
            self.tick()

    @rule(wait=st.one_of(
        st.integers(0, 150 * US),                     # within a few intervals, any microsecond
        st.sampled_from([1, 7 * US, 45_500_000, 60 * US]),  # right on an interval
        st.integers(0, 2 * HOUR_US),                  # past reservations' ends and the grace
    ), then_tick=st.booleans())
    def wait(self, wait, then_tick):
        """Time passes (the meter is late or down), and the meter may tick at its end."""
        self.t_us += wait
        if then_tick:
            self.tick()

    @rule(which=st.sampled_from(["hub", "meter", "both"]), replay=st.booleans())
    def restart(self, which, replay):
        """A process restarts; with ``replay`` it repeats its last call, whose outcome it lost."""
        if which in ("hub", "both"):
            self.hub = self.process(self.hub.db)
        if which in ("meter", "both"):
            self.meter = self.process(self.meter.db)
        if not replay or self.last_call is None:
            return
        before = self.read()
        kind, *args = self.last_call
        if kind == "admit":
            rid, key, kwargs = args
            assert self.hub.admit(idempotency_key=key, **kwargs) == rid
        elif kind == "answer":
            rid, when = args
            assert not self.hub.mark_running(rid, started_at=when)
        elif kind == "release":
            rid, reason, when = args
            assert self.hub.release(rid, reason, now=when).already_closed
        else:
            (when,) = args
            assert self.meter.meter(now=when).charged == 0
        assert self.read() == before, kind  # nothing charged, reserved or released twice

    # ------------------------------------------------------------ the properties

    def read(self) -> dict:
        """Every stored amount the properties compare, in stored integer units."""
        with self.database.engine.connect() as c:
            res = {r.id: r for r in c.execute(select(Reservation.__table__))}
            lines = c.execute(select(UsageEntry.__table__).order_by(UsageEntry.id)).all()
            budgets = {b.id: {"id": b.id, "rc": b.resource_class, "amount": to_units(b.amount),
                              "used": to_units(b.used), "reserved": to_units(b.reserved),
                              "cap": None if b.per_user_cap is None else to_units(b.per_user_cap)}
                       for b in c.execute(select(Budget.__table__))}
            users = {(u.budget_id, u.username): {"used": to_units(u.used), "reserved": to_units(u.reserved),
                                                 "period_start": u.period_start}
                     for u in c.execute(select(UserUsage.__table__))}
            hours = {(h.budget_id, h.hour): to_units(h.amount)
                     for h in c.execute(select(ChargedHour.__table__))}
        return {"reservations": res, "lines": lines, "budgets": budgets,
                "users": users, "hours": hours}

    @invariant()
    def check_everything(self):
        if not hasattr(self, "hub"):
            return
        state = self.read()
        res, budgets = state["reservations"], state["budgets"]
        lines: dict[int, list] = {rid: [] for rid in res}
        for e in state["lines"]:
            lines[e.reservation_id].append(e)
        assert res.keys() == self.launches.keys()  # no reservation but the hub's launches

        used: dict = {b: 0 for b in budgets}
        held: dict = {b: 0 for b in budgets}
        user_used: dict = {}
        user_held: dict = {}
        hours: dict = {}
        interval_us = round(self.interval * US)
        for rid, r in res.items():
            launch = self.launches[rid]
            charged, reserved = to_units(r.amount_charged), to_units(r.amount_reserved)
            mine = sorted(lines[rid], key=lambda e: e.ts_from)
            assert r.state == launch.state, (r, launch.state)
            assert charged >= 0 and reserved > 0, r
            assert sum(to_units(e.amount) for e in mine) == charged, r  # the ledger is the charge
            for e in mine:
                assert to_units(e.amount) >= 0 and e.budget_id == r.budget_id and e.username == r.username
                used[r.budget_id] += to_units(e.amount)
                hour = (r.budget_id, us(e.ts_from) // HOUR_US)
                hours[hour] = hours.get(hour, 0) + to_units(e.amount)
            hold = max(0, reserved - charged) if r.state != "closed" else 0
            held[r.budget_id] += hold
            if r.user_period_start is not None:
                key = (r.budget_id, r.username)
                user_used[key] = user_used.get(key, 0) + charged
                user_held[key] = user_held.get(key, 0) + hold
            if launch.answered_at is None:
                # never answered: never charged, never metered
                assert charged == 0 and not mine and r.started_at is None, (r, mine)
                continue
            # answered: the lines cover [started_at, charged_until] exactly, without gaps
            assert r.started_at == at(launch.answered_at), r
            if mine:
                assert mine[0].ts_from == r.started_at, mine
                assert all(a.ts_to == b.ts_from for a, b in zip(mine, mine[1:], strict=False)), mine
                assert all(e.ts_from <= e.ts_to for e in mine), mine
                assert mine[-1].ts_to == r.charged_until, (mine, r)
            else:
                assert r.charged_until == r.started_at, r
            assert r.started_at <= r.charged_until <= at(self.t_us), r
            billed_us = us(r.charged_until) - us(r.started_at)
            n = len(mine)
            assert charged >= exact_units(r, billed_us) - n * LINE_BELOW, (r, mine)
            if r.state == "running":
                assert charged <= exact_units(r, billed_us) + n * LINE_ABOVE, (r, mine)
                continue
            # released after answering: served seconds, the least charge, the most charge
            assert r.closed_at == at(launch.closed_at) == r.charged_until, r
            served_us = us(r.closed_at) - us(r.started_at)
            least = Accounting._charge_units(r, self.interval)  # one interval, rounded as charged
            assert n >= 1 and charged >= least, (r, mine, least)
            assert charged <= max(exact_units(r, served_us) + n * LINE_ABOVE, least), (r, mine)
            assert charged <= exact_units(r, served_us + interval_us) + n * LINE_ABOVE, (r, mine)

        for bid, b in budgets.items():
            assert b["used"] == used[bid], (b, used[bid])
            assert b["reserved"] == held[bid], (b, held[bid])
            assert b["used"] >= 0 and b["reserved"] >= 0, b
        for key, u in state["users"].items():
            assert u["used"] == user_used.get(key, 0), (key, u)
            assert u["reserved"] == user_held.get(key, 0), (key, u)
            assert u["used"] >= 0 and u["reserved"] >= 0, (key, u)
        assert state["hours"] == {k: v for k, v in hours.items() if v or k in state["hours"]}


def test_accounting_properties(db, db_factory):
    """Random launches, answers, failures, stops, ticks and restarts keep every property."""

    class Machine(AccountingMachine):
        database = db
        meter_database = db_factory()

    run_state_machine_as_test(Machine, settings=SETTINGS)
