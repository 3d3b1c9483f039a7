"""GPU allocations on SQLite and PostgreSQL: best-fit packing, no double booking."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import datetime, timedelta

import pytest

from hybridhub.accounting.allocations import Allocator, Candidate, NoCapacity, Placement, choose_host
from hybridhub.accounting.db import Database


def gpus(host: str, n: int) -> tuple[str, ...]:
    return tuple(f"GPU-{host}-{i}" for i in range(n))


def test_choose_host_fills_partly_used_hosts_first():
    cands = [Candidate("a", gpus("a", 8)), Candidate("b", gpus("b", 8))]
    # b has 2 taken: it is the fuller host that still fits, so it goes first
    taken = {"GPU-b-0", "GPU-b-1"}
    assert choose_host(cands, taken, 2) == Placement("b", ("GPU-b-2", "GPU-b-3"))
    # 7 do not fit on b (6 free): a whole host is used
    assert choose_host(cands, taken, 7).host == "a"
    assert choose_host(cands, taken | set(gpus("a", 8)), 7) is None


def test_allocate_is_idempotent_and_released_gpus_come_back(db: Database):
    alloc = Allocator(db)
    cands = [Candidate("a", gpus("a", 2))]
    first = alloc.allocate(cands, 2, owner="hub/jupyter-alice")
    assert alloc.allocate(cands, 2, owner="hub/jupyter-alice") == first
    with pytest.raises(NoCapacity) as e:
        alloc.allocate(cands, 1, owner="hub/jupyter-bob")
    assert e.value.free_by_host == {"a": 0}
    assert "No capacity for 1 x GPU" in str(e.value)
    assert alloc.release(owner="hub/jupyter-alice", reason="stopped") == 2
    assert alloc.allocate(cands, 1, owner="hub/jupyter-bob").gpus == ("GPU-a-0",)
    assert alloc.free_by_host(cands) == {"a": 1}


def test_release_by_host(db: Database):
    alloc = Allocator(db)
    cands = [Candidate("a", gpus("a", 4)), Candidate("b", gpus("b", 4))]
    for i in range(6):
        alloc.allocate(cands, 1, owner=f"o{i}")
    assert alloc.free_by_host(cands) == {"a": 0, "b": 2}
    assert alloc.release(host="a", reason="host a unreachable") == 4
    assert alloc.free_by_host(cands) == {"a": 4, "b": 2}
    assert {a.release_reason for a in alloc.active()} == {None}


def test_unique_index_refuses_a_second_active_row(db: Database):
    from sqlalchemy.exc import IntegrityError

    from hybridhub.accounting.allocations import GpuAllocation

    def row(owner: str) -> GpuAllocation:
        """An active allocation of GPU-1 on host a."""
        return GpuAllocation(
            host="a",
            gpu_uuid="GPU-1",
            model="",
            owner=owner,
            username="",
            server_name="",
            offering="",
        )

    with db.session() as s:
        s.add(row("x"))
    with pytest.raises(IntegrityError):
        with db.session() as s:
            s.add(row("y"))
    # a released row does not count
    with db.session() as s:
        s.query(GpuAllocation).update({"released_at": datetime(2026, 1, 1)})
    with db.session() as s:
        s.add(row("y"))


def test_20_concurrent_launches_onto_8_gpus(db: Database, db_factory):
    """Twenty launches at once, each on its own connection: exactly 8 win, no GPU twice."""
    cands = [Candidate("a", gpus("a", 4)), Candidate("b", gpus("b", 4))]
    allocators = [Allocator(db_factory()) for _ in range(20)]
    barrier = threading.Barrier(20)
    results: list = [None] * 20

    def launch(i: int) -> None:
        barrier.wait()
        try:
            results[i] = allocators[i].allocate(cands, 1, owner=f"hub/jupyter-u{i}")
        except NoCapacity as e:
            results[i] = e

    threads = [threading.Thread(target=launch, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    placed = [r for r in results if isinstance(r, Placement)]
    refused = [r for r in results if isinstance(r, NoCapacity)]
    assert len(placed) == 8 and len(refused) == 12
    held = Counter(g for p in placed for g in p.gpus)
    assert set(held) == set(gpus("a", 4) + gpus("b", 4)) and max(held.values()) == 1
    assert len(Allocator(db).active()) == 8


def test_concurrent_multi_gpu_launches_never_split_a_host(db: Database, db_factory):
    cands = [Candidate("a", gpus("a", 8)), Candidate("b", gpus("b", 8))]
    results: list = [None] * 10
    barrier = threading.Barrier(10)

    def launch(i: int) -> None:
        alloc = Allocator(db_factory())
        barrier.wait()
        try:
            results[i] = alloc.allocate(cands, 4, owner=f"o{i}")
        except NoCapacity as e:
            results[i] = e

    threads = [threading.Thread(target=launch, args=(i,)) for i in range(10)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    placed = [r for r in results if isinstance(r, Placement)]
    assert len(placed) == 4
    assert all(len({g.split("-")[1] for g in p.gpus}) == 1 for p in placed)
    assert len({g for p in placed for g in p.gpus}) == 16


def test_clock_is_injectable(db: Database):
    t0 = datetime(2026, 11, 10, 12, 0)
    alloc = Allocator(db, clock=lambda: t0)
    alloc.allocate([Candidate("a", gpus("a", 1))], 1, owner="o")
    (row,) = alloc.active()
    assert row.allocated_at == t0
    Allocator(db, clock=lambda: t0 + timedelta(hours=1)).release(owner="o")
    assert alloc.active() == []
