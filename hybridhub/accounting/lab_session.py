"""One server's session as JupyterLab shows it: hardware, time left, cost, warnings due.

Everything comes from the state the meter and the course scheduler act on, so the Lab
can never disagree with them:

- the open :class:`~hybridhub.accounting.sessions.SessionRecord` (hardware, host, GPU UUIDs, image,
  trust level, hidden folders) and its reservation (hours, charged so far);
- the charged budget's ``used``/``amount``, with the meter's own thresholds
  (:data:`hybridhub.accounting.ledger.WARN_LEVELS`);
- the meter's ``stop_pending`` notice, whose ``stop_at`` is the very time the meter stops
  the server (the grace runs from that notice);
- the course session holding the server: its ``ends_at`` (when the scheduler ends it) and
  the scheduler's warning minutes (:data:`hybridhub.accounting.courses.WARN_MINUTES`, or the level it
  recorded).

Each warning has a stable ``id``, so the Lab shows it once.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from hybridhub.accounting.courses import TIME_EPS, WARN_MINUTES, in_session
from hybridhub.accounting.ledger import WARN_LEVELS, Accounting, fmt_amount
from hybridhub.accounting.models import Notice, iso_utc, to_units
from hybridhub.accounting.periods import to_datetime
from hybridhub.accounting.reports import money_so_far
from hybridhub.accounting.sessions import SessionLog
from hybridhub.accounting.utilisation import add_utilisation

#: Hardware fields of a session record shown in the Lab's session panel.
RECORD_FIELDS = (
    "id", "resource_class", "offering", "accelerator", "count", "trust", "backend", "host",
    "instance_id", "instance_type", "gpu_uuids", "image", "image_id", "hidden_dirs", "group",
    "started_at",
)


def fmt_money(value: float) -> str:
    """``$1.23``: dollars with cents, ``< $0.01`` for a positive amount below a cent."""
    return "< $0.01" if 0 < value < 0.005 else f"${max(value, 0.0):.2f}"


def launch_money(reservation: Any) -> dict[str, Any]:
    """A reservation's cost so far and hourly price in money, at the price it was admitted at.

    ``price_per_hour`` is the admitted price of one accelerator (``Reservation.price_per_hour``,
    never the catalog's, which may have changed since); ``hourly_price`` is the whole launch's;
    ``cost`` is the time the meter charged at that price (:func:`~hybridhub.accounting.reports.money_so_far`,
    the portal's running-servers figure), so it moves with each meter tick.
    """
    price = float(reservation.price_per_hour or 0.0)
    cost = money_so_far(price, reservation.count, reservation.started_at, reservation.charged_until)
    hourly = reservation.count * price
    return {
        "price_per_hour": price, "hourly_price": hourly, "cost": round(cost, 6), "currency": "USD",
        "cost_text": fmt_money(cost), "hourly_price_text": f"{fmt_money(hourly)}/h",
    }


def _minutes(delta: timedelta) -> int:
    return max(0, round(delta.total_seconds() / 60))


def session_state(
    accounting: Accounting, username: str, server_name: str, now: float | datetime | None = None
) -> dict[str, Any]:
    """``username``'s server ``server_name`` as the Lab shows it (all times ISO 8601 UTC)."""
    now_dt = to_datetime(accounting.clock() if now is None else now)
    log = SessionLog(accounting.db)
    record_id = log.open_session_id(username, server_name)
    record = log.get(record_id) if record_id is not None else None
    out: dict[str, Any] = {
        "user": username, "server": server_name, "now": iso_utc(now_dt), "session": None,
        "reservation": None, "budget": None, "course": None, "ends_at": None, "stop_at": None,
        "warnings": [], "utilisation": None,
    }
    if record is not None:
        out["session"] = {k: v for k, v in record.as_dict().items() if k in RECORD_FIELDS}
    ends: list[datetime] = []
    stops: list[datetime] = []
    reservation = _reservation_of(accounting, record, username, server_name)
    if reservation is not None:
        _add_reservation(out, accounting, reservation, username, ends)
        _add_stop_notice(out, accounting.db, reservation, now_dt, stops)
    _add_course(out, accounting.db, username, server_name, now_dt, ends, stops)
    add_utilisation(out, accounting.db, record, now_dt, stops)
    out["ends_at"] = iso_utc(min(ends)) if ends else None
    out["stop_at"] = iso_utc(min(stops)) if stops else None
    return out


def _reservation_of(accounting: Accounting, record, username: str, server_name: str):
    """The server's reservation: the session record's, else the open one for this server."""
    if record is not None and record.reservation_id is not None:
        found = accounting.reservation(record.reservation_id)
        if found is not None:
            return found
    return next((r for r in accounting.open_reservations(username) if r.server_name == server_name), None)


def _add_reservation(out: dict, accounting: Accounting, reservation, username: str, ends: list) -> None:
    """The reservation, its budget and the budget's 80/95 % warnings."""
    res_end = reservation.started_at + timedelta(hours=reservation.hours) if reservation.started_at else None
    remaining = accounting.remaining(reservation.group, reservation.resource_class, reservation.model, username)
    unit = remaining.unit if remaining else "hours"
    out["reservation"] = {
        "id": reservation.id, "group": reservation.group,
        "resource_class": reservation.resource_class, "model": reservation.model,
        "count": reservation.count, "hours": reservation.hours, "state": reservation.state,
        "started_at": iso_utc(reservation.started_at), "ends_at": iso_utc(res_end),
        "charged": reservation.amount_charged, "reserved": reservation.amount_reserved,
        "unit": unit, "charged_text": fmt_amount(reservation.amount_charged, unit),
        **launch_money(reservation),
    }
    if res_end is not None:
        ends.append(res_end)
    if remaining is None:
        return
    share = remaining.used / remaining.amount if remaining.amount > 0 else 0.0
    out["budget"] = {
        "group": reservation.group, "amount": remaining.amount, "used": remaining.used,
        "left": remaining.amount_left, "unit": unit, "share": share,
        "resets_at": iso_utc(remaining.resets_at), "frozen": remaining.frozen,
        "left_text": fmt_amount(remaining.amount_left, unit),
    }
    scope = reservation.resource_class + (f" ({reservation.model})" if reservation.model else "")
    period = iso_utc(remaining.resets_at) or "once"
    for pct, level in reversed(WARN_LEVELS):  # the meter's rule, in the stored integer units
        if remaining.amount > 0 and to_units(remaining.used) * 100 >= to_units(remaining.amount) * pct:
            out["warnings"].append({
                "id": f"budget:{remaining.budget_id}:{period}:{level}", "kind": "budget",
                "level": level,
                "message": f"{reservation.group}'s {scope} budget is {level}% used "
                           f"({fmt_amount(remaining.amount_left, unit)} left).",
            })


def _add_stop_notice(out: dict, db, reservation, now_dt: datetime, stops: list) -> None:
    """The meter's pending stop of this reservation, as the warning it will act on."""
    with db.session() as s:
        notice = s.scalar(
            select(Notice).where(Notice.reservation_id == reservation.id,
                                 Notice.level == "stop_pending").order_by(Notice.id).limit(1)
        )
        pending = (notice.stop_at, notice.message) if notice is not None else None
    if pending is None:
        return
    stop_at = pending[0] or now_dt
    stops.append(stop_at)
    out["warnings"].append({
        "id": f"stop:{reservation.id}", "kind": "stop", "level": "stop_pending",
        "stop_at": iso_utc(stop_at),
        "message": f"Stopping in {_minutes(stop_at - now_dt)} min: save your work. {pending[1]}.",
    })


def _add_course(out: dict, db, username: str, server_name: str, now_dt: datetime, ends: list,
                stops: list) -> None:
    """The running course session of this server and its 10/2-minute warnings."""
    course = in_session(db, username, server_name)
    if course is None or course.state != "running":
        return
    out["course"] = {"id": course.id, "title": course.title, "group": course.group,
                     "ends_at": iso_utc(course.ends_at)}
    ends.append(course.ends_at)
    stops.append(course.ends_at)
    left = (course.ends_at - now_dt).total_seconds() / 60
    due = {m for m in WARN_MINUTES if left <= m + TIME_EPS}
    if course.warned_minutes is not None:
        due.add(course.warned_minutes)
    for m in sorted(due, reverse=True):
        out["warnings"].append({
            "id": f"course:{course.id}:{m}", "kind": "course", "level": f"{m}min",
            "stop_at": iso_utc(course.ends_at),
            "message": f"Course session {course.label} ends at {course.ends_at:%H:%M} UTC "
                       f"(in {m} min or less): save your work.",
        })
