"""What the hub's home page says about each of a user's running servers.

One row per open reservation: the hardware, where it runs, when it started, hours used of
hours reserved, the cost so far and the hourly price at the price the launch was admitted at
(:func:`hybridhub.accounting.lab_session.launch_money`, what JupyterLab's status item shows too),
and when it will be stopped (the reservation's end; a course session reserves its servers until
it ends).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hybridhub.accounting.lab_session import launch_money
from hybridhub.accounting.ledger import Accounting
from hybridhub.accounting.sessions import SessionLog
from hybridhub.accounting.utilisation import idle_notice
from hybridhub.catalog import Catalog


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def running_servers(
    accounting: Accounting, catalog: Catalog, username: str, now: datetime | None = None,
) -> list[dict[str, Any]]:
    """Rows for the home page (a course session's servers are reserved until the session ends).

    It reads the database: the hub calls it in a worker thread (:mod:`hybridhub.spawner.pagevars`).
    """
    now = now or datetime.now(UTC)
    records = {r.reservation_id: r for r in SessionLog(accounting.db).sessions(username, limit=50)
               if r.stopped_at is None}
    rows = []
    for res in accounting.open_reservations(username):
        if res.started_at is None:
            continue
        started = _aware(res.started_at)
        hours = float(res.hours)
        used = min(max((now - started).total_seconds() / 3600, 0.0), hours)
        offering = catalog.offering(res.resource_class, res.model) if res.model else None
        money = launch_money(res)
        ends = started + timedelta(hours=hours)
        record = records.get(res.id)
        rows.append({
            "server": res.server_name or "default",
            "server_name": res.server_name,
            "resource_class": res.resource_class,
            "hardware": f"{offering.model if offering else res.model} × {res.count}",
            "where": (record.host or record.instance_id) if record else None,
            "started": f"{started:%Y-%m-%d %H:%M} UTC",
            "hours_used": f"{used:.2f}",
            "hours_reserved": f"{hours:g}",
            "cost_so_far": money["cost_text"],
            "hourly_price": money["hourly_price_text"],
            "stops_at": f"{ends:%Y-%m-%d %H:%M} UTC",
            "session_id": record.id if record else None,
            "idle_warning": idle_notice(accounting.db, record, now.astimezone(UTC).replace(tzinfo=None)),
        })
    return rows
