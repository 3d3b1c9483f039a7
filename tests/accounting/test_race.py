"""A mixed race from several processes against ONE database (SQLite file and PostgreSQL).

Four worker processes (``spawn``) interleave launches (:meth:`Accounting.admit`, some with
idempotency keys repeated on purpose, within a worker and across workers), ``mark_running``,
stops (``release`` with random reasons, and obeying the meter's stop list) and metering ticks
(``meter`` with a shared clock that runs ``SPEED`` times real time), and now and then a
``top_up`` (so budgets are not simply used up after a while), for
``HYBRIDHUB_RACE_SECONDS`` (default 60) seconds.  Small budgets make refusals frequent; some
budgets have per-user caps.  After every worker exited, the stored integers are checked.

Run it alone: ``HYBRIDHUB_RACE_SECONDS=10 python -m pytest -s tests/accounting/test_race.py``.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import time
import traceback
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta

from sqlalchemy import BigInteger, select, type_coerce

from hybridhub.accounting.db import Database
from hybridhub.accounting.ledger import Accounting, NotMember, QuotaExceeded
from hybridhub.accounting.models import (
    Budget,
    ChargedHour,
    Group,
    Reservation,
    UsageEntry,
    UserUsage,
)
from hybridhub.accounting.periods import month_start, to_datetime

RACE_SECONDS = float(os.environ.get("HYBRIDHUB_RACE_SECONDS", "60"))
WORKERS = 4
#: Simulated seconds per real second: 60 real seconds are two hours of metering.
SPEED = 120.0
#: 2026-11-10 12:00:00 UTC; even a long local run (hours of real time) stays in November.
BASE = 1794312000.0
METER_INTERVAL = 60.0
GRACE = 300.0
EPOCH, HOUR = datetime(1970, 1, 1), timedelta(hours=1)

#: group -> members; ``outsider`` is in no group (admits as them are refused: NotMember).
GROUPS = {
    "lab-a": ["a1", "a2", "a3"],
    "lab-b": ["b1", "b2", "b3"],
    "proj-c": ["c1", "c2"],
    "course-d": ["d1", "d2", "d3"],
}
#: (group, resource_class, amount, unit, model, per_user_cap): small, so refusals are common.
BUDGETS = [
    ("lab-a", "aws", 3.0, "hours", None, None),
    ("lab-b", "aws", 4.0, "hours", None, 1.5),
    ("proj-c", "onprem", 10.0, "credits", None, 4.0),
    ("course-d", "aws", 3.0, "hours", None, None),
    ("course-d", "aws", 2.0, "hours", "a100", 1.0),  # model-specific: wins for a100
]
CLASS_OF = {"lab-a": "aws", "lab-b": "aws", "proj-c": "onprem", "course-d": "aws"}
REASONS = ["user stop", "idle culled", "hub restart", "admin stop", "spawn failed"]
SHARED_KEYS = 40  # idempotency keys every worker draws from (the same launch, retried)


def _clock(t0: float):
    return lambda: BASE + (time.time() - t0) * SPEED


def _launch(rng: random.Random, outsider_chance: float = 0.03) -> dict:
    """The keyword arguments of one random launch."""
    group = rng.choice(sorted(GROUPS))
    user = "outsider" if rng.random() < outsider_chance else rng.choice(GROUPS[group])
    model = rng.choice(["a100", "rtx4090", None]) if group == "course-d" else None
    return {
        "username": user, "group": group, "resource_class": CLASS_OF[group], "model": model,
        "count": rng.choice([1, 1, 2]), "hours": rng.choice([0.1, 0.25, 0.5, 1.0]),
        "billing_weight": rng.choice([1.0, 1.5]), "price_per_hour": 4.0,
    }


def _shared_launch(k: int) -> tuple[str, dict]:
    """Shared key ``k`` always stands for the same launch, whichever worker sends it."""
    return f"shared:{k}", _launch(random.Random(f"shared-{k}"), outsider_chance=0.0)


def race_worker(index: int, url: str, t0: float, deadline: float, seed: int) -> dict:
    """One worker process: random operations until ``deadline``; returns its counts."""
    rng = random.Random(seed)
    db = Database(url)
    acct = Accounting(db, clock=_clock(t0), meter_interval=METER_INTERVAL, grace_seconds=GRACE)
    counts: Counter = Counter()
    errors: list[str] = []
    keys: dict[str, int] = {}  # idempotency key -> reservation id admit returned
    own: list[tuple[str, dict]] = []
    mine: list[int] = []

    def admit() -> None:
        roll = rng.random()
        if roll < 0.3:
            key, launch = _shared_launch(rng.randrange(SHARED_KEYS))
        elif roll < 0.4 and own:
            key, launch = rng.choice(own)  # a retry of one of our own launches
        else:
            key, launch = f"w{index}:{len(own)}", _launch(rng)
            own.append((key, launch))
        try:
            rid = acct.admit(idempotency_key=key, **launch)
        except QuotaExceeded as e:
            counts[f"admit_refused_{e.scope}"] += 1
            return
        except NotMember:
            counts["admit_not_member"] += 1
            return
        counts["admit_retry" if key in keys else "admit_ok"] += 1
        if keys.setdefault(key, rid) != rid:
            errors.append(f"key {key}: admit returned {rid}, earlier {keys[key]}")
        mine.append(rid)

    def mark_running() -> None:
        admitted = [r.id for r in acct.open_reservations() if r.state == "admitted"]
        if not admitted:
            counts["mark_running_none"] += 1
            return
        ok = acct.mark_running(rng.choice(admitted))
        counts["mark_running_ok" if ok else "mark_running_noop"] += 1

    def release() -> None:
        if mine and rng.random() < 0.15:  # maybe already closed: release is idempotent
            rid = rng.choice(mine)
        else:
            open_ids = [r.id for r in acct.open_reservations()]
            if not open_ids:
                counts["release_none"] += 1
                return
            rid = rng.choice(open_ids)
        done = acct.release(rid, rng.choice(REASONS))
        counts["release_already_closed" if done.already_closed else "release_ok"] += 1

    def meter() -> None:
        report = acct.meter()
        counts["ticks"] += 1
        counts["tick_entries"] += report.charged
        for order in report.to_stop:  # the hub obeys the stop list
            done = acct.release(order.reservation.id, f"quota: {order.reason}")
            counts["stop_already_closed" if done.already_closed else "stop_ok"] += 1

    def top_up() -> None:  # an owner tops a budget up mid-race (it races admission too)
        acct.top_up(rng.choice(budget_ids), rng.choice([0.5, 1.0, 2.0]), actor=f"w{index}")
        counts["top_up"] += 1

    with db.session() as s:
        budget_ids = list(s.scalars(select(Budget.id).order_by(Budget.id)))
    ops = [admit] * 4 + [mark_running] * 3 + [release] * 1 + [meter] * 2
    try:
        while time.time() < deadline:
            op = top_up if rng.random() < 0.005 else rng.choice(ops)
            try:
                op()
            except Exception as e:  # recorded and reported; the test fails on any
                counts[f"error_{type(e).__name__}"] += 1
                if len(errors) < 10:
                    errors.append(f"{op.__name__}: {''.join(traceback.format_exception_only(e))}")
            time.sleep(rng.random() * 0.01)
    finally:
        db.dispose()
    return {"index": index, "counts": dict(counts), "errors": errors, "keys": keys}


# ---------------------------------------------------------------- the end state


def _units(col):
    return type_coerce(col, BigInteger)


def _end_state(db: Database) -> dict:
    """Stored integers: budgets, per-user usage, reservations and ledger lines."""
    with db.session() as s:
        budgets = s.execute(select(
            Budget.id, Budget.group_id, Budget.model, _units(Budget.amount), _units(Budget.used),
            _units(Budget.reserved), _units(Budget.per_user_cap), Budget.period_start,
        ).order_by(Budget.id)).all()
        users = s.execute(select(
            UserUsage.budget_id, UserUsage.username, UserUsage.period_start,
            _units(UserUsage.used), _units(UserUsage.reserved),
        )).all()
        reservations = s.execute(select(
            Reservation.id, Reservation.budget_id, Reservation.username,
            Reservation.user_period_start, Reservation.state, Reservation.idempotency_key,
            _units(Reservation.amount_reserved), _units(Reservation.amount_charged),
            Reservation.started_at, Reservation.charged_until,
        ).order_by(Reservation.id)).all()
        entries = s.execute(select(
            UsageEntry.reservation_id, UsageEntry.budget_id, UsageEntry.username,
            _units(UsageEntry.amount), UsageEntry.ts_from, UsageEntry.ts_to,
        ).order_by(UsageEntry.reservation_id, UsageEntry.ts_from)).all()
        hours = s.execute(select(ChargedHour.budget_id, ChargedHour.hour,
                                 _units(ChargedHour.amount))).all()
    return {"budgets": budgets, "users": users, "reservations": reservations,
            "entries": entries, "hours": hours}


def _check(state: dict, names: dict[int, str]) -> tuple[list[str], list[str]]:
    """(problems, balance lines) of the invariants in :func:`test_mixed_race...`'s docstring."""
    problems: list[str] = []
    lines: list[str] = []
    res = {r.id: r for r in state["reservations"]}
    ledger_b: Counter = Counter()
    ledger_u: Counter = Counter()
    ledger_r: Counter = Counter()
    chain: dict[int, list] = defaultdict(list)
    for e in state["entries"]:
        r = res[e.reservation_id]
        ledger_b[e.budget_id] += e.amount
        ledger_r[e.reservation_id] += e.amount
        if r.user_period_start is not None:
            ledger_u[(e.budget_id, e.username, r.user_period_start)] += e.amount
        chain[e.reservation_id].append(e)
        if e.amount < 0:
            problems.append(f"negative ledger line {e}")
    held_b: Counter = Counter()
    held_u: Counter = Counter()
    over_b: Counter = Counter()
    over_u: Counter = Counter()
    for r in res.values():
        over = max(0, r.amount_charged - r.amount_reserved)
        over_b[r.budget_id] += over
        if r.user_period_start is not None:
            over_u[(r.budget_id, r.username, r.user_period_start)] += over
        if r.state != "closed":
            held = max(0, r.amount_reserved - r.amount_charged)
            held_b[r.budget_id] += held
            if r.user_period_start is not None:
                held_u[(r.budget_id, r.username, r.user_period_start)] += held
        if r.amount_charged != ledger_r[r.id]:
            problems.append(f"reservation {r.id}: amount_charged {r.amount_charged} != its "
                            f"ledger lines {ledger_r[r.id]}")
        # the ledger lines of a reservation tile [started_at, charged_until]: no span twice
        spans = chain.get(r.id, [])
        if spans:
            edge = r.started_at
            for e in spans:
                if e.ts_from != edge or e.ts_to < e.ts_from:
                    problems.append(f"reservation {r.id}: ledger line {e.ts_from}..{e.ts_to} "
                                    f"does not follow {edge}")
                edge = e.ts_to
            if edge != r.charged_until:
                problems.append(f"reservation {r.id}: ledger ends {edge}, "
                                f"charged_until {r.charged_until}")
    for b in state["budgets"]:
        name = f"{names[b.group_id]}/{b.model or '*'}#{b.id}"
        want = ledger_b[b.id] + held_b[b.id]
        lines.append(
            f"{name}: amount={b[3]} used={b[4]} reserved={b[5]} used+reserved={b[4] + b[5]} | "
            f"ledger={ledger_b[b.id]} open_held={held_b[b.id]} sum={want} "
            f"overcharge={over_b[b.id]}")
        if b[4] + b[5] != want:
            problems.append(f"{name}: used+reserved {b[4] + b[5]} != ledger {ledger_b[b.id]} "
                            f"+ open held {held_b[b.id]} = {want}")
        if b[4] != ledger_b[b.id]:
            problems.append(f"{name}: used {b[4]} != ledger {ledger_b[b.id]}")
        if b[5] != held_b[b.id]:
            problems.append(f"{name}: reserved {b[5]} != open held {held_b[b.id]}")
        if b[5] < 0:
            problems.append(f"{name}: reserved {b[5]} is negative")
        if b[4] + b[5] - over_b[b.id] > b[3]:
            problems.append(f"{name}: used+reserved-overcharge {b[4] + b[5] - over_b[b.id]} "
                            f"> amount {b[3]} (admission overspent)")
    caps = {b.id: b[6] for b in state["budgets"]}
    for u in sorted(state["users"], key=lambda u: (u.budget_id, u.username)):
        k = (u.budget_id, u.username, u.period_start)
        name = f"budget#{u.budget_id}/{u.username}"
        lines.append(f"  {name}: used={u[3]} reserved={u[4]} | ledger={ledger_u[k]} "
                     f"open_held={held_u[k]} cap={caps[u.budget_id]}")
        if (u[3], u[4]) != (ledger_u[k], held_u[k]):
            problems.append(f"{name}: used/reserved {u[3]}/{u[4]} != ledger/open held "
                            f"{ledger_u[k]}/{held_u[k]}")
        if u[4] < 0:
            problems.append(f"{name}: reserved {u[4]} is negative")
        if caps[u.budget_id] is not None and u[3] + u[4] - over_u[k] > caps[u.budget_id]:
            problems.append(f"{name}: used+reserved-overcharge over the cap {caps[u.budget_id]}")
    by_hour: Counter = Counter()
    for e in state["entries"]:
        by_hour[(e.budget_id, (e.ts_from - EPOCH) // HOUR)] += e.amount
    stored_hours = {(h.budget_id, h.hour): h[2] for h in state["hours"]}
    if stored_hours != dict(by_hour):
        problems.append(f"charged hours {sorted(stored_hours.items())} != the ledger's "
                        f"{sorted(by_hour.items())}")
    user_keys = {(u.budget_id, u.username, u.period_start) for u in state["users"]}
    for k in set(ledger_u) | set(held_u):
        if k not in user_keys:
            problems.append(f"per-user usage {k} has ledger/holds but no user_usage row")
    return problems, lines


def _total(results: list[dict]) -> Counter:
    total: Counter = Counter()
    for r in results:
        total.update(r["counts"])
    return total


def test_mixed_race_of_four_processes_keeps_every_balance_exact(db, clock):
    """Four processes admit, start, stop and meter at once; afterwards, in stored integers:

    For every budget B (all in one monthly period, so no reset intervened):

    * ``B.used`` == the sum of B's ledger lines (``usage_entries.amount``): admission adds
      nothing to ``used``, a tick adds each line it writes, release adds its final line;
    * ``B.reserved`` == the sum over B's OPEN reservations of
      ``max(0, amount_reserved - amount_charged)``: admission adds ``amount_reserved``,
      a tick takes ``min(line, what is still held)`` back, release takes the rest;
      closed reservations hold nothing; hence
      ``used + reserved == ledger sum + sum(open: max(0, amount_reserved - amount_charged))``;
    * ``B.reserved >= 0``, and no admission overspent:
      ``used + reserved - sum(all: max(0, amount_charged - amount_reserved)) <= amount``
      (only time served past a reservation, the grace, may go over; top-ups only raise
      ``amount``, so the end amount bounds every earlier moment);
    * the same two identities for every per-user row (``user_usage``) against the lines and
      open reservations of that user, budget and period, and the cap in place of the amount;
    * every reservation's ``amount_charged`` == the sum of its ledger lines, and those lines
      tile ``[started_at, charged_until]`` without a gap or an overlap (no span charged twice);
    * the budgets' charged hours (``charged_hours``, what forecasts read) == the ledger's
      lines summed per budget and the hour their span starts in;
    * an idempotency key names one reservation: every worker that sent it got that id.

    Then every open reservation is released and the budgets must hold nothing reserved.
    """
    acct = Accounting(db, clock=clock, meter_interval=METER_INTERVAL, grace_seconds=GRACE)
    acct.sync_groups(GROUPS)
    for group, rc, amount, unit, model, cap in BUDGETS:
        acct.ensure_budget(group, rc, amount, unit=unit, model=model, per_user_cap=cap)
    with db.session() as s:
        names = dict(s.execute(select(Group.id, Group.name)).all())

    started = time.monotonic()
    t0 = time.time() + 3.0  # the shared clock starts at BASE once the workers are up
    deadline = t0 + RACE_SECONDS
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=WORKERS, mp_context=ctx) as pool:
        futures = [pool.submit(race_worker, i, db.url, t0, deadline, 1000 + i)
                   for i in range(WORKERS)]
        results = [f.result(timeout=RACE_SECONDS + 120) for f in futures]
    raced = time.monotonic() - started

    total = _total(results)
    state = _end_state(db)
    problems, lines = _check(state, names)
    sent: dict[str, set[int]] = defaultdict(set)
    for r in results:
        for key, rid in r["keys"].items():
            sent[key].add(rid)
    stored_keys = {r.idempotency_key: r.id for r in state["reservations"]}
    for key, ids in sent.items():
        if ids != {stored_keys.get(key)}:
            problems.append(f"idempotency key {key}: workers got {sorted(ids)}, "
                            f"stored {stored_keys.get(key)}")
    errors = [f"worker {r['index']}: {e}" for r in results for e in r["errors"]]
    states = Counter(r.state for r in state["reservations"])
    summary = "\n".join([
        f"[{db.dialect}] {WORKERS} workers raced {raced:.1f} s "
        f"({RACE_SECONDS:g} s of operations, {RACE_SECONDS * SPEED / 3600:g} h simulated)",
        "operations: " + ", ".join(f"{k}={v}" for k, v in sorted(total.items())),
        *(f"  worker {r['index']}: " + ", ".join(f"{k}={v}" for k, v in sorted(r["counts"].items()))
          for r in results),
        f"reservations: {len(state['reservations'])} ({dict(states)}), "
        f"ledger lines: {len(state['entries'])}, distinct keys sent: {len(sent)}",
        "end balances (stored millionths):", *lines,
        *(["errors:", *errors] if errors else []),
        *(["PROBLEMS:", *problems] if problems else []),
    ])
    print("\n" + summary, flush=True)
    assert not problems and not errors, summary
    # the race really raced: launches were admitted and refused, servers ran and were metered
    for op in ("admit_ok", "admit_refused_group", "admit_refused_user", "release_ok", "ticks"):
        assert total[op] > 0, f"no {op} happened\n{summary}"
    assert total["tick_entries"] > 0 and len(state["entries"]) > 0, summary
    assert month_start(to_datetime(_clock(t0)())) == month_start(to_datetime(BASE)), summary

    # everything stops: nothing may stay reserved, and the ledger still explains `used`
    clock.now = _clock(t0)()
    for r in acct.open_reservations():
        acct.release(r.id, "end of race")
    state = _end_state(db)
    problems, lines = _check(state, names)
    assert not problems, "\n".join(["after releasing everything:", *lines, *problems])
    assert all(b[5] == 0 for b in state["budgets"]), "\n".join(lines)
    assert all(u[4] == 0 for u in state["users"]), "\n".join(lines)
