"""GPU allocations: which server holds which GPU, one database row per GPU.

A row is *active* while ``released_at`` is NULL.  A partial unique index on
``gpu_uuid`` over active rows (SQLite and PostgreSQL both have them) makes a
double booking impossible: two launches that pick the same GPU at the same
moment cannot both insert, the loser gets an ``IntegrityError`` and tries again
with a fresh view.  On SQLite :class:`hybridhub.accounting.db.Database` also serialises
writers with ``BEGIN IMMEDIATE``.

Placement policy (:func:`choose_host`): best fit.  Among the hosts with at
least N free GPUs of the wanted model, take the one with the *fewest* free
GPUs (ties: the order of the inventory), so partly used hosts fill up first
and whole hosts stay free for large launches.  Inside a host, the lowest GPU
indices are taken first.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import DateTime, Index, Integer, String, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Mapped, Session, mapped_column
from sqlalchemy.sql import ColumnElement

from hybridhub.accounting.db import DEFAULT_URL, Database  # noqa: F401  (DEFAULT_URL: for backends)
from hybridhub.accounting.models import Base, utcnow

log = logging.getLogger("hybridhub.allocations")

ACTIVE = text("released_at IS NULL")


class GpuAllocation(Base):
    """One GPU held by one server (``owner``) from ``allocated_at`` until ``released_at``."""

    __tablename__ = "gpu_allocations"
    __table_args__ = (
        Index(
            "uq_gpu_allocations_active_gpu",
            "gpu_uuid",
            unique=True,
            sqlite_where=ACTIVE,
            postgresql_where=ACTIVE,
        ),
        Index("ix_gpu_allocations_owner", "owner", "released_at"),
        Index("ix_gpu_allocations_host", "host", "released_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    gpu_uuid: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(128), default="")
    owner: Mapped[str] = mapped_column(String(255))
    username: Mapped[str] = mapped_column(String(255), default="")
    server_name: Mapped[str] = mapped_column(String(255), default="")
    offering: Mapped[str] = mapped_column(String(255), default="")
    reservation_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    allocated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    released_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    release_reason: Mapped[str | None] = mapped_column(String(255), nullable=True)


class NoCapacity(RuntimeError):
    """No host has ``count`` free GPUs of the wanted model right now."""

    def __init__(self, what: str, count: int, free_by_host: dict[str, int]):
        self.what = what
        self.count = count
        self.free_by_host = free_by_host
        largest = max(free_by_host.values(), default=0)
        super().__init__(
            f"No capacity for {count} x {what} right now: the most free on one host is {largest}"
            f" ({sum(free_by_host.values())} free in all). Try fewer GPUs or again later."
        )


@dataclass(frozen=True)
class Candidate:
    """A host that can serve the offering and its matching GPU UUIDs, in index order."""

    host: str
    gpus: tuple[str, ...]


@dataclass(frozen=True)
class Placement:
    """Where a launch went: a host and the GPUs it holds there."""

    host: str
    gpus: tuple[str, ...]


def choose_host(candidates: Sequence[Candidate], taken: set[str], count: int) -> Placement | None:
    """Best fit: the host with the fewest free GPUs that still has ``count`` free."""
    best: tuple[int, int, Candidate, list[str]] | None = None
    for order, cand in enumerate(candidates):
        free = [g for g in cand.gpus if g not in taken]
        if len(free) < count:
            continue
        key = (len(free), order)
        if best is None or key < best[:2]:
            best = (len(free), order, cand, free)
    if best is None:
        return None
    return Placement(best[2].host, tuple(best[3][:count]))


def _taken_in(s: Session, uuids: list[str]) -> set[str]:
    """Which of ``uuids`` are held by an active allocation, seen from session ``s``."""
    if not uuids:
        return set()
    q = select(GpuAllocation.gpu_uuid).where(
        GpuAllocation.released_at.is_(None), GpuAllocation.gpu_uuid.in_(uuids)
    )
    return set(s.scalars(q))


def _free_by_host(candidates: Sequence[Candidate], taken: set[str]) -> dict[str, int]:
    """Free GPUs per candidate host when ``taken`` are held."""
    return {c.host: sum(g not in taken for g in c.gpus) for c in candidates}


class Allocator:
    """Allocate, free and list GPU allocations in the hybridhub database."""

    def __init__(
        self, db: Database, *, clock: Callable[[], datetime] = utcnow, max_attempts: int = 50
    ):
        self.db = db
        self.clock = clock
        self.max_attempts = max_attempts

    def active(self, *, host: str | None = None, owner: str | None = None) -> list[GpuAllocation]:
        """Active allocations, optionally of one host or one owner."""
        q = select(GpuAllocation).where(*_active(host=host, owner=owner))
        with self.db.session() as s:
            return list(s.scalars(q.order_by(GpuAllocation.id)))

    def taken(self, uuids: Iterable[str]) -> set[str]:
        """Which of ``uuids`` are held by an active allocation."""
        uuids = list(uuids)
        if not uuids:
            return set()
        with self.db.session() as s:
            return _taken_in(s, uuids)

    def free_by_host(self, candidates: Sequence[Candidate]) -> dict[str, int]:
        """Free GPUs per candidate host."""
        return self.free_by_host_many([candidates])[0]

    def free_by_host_many(self, lists: Sequence[Sequence[Candidate]]) -> list[dict[str, int]]:
        """:meth:`free_by_host` of each list of candidates, in one read."""
        taken = self.taken({g for cands in lists for c in cands for g in c.gpus})
        return [_free_by_host(cands, taken) for cands in lists]

    def allocate(
        self,
        candidates: Sequence[Candidate],
        count: int,
        *,
        owner: str,
        what: str = "GPU",
        model: str = "",
        username: str = "",
        server_name: str = "",
        offering: str = "",
        reservation_id: int | None = None,
    ) -> Placement:
        """Hold ``count`` GPUs on one candidate host for ``owner``, or raise :class:`NoCapacity`.

        Idempotent per owner: if ``owner`` already holds GPUs, that placement is returned.
        """
        all_uuids = [g for c in candidates for g in c.gpus]
        for _attempt in range(self.max_attempts):
            try:
                with self.db.session() as s:
                    mine = list(
                        s.scalars(
                            select(GpuAllocation).where(
                                GpuAllocation.owner == owner, GpuAllocation.released_at.is_(None)
                            )
                        )
                    )
                    if mine:
                        return Placement(mine[0].host, tuple(a.gpu_uuid for a in mine))
                    taken = _taken_in(s, all_uuids)
                    placement = choose_host(candidates, taken, count)
                    if placement is None:
                        raise NoCapacity(what, count, _free_by_host(candidates, taken))
                    now = self.clock()
                    for uuid in placement.gpus:
                        s.add(
                            GpuAllocation(
                                host=placement.host,
                                gpu_uuid=uuid,
                                model=model,
                                owner=owner,
                                username=username,
                                server_name=server_name,
                                offering=offering,
                                reservation_id=reservation_id,
                                allocated_at=now,
                            )
                        )
                    s.flush()
                    return placement
            except IntegrityError:
                log.debug("GPU allocation for %s lost a race; retrying", owner)
            except OperationalError as e:  # SQLite "database is locked" under heavy contention
                if "locked" not in str(e):
                    raise
                log.debug("GPU allocation for %s found the database locked; retrying", owner)
        raise NoCapacity(what, count, self.free_by_host(candidates))

    def adopt(self, placement: Placement, *, owner: str, **fields: object) -> list[str]:
        """Make sure ``owner`` holds ``placement`` (re-adoption); returns GPUs held by others."""
        conflicts = []
        with self.db.session() as s:
            active = {
                a.gpu_uuid: a
                for a in s.scalars(
                    select(GpuAllocation).where(
                        GpuAllocation.released_at.is_(None),
                        GpuAllocation.gpu_uuid.in_(placement.gpus),
                    )
                )
            }
            for uuid in placement.gpus:
                row = active.get(uuid)
                if row is None:
                    s.add(
                        GpuAllocation(
                            host=placement.host,
                            gpu_uuid=uuid,
                            owner=owner,
                            allocated_at=self.clock(),
                            **fields,
                        )
                    )
                elif row.owner != owner:
                    conflicts.append(uuid)
        return conflicts

    def release(
        self, *, owner: str | None = None, host: str | None = None, reason: str = "stopped"
    ) -> int:
        """Release the active allocations of ``owner`` (or of every server on ``host``)."""
        if owner is None and host is None:
            raise ValueError("release needs an owner or a host")
        q = update(GpuAllocation).where(*_active(host=host, owner=owner))
        with self.db.session() as s:
            return s.execute(
                q.values(released_at=self.clock(), release_reason=reason[:255])
            ).rowcount


def _active(*, host: str | None, owner: str | None) -> list[ColumnElement[bool]]:
    """The conditions of an active allocation, of ``host`` and of ``owner`` where given."""
    where = [GpuAllocation.released_at.is_(None)]
    if host is not None:
        where.append(GpuAllocation.host == host)
    if owner is not None:
        where.append(GpuAllocation.owner == owner)
    return where


_allocators: dict[str, Allocator] = {}
_allocators_lock = threading.Lock()


def allocator_for(db_url: str, *, upgrade: bool = True) -> Allocator:
    """One :class:`Allocator` per database URL in this process (schema upgraded once).

    Safe from any thread: the first call per URL upgrades the schema under a lock.
    """
    found = _allocators.get(db_url)
    if found is not None:
        return found
    with _allocators_lock:
        if db_url not in _allocators:
            db = Database(db_url)
            if upgrade:
                db.upgrade()
            _allocators[db_url] = Allocator(db)
        return _allocators[db_url]
