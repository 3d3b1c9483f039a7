"""The slurm backend's pure parts: the job script, GRES and job-state parsing, catalog fields."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hybridhub.backends import check_catalog
from hybridhub.backends.slurm import (
    JobSpec,
    SlurmBackend,
    exit_status,
    free_gres,
    job_reason,
    orphan_jobs,
    parse_gres,
    queue_message,
    queue_position,
    safe_tag,
    sbatch_script,
    slurm_time,
)
from hybridhub.catalog import CatalogError, load_catalog
from hybridhub.spawner.provenance import end_reason


def spec(**kw) -> JobSpec:
    base = dict(
        job_name="hybridhub-hub1-alice",
        comment="hybridhub:hub1:alice:",
        gres="gpu:h100",
        count=2,
        hours=1.5,
        command=["/venv/bin/jupyterhub-singleuser", "--allow-root"],
        env_names=("JUPYTERHUB_API_TOKEN", "PATH"),
        workdir="/home/alice",
        output="/home/alice/.hybridhub/slurm-%j.log",
        partition="h100",
    )
    base.update(kw)
    return JobSpec(**base)


def directives(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH ")]


def test_script_has_gres_time_tags_and_no_requeue():
    d = directives(sbatch_script(spec()))
    assert "--gres=gpu:h100:2" in d
    assert "--time=0-01:30:00" in d
    assert "--job-name=hybridhub-hub1-alice" in d
    assert "--comment=hybridhub:hub1:alice:" in d
    assert "--no-requeue" in d
    assert "--partition=h100" in d
    assert "--chdir=/home/alice" in d
    assert "--export=ALL" in d and "--get-user-env" not in d  # sbatch's clean env, no login shell


def test_login_environment_names_the_variables_and_asks_for_the_login_env():
    d = directives(sbatch_script(spec(login_environment=True)))
    assert "--export=JUPYTERHUB_API_TOKEN,PATH" in d and "--get-user-env" in d


def test_script_runs_the_command_and_carries_no_environment_values():
    script = sbatch_script(spec(command=["/v/bin/jupyterhub-singleuser", "--arg=a b"]))
    assert script.splitlines()[-1] == "exec /v/bin/jupyterhub-singleuser '--arg=a b'"
    assert "secret" not in script and "export " not in script
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


@pytest.mark.parametrize(
    ("hours", "expected"),
    [(1, "0-01:00:00"), (0.01, "0-00:01:00"), (24, "1-00:00:00"), (25.25, "1-01:15:00"), (1 / 3, "0-00:20:00")],
)
def test_time_limit_rounds_up_to_minutes(hours, expected):
    assert slurm_time(hours) == expected


def test_script_refuses_relative_paths_and_bad_counts():
    with pytest.raises(ValueError, match="absolute"):
        sbatch_script(spec(output="slurm.log"))
    with pytest.raises(ValueError, match="count"):
        sbatch_script(spec(count=0))


def test_optional_limits_and_site_directives():
    d = directives(sbatch_script(spec(partition=None, cpus=4, mem="16G", extra_directives=("--qos=jupyter",))))
    assert not any(x.startswith("--partition") for x in d)
    assert {"--cpus-per-task=4", "--mem=16G", "--qos=jupyter"} <= set(d)


def test_tags_are_safe():
    assert safe_tag("al ice\n#SBATCH --x") == "al_ice__SBATCH_--x"


def test_default_command_is_the_hubs_own_singleuser():
    cmd = SlurmBackend().singleuser_command
    assert cmd == [str(Path(sys.executable).parent / "jupyterhub-singleuser")]


def test_parse_gres():
    assert parse_gres("gpu:h100:4(S:0-1)") == {"gpu:h100": 4}
    assert parse_gres("gpu:h100:2(IDX:0-1),gpu:a100:1(IDX:3)") == {"gpu:h100": 2, "gpu:a100": 1}
    assert parse_gres("gpu:a100:0(IDX:N/A)") == {"gpu:a100": 0}
    assert parse_gres("gpu:2") == {"gpu": 2}
    assert parse_gres("") == {}


NODES = [
    {"name": "n1", "gres": "gpu:h100:4", "gres_used": "gpu:h100:1(IDX:0)", "state": "mixed",
     "state_flags": [], "partitions": ["h100"]},
    {"name": "n2", "gres": "gpu:h100:4", "gres_used": "gpu:h100:0(IDX:N/A)", "state": "idle",
     "state_flags": ["DRAIN"], "partitions": ["h100"]},
    {"name": "n3", "gres": "gpu:h100:4", "gres_used": "gpu:h100:0(IDX:N/A)", "state": "down",
     "state_flags": [], "partitions": ["h100"]},
    {"name": "n4", "gres": "gpu:h100:2", "gres_used": "", "state": "idle",
     "state_flags": ["NOT_RESPONDING"], "partitions": ["h100"]},
    {"name": "n5", "gres": "gpu:h100:8,gpu:a100:2", "gres_used": "gpu:a100:2(IDX:0-1)", "state": "mixed",
     "state_flags": [], "partitions": ["big"]},
]


def test_free_gres_excludes_down_and_drained_nodes():
    assert free_gres(NODES, "gpu:h100", "h100") == 3
    assert free_gres(NODES, "gpu:h100") == 11
    assert free_gres(NODES, "gpu:a100") == 0
    assert free_gres(NODES, "gpu:h200") == 0


def test_job_reasons_for_people():
    assert job_reason({"job_state": "PENDING", "state_reason": "Resources"}) == "PENDING (Resources)"
    assert job_reason({"job_state": ["NODE_FAIL"], "state_reason": "None"}) == "NODE_FAIL"
    assert exit_status({"job_state": "TIMEOUT"}) == 1
    assert exit_status({"job_state": "FAILED", "exit_code": {"return_code": 3}}) == 3
    assert exit_status({"job_state": "COMPLETED", "exit_code": 0}) == 0


def slurm_catalog(**off) -> dict:
    return {"enterprise": {"backend": "slurm", "offerings": {"h100": {
        "model": "H100", "counts": [1, 2], "price_per_hour": 2.5, "max_hours": 8, **off}}}}


def test_catalog_slurm_offering_has_partition_and_gres():
    off = load_catalog(slurm_catalog(partition="h100", gres="gpu:h100")).by_key("enterprise/h100")
    fields = SlurmBackend.fields_of(off)
    assert (off.backend, fields.partition, fields.gres) == ("slurm", "h100", "gpu:h100")


@pytest.mark.parametrize("gres", [None, "h100", "gpu:h100:2", "gpu: h100"])
def test_catalog_refuses_slurm_offering_without_valid_gres(gres):
    cfg = slurm_catalog(**({"gres": gres} if gres else {}))
    with pytest.raises(CatalogError, match="enterprise.offerings.h100.gres"):
        check_catalog(load_catalog(cfg))  # the slurm backend checks its own field


# --- poll(): what a status command's answer means (real subprocesses in place of squeue) -------


def squeue_printing(tmp_path, name: str, body: str | None, rc: int = 0) -> list[str]:
    """A command that prints ``body`` (a JSON job list) and exits ``rc``; or hangs if ``body`` is None."""
    script = tmp_path / name
    script.write_text("#!/bin/sh\n" + ("sleep 30\n" if body is None else f"cat <<'X'\n{body}\nX\nexit {rc}\n"))
    script.chmod(0o755)
    return [str(script)]


def slurm_backend(squeue: list[str], **traits):
    from traitlets.config import Config

    from tests.fixtures.hubless import hubless_backend

    c = Config()
    c.SlurmCommands.squeue = squeue
    c.SlurmCommands.timeout = 0.5
    c.SlurmCommands.cache_seconds = 0
    for k, v in traits.items():
        setattr(c.SlurmBackend, k, v)
    off = load_catalog(slurm_catalog(gres="gpu:h100")).by_key("enterprise/h100")
    backend = hubless_backend(SlurmBackend, c, off, username="alice")
    backend.job_id = 42
    return backend


@pytest.mark.parametrize("kind", ["fails", "hangs", "garbage"])
async def test_a_failing_status_command_keeps_the_server(tmp_path, kind):
    squeue = {
        "fails": squeue_printing(tmp_path, "sq", "", rc=1),
        "hangs": squeue_printing(tmp_path, "sq", None),
        "garbage": squeue_printing(tmp_path, "sq", "<html>proxy error</html>"),
    }[kind]
    backend = slurm_backend(squeue, gone_grace=0)
    for _ in range(3):
        assert await backend.poll() is None


async def test_only_slurm_saying_it_ended_or_a_long_absence_ends_it(tmp_path):
    running = squeue_printing(tmp_path, "run", json.dumps({"jobs": [{"job_id": 42, "job_state": "RUNNING"}]}))
    failed = squeue_printing(
        tmp_path, "fail", json.dumps({"jobs": [{"job_id": 42, "job_state": "NODE_FAIL", "state_reason": "None"}]})
    )
    empty = squeue_printing(tmp_path, "empty", json.dumps({"jobs": []}))
    ending = squeue_printing(tmp_path, "ending", json.dumps({"jobs": [{"job_id": 42, "job_state": "COMPLETING"}]}))
    assert await slurm_backend(ending).poll() is None  # its final state (NODE_FAIL?) is not known yet
    pending = squeue_printing(
        tmp_path, "pending", json.dumps({"jobs": [{"job_id": 42, "job_state": "PENDING", "state_reason": "Resources"}]})
    )
    assert await slurm_backend(pending).poll() is None  # not started yet
    b = slurm_backend(pending)
    b.node = "hhn1"  # it ran there, and is pending again: requeued after its node went away
    assert await b.poll() == "node hhn1 lost: requeued after losing node hhn1: PENDING (Resources)"
    assert await slurm_backend(running).poll() is None
    b = slurm_backend(failed)
    status = await b.poll()
    assert b.slurm_reason == "NODE_FAIL" and "lost: NODE_FAIL" in status  # a text status: host lost
    assert end_reason(b, status) == ("host lost", status)
    b = slurm_backend(empty, gone_grace=3600)
    assert [await b.poll() for _ in range(3)] == [None, None, None]  # missing, but within the grace
    b = slurm_backend(empty, gone_grace=0)
    assert await b.poll() is None  # the first absence is never enough
    assert await b.poll() == 1 and "no longer known" in b.slurm_reason


def test_orphans_are_only_this_hubs_live_unknown_jobs_past_the_grace():
    def job(comment, state="RUNNING", submitted=1000):
        return {"comment": comment, "job_state": state, "submit_time": submitted}

    jobs = {
        1: job("hybridhub:hub1:alice:"),  # known to the hub
        2: job("hybridhub:hub1:alice:"),  # same user, another job id: an orphan
        3: job("hybridhub:hub1:bob:gpu"),  # unknown server: an orphan
        4: job("hybridhub:hub2:alice:"),  # another hub's
        5: job(""),  # untagged
        6: job("hybridhub:hub1:carol:", state="COMPLETED"),  # ended
        7: job("hybridhub:hub1:dave:", submitted=1095),  # too new: its spawn may not have saved it yet
        8: job("hybridhub:hub1:erin:", state="PENDING", submitted={"set": True, "number": 900}),
        9: job("hybridhub:hub10:alice:"),  # a hub id that merely starts with ours
    }
    known = {("alice", "", 1)}
    assert orphan_jobs(jobs, "hub1", known, now=1100, grace=10) == [2, 3, 8]
    assert orphan_jobs(jobs, "hub1", known, now=1200, grace=10) == [2, 3, 7, 8]
    assert orphan_jobs(jobs, "hub3", known, now=1200, grace=10) == []


def test_queue_position_counts_pending_jobs_of_the_partition_ahead():
    def job(jid, state="PENDING", part="h100", prio=100, **kw):
        return {"job_id": jid, "job_state": state, "partition": part, "priority": prio, **kw}

    mine = job(7, prio=100)
    jobs = [
        job(3, prio=100),  # same priority, older: ahead
        job(9, prio=100),  # same priority, newer: behind
        job(10, prio={"number": 200, "set": True}),  # higher priority (24.x format): ahead
        job(4, prio=50),  # lower priority: behind
        job(2, state="RUNNING"),  # running: not in the queue
        job(1, part="a100", prio=900),  # another partition
        mine,
    ]
    assert queue_position(jobs, mine) == 3
    assert queue_position([mine], mine) == 1
    eta = 1796194740  # 2026-12-02 06:59 UTC
    assert queue_message(jobs, {**mine, "start_time": eta, "state_reason": "Resources"}) == (
        "Queued in partition h100: position 3, Slurm estimates the start at 2026-12-02 06:59 UTC "
        "(PENDING (Resources))"
    )
    assert "no start estimate from Slurm yet" in queue_message(jobs, {**mine, "start_time": 0})


def test_every_configurable_trait_has_help():
    from hybridhub.backends.slurm import SlurmCommands

    for cls in (SlurmBackend, SlurmCommands):
        own = list(cls.class_own_traits(config=True))
        assert "reconcile_grace" in own or cls is SlurmCommands
        assert [n for n in own if not cls.class_traits()[n].help] == []
