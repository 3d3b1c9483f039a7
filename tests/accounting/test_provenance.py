"""hybridhub.accounting.sessions and .trust on SQLite and PostgreSQL: records, end reasons, policies."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta

import pytest
from sqlalchemy import inspect

from hybridhub.accounting.ledger import Accounting
from hybridhub.accounting.sessions import (
    CSV_COLUMNS,
    END_COURSE,
    END_HOST_LOST,
    END_QUOTA,
    END_STOPPED_BY_USER,
    SessionLog,
    sessions_csv,
)
from hybridhub.accounting.trust import PolicyError, TrustPolicy, normalize_confidential_dirs

T0 = datetime(2026, 11, 10, 12, 0, 0)


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self):
        return self.now


@pytest.fixture
def log(db):
    return SessionLog(db, clock=Clock())


def open_one(log: SessionLog, **over) -> int:
    values = dict(
        username="alice", server_name="", group="course-ml101", resource_class="community",
        offering="community/rtx4090", accelerator="RTX 4090", count=1, trust="untrusted",
        backend="docker", reservation_id=7, host="h1", gpu_uuids=["GPU-a", "GPU-b"],
        image="img:1", image_id="sha256:abc", hidden_dirs=["secret"], details={"container": "c1"},
    )
    values.update(over)
    return log.open(**values)


def test_tables_exist(db):
    assert {"session_records", "verifications"} <= set(inspect(db.engine).get_table_names())


def test_open_is_idempotent_per_reservation_and_snapshot_complete(log):
    sid = open_one(log)
    assert open_one(log) == sid
    rec = log.get(sid)
    assert (rec.username, rec.group, rec.offering, rec.host, rec.gpu_uuids, rec.image_id) == (
        "alice", "course-ml101", "community/rtx4090", "h1", ["GPU-a", "GPU-b"], "sha256:abc"
    )
    assert rec.started_at == T0 and rec.stopped_at is None and rec.end_reason is None
    assert rec.as_dict()["started_at"] == "2026-11-10T12:00:00Z"


def test_stop_without_intent_is_stopped_by_user(log):
    sid = open_one(log)
    log.clock.now = T0 + timedelta(hours=1)
    assert log.close(sid) is True
    assert log.close(sid, observed=END_HOST_LOST) is False  # closed once
    rec = log.get(sid)
    assert rec.end_reason == END_STOPPED_BY_USER and rec.stopped_at == T0 + timedelta(hours=1)


@pytest.mark.parametrize("reason", [END_QUOTA, END_COURSE])
def test_intended_reason_recorded_before_the_stop_is_used(log, reason):
    sid = open_one(log)
    assert log.request_end(reason, reservation_id=7, detail="budget used up") == 1
    log.close(sid)
    rec = log.get(sid)
    assert rec.end_reason == reason and rec.end_detail == "budget used up"


def test_request_end_by_user_and_server(log):
    sid = open_one(log, server_name="gpu", reservation_id=8)
    assert log.request_end(END_COURSE, username="alice", server_name="gpu") == 1
    assert log.request_end(END_COURSE, username="alice", server_name="other") == 0
    assert log.open_session_id("alice", "gpu") == sid
    log.close(sid)
    assert log.get(sid).end_reason == END_COURSE
    assert log.open_session_id("alice", "gpu") is None
    with pytest.raises(ValueError, match="unknown end reason"):
        log.request_end("bored", reservation_id=8)
    with pytest.raises(ValueError, match="reservation_id, or username"):
        log.request_end(END_QUOTA)


def test_observed_host_loss_wins_over_intent(log):
    sid = open_one(log)
    log.request_end(END_QUOTA, reservation_id=7)
    log.close(sid, observed=END_HOST_LOST, detail="host h1 unreachable")
    rec = log.get(sid)
    assert (rec.end_reason, rec.end_detail) == (END_HOST_LOST, "host h1 unreachable")


def test_listing_is_per_user_newest_first_and_csv(log):
    a = open_one(log)
    log.clock.now = T0 + timedelta(minutes=5)
    b = open_one(log, username="bob", reservation_id=9, hidden_dirs=[])
    log.clock.now = T0 + timedelta(minutes=10)
    c = open_one(log, reservation_id=10, trust="trusted", gpu_uuids=[])
    assert [r.id for r in log.sessions()] == [c, b, a]
    assert [r.id for r in log.sessions("alice")] == [c, a]
    rows = list(csv.DictReader(io.StringIO(sessions_csv(log.sessions("alice")))))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert rows[1]["gpu_uuids"] == "GPU-a GPU-b" and rows[1]["stopped_at"] == ""


def test_verification_lifecycle(log):
    sid = open_one(log)
    v = log.create_verification(
        username="alice", group="course-ml101", notebook="train.ipynb",
        offering="enterprise/h100", session_id=sid,
    )
    assert v.state == "pending" and v.server_name == f"verify-{v.id}"
    log.update_verification(v.id, state="running")
    run = open_one(log, server_name=v.server_name, reservation_id=11, trust="trusted")
    done = log.update_verification(
        v.id, state="failed", report={"verdict": "failed", "summary": {"differing": (2,)}},
        run_session_id=run,
    )
    assert done.finished_at is not None and done.report["summary"]["differing"] == [2]
    assert [x.id for x in log.verifications(session_id=sid)] == [v.id]
    assert log.verification(v.id).run_session_id == run
    with pytest.raises(ValueError, match="unknown state"):
        log.update_verification(v.id, state="maybe")


def test_group_policy(db):
    Accounting(db).sync_groups({"lab-vision": ["carol"], "course-ml101": ["alice"]})
    policy = TrustPolicy(db)
    assert policy.for_groups(["lab-vision", "nope"])["lab-vision"].barred_untrusted is False
    p = policy.set_policy("lab-vision", barred_untrusted=True, confidential_dirs=["~/data/ct", "./notes/"])
    assert p.barred_untrusted and p.confidential_dirs == ("data/ct", "notes")
    assert policy.set_policy("lab-vision").confidential_dirs == ("data/ct", "notes")
    assert [g.group for g in policy.all()] == ["course-ml101", "lab-vision"]
    with pytest.raises(KeyError):
        policy.set_policy("nope", barred_untrusted=True)
    with pytest.raises(PolicyError, match="barred_untrusted"):
        policy.set_policy("lab-vision", barred_untrusted="yes")


@pytest.mark.parametrize("bad", ["/etc", "../x", "a/../../b", "", ".", "~/"])
def test_confidential_dir_validation(bad):
    with pytest.raises(PolicyError):
        normalize_confidential_dirs([bad])


def test_nested_confidential_dirs_collapse():
    assert normalize_confidential_dirs(["data", "data/ct", "data2"]) == ["data", "data2"]
    with pytest.raises(PolicyError, match="list"):
        normalize_confidential_dirs("data")
