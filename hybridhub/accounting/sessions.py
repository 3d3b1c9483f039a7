"""Session provenance: one record per notebook server, and the verification reports.

The spawner writes a :class:`SessionRecord` when a server starts (who, charged group,
class, accelerator model, host or instance, GPU UUIDs or instance type, image and its
digest, trust level, the confidential folders left out) and closes it when the server
ends, saying how it ended (:data:`END_REASONS`).

Whoever stops a server on purpose says why *before* asking the hub to stop it:
:meth:`SessionLog.request_end` records the intended reason on the open record (the meter
says ``quota``, the course scheduler ``end of course``), and the spawner's ``stop`` uses
it; a stop with nothing recorded is ``stopped by user`` (or, asked for by another account
through the hub's REST API, ``stopped by admin``/``stopped by service``).  Who asked for a stop
(``by``, e.g. ``stopped by service idle-culler``) is appended to the end detail.  A server that ``poll`` finds
gone is closed with what the backend observed (``host lost`` when its host or instance
stopped answering), which wins over any intended reason.

A :class:`Verification` re-runs a notebook from a session on trusted hardware and keeps
the cell-by-cell report (:mod:`hybridhub.services.notebook_compare`) with the session it checks.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.orm import Mapped, mapped_column

from hybridhub.accounting.db import Database
from hybridhub.accounting.models import Base, json_ready, utcnow

END_STOPPED_BY_USER = "stopped by user"
END_QUOTA = "quota"
END_COURSE = "end of course"
END_HOST_LOST = "host lost"
END_EXITED = "server exited"
END_FAILED_START = "failed to start"
END_IDLE = "stopped: accelerators idle"
END_BY_ADMIN = "stopped by admin"
END_BY_SERVICE = "stopped by service"
END_MOVED = "moved to other hardware"
#: How a session can end.  The first four are the ones people act on; ``server exited``
#: is a server that ended by itself with an error status; ``failed to start`` one that never answered;
#: ``stopped: accelerators idle`` the idle-accelerator rule's stop; ``stopped by admin``/``by service``
#: a stop another account asked the hub's REST API for, with no reason recorded beforehand.
END_REASONS = (END_STOPPED_BY_USER, END_QUOTA, END_COURSE, END_HOST_LOST, END_EXITED, END_FAILED_START,
               END_IDLE, END_BY_ADMIN, END_BY_SERVICE, END_MOVED)
#: ``moved to other hardware``: its user moved the server (:mod:`hybridhub.spawner.move`); the record of
#: the server that replaced it names this one in ``moved_from_id``.

VERIFICATION_STATES = ("pending", "running", "passed", "failed", "error")

#: Columns of the CSV export, in order.
CSV_COLUMNS = (
    "id", "username", "server_name", "group", "resource_class", "offering", "accelerator",
    "count", "trust", "backend", "host", "instance_id", "instance_type", "gpu_uuids", "image",
    "image_id", "started_at", "stopped_at", "end_reason", "end_detail", "hidden_dirs",
    "reservation_id", "moved_from_id",
)


class SessionRecord(Base):
    """Where and how one notebook server ran: written by the spawner, read by people."""

    __tablename__ = "session_records"
    __table_args__ = (
        Index("ix_session_records_user", "username", "started_at"),
        Index("ix_session_records_open", "username", "server_name", "stopped_at"),
        UniqueConstraint("reservation_id", name="uq_session_records_reservation"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(255))
    server_name: Mapped[str] = mapped_column(String(255), default="")
    group_name: Mapped[str] = mapped_column(String(255))
    resource_class: Mapped[str] = mapped_column(String(64))
    offering: Mapped[str] = mapped_column(String(128))
    accelerator: Mapped[str] = mapped_column(String(128))
    count: Mapped[int] = mapped_column(Integer)
    trust: Mapped[str] = mapped_column(String(16))
    backend: Mapped[str] = mapped_column(String(16))
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    instance_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    instance_type: Mapped[str | None] = mapped_column(String(64), nullable=True)
    gpu_uuids: Mapped[list[str]] = mapped_column(JSON, default=list)
    image: Mapped[str | None] = mapped_column(String(512), nullable=True)
    image_id: Mapped[str | None] = mapped_column(String(512), nullable=True)
    hidden_dirs: Mapped[list[str]] = mapped_column(JSON, default=list)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    reservation_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    end_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    end_detail: Mapped[str | None] = mapped_column(String(255), nullable=True)
    pending_end_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    pending_end_detail: Mapped[str | None] = mapped_column(String(255), nullable=True)
    #: The record of the server this one replaced when its user moved it to other hardware (migration 0012).
    moved_from_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Verification(Base):
    """A re-run of a notebook from a session on trusted hardware, and its report."""

    __tablename__ = "verifications"
    __table_args__ = (
        Index("ix_verifications_session", "session_id"),
        Index("ix_verifications_user", "username", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int | None] = mapped_column(
        ForeignKey("session_records.id", ondelete="SET NULL"), nullable=True
    )
    run_session_id: Mapped[int | None] = mapped_column(
        ForeignKey("session_records.id", ondelete="SET NULL"), nullable=True
    )
    username: Mapped[str] = mapped_column(String(255))
    group_name: Mapped[str] = mapped_column(String(255))
    notebook: Mapped[str] = mapped_column(String(1024))
    offering: Mapped[str] = mapped_column(String(128))
    server_name: Mapped[str] = mapped_column(String(255), default="")
    state: Mapped[str] = mapped_column(String(16), default="pending")
    message: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


@dataclass(frozen=True)
class ServerSessionInfo:
    """A read-only snapshot of a :class:`SessionRecord`, safe to hand across threads."""

    id: int
    username: str
    server_name: str
    group: str
    resource_class: str
    offering: str
    accelerator: str
    count: int
    trust: str
    backend: str
    host: str | None
    instance_id: str | None
    instance_type: str | None
    gpu_uuids: list[str]
    image: str | None
    image_id: str | None
    hidden_dirs: list[str]
    details: dict[str, Any]
    reservation_id: int | None
    started_at: datetime
    stopped_at: datetime | None
    end_reason: str | None
    end_detail: str | None
    moved_from_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: times as ISO 8601 UTC strings."""
        return json_ready(self)


@dataclass(frozen=True)
class VerificationInfo:
    """A read-only snapshot of a :class:`Verification`."""

    id: int
    session_id: int | None
    run_session_id: int | None
    username: str
    group: str
    notebook: str
    offering: str
    server_name: str
    state: str
    message: str | None
    report: dict[str, Any] | None
    created_at: datetime
    finished_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: times as ISO 8601 UTC strings."""
        return json_ready(self)


def _session_info(r: SessionRecord) -> ServerSessionInfo:
    return ServerSessionInfo(
        id=r.id, username=r.username, server_name=r.server_name, group=r.group_name,
        resource_class=r.resource_class, offering=r.offering, accelerator=r.accelerator,
        count=r.count, trust=r.trust, backend=r.backend, host=r.host, instance_id=r.instance_id,
        instance_type=r.instance_type, gpu_uuids=list(r.gpu_uuids or []), image=r.image,
        image_id=r.image_id, hidden_dirs=list(r.hidden_dirs or []), details=dict(r.details or {}),
        reservation_id=r.reservation_id, started_at=r.started_at, stopped_at=r.stopped_at,
        end_reason=r.end_reason, end_detail=r.end_detail, moved_from_id=r.moved_from_id,
    )


def _verification_info(v: Verification) -> VerificationInfo:
    return VerificationInfo(
        id=v.id, session_id=v.session_id, run_session_id=v.run_session_id, username=v.username,
        group=v.group_name, notebook=v.notebook, offering=v.offering, server_name=v.server_name,
        state=v.state, message=v.message, report=v.report, created_at=v.created_at,
        finished_at=v.finished_at,
    )


_ST = SessionRecord.__table__


class SessionLog:
    """Write and read session records and verification reports on one database.

    ``clock`` returns the current naive-UTC datetime (injectable, so tests never sleep).
    """

    def __init__(self, db: Database, clock: Callable[[], datetime] = utcnow):
        self.db = db
        self.clock = clock

    # ------------------------------------------------------------ sessions

    def open(
        self,
        *,
        username: str,
        server_name: str,
        group: str,
        resource_class: str,
        offering: str,
        accelerator: str,
        count: int,
        trust: str,
        backend: str,
        reservation_id: int | None = None,
        host: str | None = None,
        instance_id: str | None = None,
        instance_type: str | None = None,
        gpu_uuids: Iterable[str] = (),
        image: str | None = None,
        image_id: str | None = None,
        hidden_dirs: Iterable[str] = (),
        details: dict[str, Any] | None = None,
        started_at: datetime | None = None,
    ) -> int:
        """Record a server that has started; returns the record id.

        Idempotent per reservation: opening the same reservation again returns the
        existing record.
        """
        values = {
            "username": username, "server_name": server_name, "group_name": group,
            "resource_class": resource_class, "offering": offering, "accelerator": accelerator,
            "count": int(count), "trust": trust, "backend": backend, "host": host or None,
            "instance_id": instance_id or None, "instance_type": instance_type or None,
            "gpu_uuids": list(gpu_uuids), "image": image or None, "image_id": image_id or None,
            "hidden_dirs": list(hidden_dirs), "details": _jsonable(details or {}),
            "reservation_id": reservation_id, "started_at": started_at or self.clock(),
        }
        with self.db.session() as s:
            if reservation_id is not None:
                existing = s.scalar(select(_ST.c.id).where(_ST.c.reservation_id == reservation_id))
                if existing is not None:
                    return existing
            return s.execute(insert(_ST).values(**values).returning(_ST.c.id)).scalar_one()

    def request_end(
        self,
        reason: str,
        *,
        reservation_id: int | None = None,
        username: str | None = None,
        server_name: str | None = None,
        detail: str | None = None,
    ) -> int:
        """Say why a server is about to be stopped, before asking the hub to stop it.

        Marks the open record of ``reservation_id`` (or of ``username``'s server
        ``server_name``); returns how many records were marked (0: none open).
        """
        if reason not in END_REASONS:
            raise ValueError(f"unknown end reason {reason!r}; known: {list(END_REASONS)}")
        where = [_ST.c.stopped_at.is_(None)]
        if reservation_id is not None:
            where.append(_ST.c.reservation_id == reservation_id)
        elif username is not None and server_name is not None:
            where += [_ST.c.username == username, _ST.c.server_name == server_name]
        else:
            raise ValueError("give reservation_id, or username and server_name")
        with self.db.session() as s:
            result = s.execute(
                update(_ST).where(*where).values(
                    pending_end_reason=reason, pending_end_detail=_clip(detail)
                )
            )
            return result.rowcount

    def close(
        self,
        session_id: int,
        *,
        observed: str | None = None,
        detail: str | None = None,
        default: str = END_STOPPED_BY_USER,
        at: datetime | None = None,
        by: str | None = None,
    ) -> bool:
        """Close an open record; True if this call closed it (False: already closed).

        The reason is what was ``observed`` (e.g. ``host lost``) if given, else the
        intended reason recorded by :meth:`request_end`, else ``default``; ``by`` (who asked
        for the stop) is appended to the detail.  One conditional ``UPDATE``, so concurrent
        closes (poll and stop) record it once.
        """
        for reason in (observed, default):
            if reason is not None and reason not in END_REASONS:
                raise ValueError(f"unknown end reason {reason!r}; known: {list(END_REASONS)}")
        if observed is not None:
            reason_expr: Any = observed
            detail_expr: Any = _clip(detail)
        else:
            reason_expr = func.coalesce(_ST.c.pending_end_reason, default)
            detail_expr = func.coalesce(_ST.c.pending_end_detail, _clip(detail))
            if by:
                detail_expr = func.substr(func.coalesce(detail_expr + "; ", "") + by, 1, 255)
        with self.db.session() as s:
            result = s.execute(
                update(_ST)
                .where(_ST.c.id == session_id, _ST.c.stopped_at.is_(None))
                .values(stopped_at=at or self.clock(), end_reason=reason_expr,
                        end_detail=detail_expr)
            )
            return result.rowcount == 1

    def link_move(self, moved_from: int, session_id: int) -> None:
        """Say that record ``session_id`` is the server that replaced record ``moved_from`` (a move)."""
        with self.db.session() as s:
            s.execute(update(_ST).where(_ST.c.id == session_id).values(moved_from_id=moved_from))

    def get(self, session_id: int) -> ServerSessionInfo | None:
        """One record, or None."""
        with self.db.session() as s:
            r = s.get(SessionRecord, session_id)
            return None if r is None else _session_info(r)

    def sessions(
        self, username: str | None = None, *, limit: int = 200, offset: int = 0
    ) -> list[ServerSessionInfo]:
        """Records, newest first; only ``username``'s when given (None: everyone's)."""
        q = select(SessionRecord).order_by(SessionRecord.started_at.desc(), SessionRecord.id.desc())
        if username is not None:
            q = q.where(SessionRecord.username == username)
        with self.db.session() as s:
            return [_session_info(r) for r in s.scalars(q.limit(limit).offset(offset))]

    def open_session_id(self, username: str, server_name: str) -> int | None:
        """The open record of ``username``'s server ``server_name``, if any."""
        with self.db.session() as s:
            return s.scalar(
                select(_ST.c.id)
                .where(_ST.c.username == username, _ST.c.server_name == server_name,
                       _ST.c.stopped_at.is_(None))
                .order_by(_ST.c.id.desc())
                .limit(1)
            )

    # ------------------------------------------------------------ verifications

    def create_verification(
        self,
        *,
        username: str,
        group: str,
        notebook: str,
        offering: str,
        session_id: int | None = None,
    ) -> VerificationInfo:
        """A new pending verification; its server is named ``verify-<id>``."""
        with self.db.session() as s:
            v = Verification(
                username=username, group_name=group, notebook=notebook, offering=offering,
                session_id=session_id, state="pending", created_at=self.clock(),
            )
            s.add(v)
            s.flush()
            v.server_name = f"verify-{v.id}"
            s.flush()
            return _verification_info(v)

    def update_verification(
        self,
        verification_id: int,
        *,
        state: str | None = None,
        message: str | None = None,
        report: dict[str, Any] | None = None,
        run_session_id: int | None = None,
    ) -> VerificationInfo:
        """Move a verification on; a final state (passed/failed/error) stamps ``finished_at``."""
        if state is not None and state not in VERIFICATION_STATES:
            raise ValueError(f"unknown state {state!r}; known: {list(VERIFICATION_STATES)}")
        with self.db.session() as s:
            v = s.get(Verification, verification_id, with_for_update=True)
            if v is None:
                raise KeyError(verification_id)
            if state is not None:
                v.state = state
                if state in ("passed", "failed", "error"):
                    v.finished_at = self.clock()
            if message is not None:
                v.message = message[:2000]
            if report is not None:
                v.report = _jsonable(report)
            if run_session_id is not None:
                v.run_session_id = run_session_id
            s.flush()
            return _verification_info(v)

    def verification(self, verification_id: int) -> VerificationInfo | None:
        """One verification, or None."""
        with self.db.session() as s:
            v = s.get(Verification, verification_id)
            return None if v is None else _verification_info(v)

    def verifications(
        self, *, username: str | None = None, session_id: int | None = None, limit: int = 200
    ) -> list[VerificationInfo]:
        """Verifications, newest first, optionally of one user or one session."""
        q = select(Verification).order_by(Verification.id.desc()).limit(limit)
        if username is not None:
            q = q.where(Verification.username == username)
        if session_id is not None:
            q = q.where(Verification.session_id == session_id)
        with self.db.session() as s:
            return [_verification_info(v) for v in s.scalars(q)]


def sessions_csv(rows: Iterable[ServerSessionInfo]) -> str:
    """The CSV export of session records (:data:`CSV_COLUMNS`)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        d = r.as_dict()
        d["gpu_uuids"] = " ".join(r.gpu_uuids)
        d["hidden_dirs"] = " ".join(r.hidden_dirs)
        writer.writerow(["" if d.get(c) is None else d.get(c) for c in CSV_COLUMNS])
    return out.getvalue()


def _clip(text: str | None, n: int = 255) -> str | None:
    return None if text is None else str(text)[:n]


def _jsonable(value: Any) -> Any:
    """Plain JSON types only (tuples to lists, unknown objects to strings)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
