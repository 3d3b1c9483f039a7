"""hybridhub.spawner.trust: trust levels, the bar, env filtering and hiding confidential folders (no hub)."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from traitlets.config import Config

from hybridhub.backends import backend_class
from hybridhub.catalog import load_catalog
from hybridhub.spawner.trust import (
    BarredFromUntrusted,
    Confinement,
    ConfinementError,
    HiddenDir,
    confine_backend,
    filter_env,
    hidden_dirs,
    host_trust,
    least_trusted,
    offering_trust,
    plan_confinement,
)
from tests.fixtures.docker import MiniUser
from tests.fixtures.env import require

CATALOG = load_catalog()
RTX = CATALOG.by_key("community/rtx4090")
H100 = CATALOG.by_key("enterprise/h100")
TRN = CATALOG.by_key("aws/trn1.2xlarge")


def test_default_catalog_trust_per_class():
    assert (RTX.trust, H100.trust, TRN.trust) == ("untrusted", "trusted", "trusted")


def test_least_trusted_and_host_labels():
    assert least_trusted("trusted", None, "trusted") == "trusted"
    assert least_trusted("trusted", "untrusted") == "untrusted"
    assert host_trust({}) is None and host_trust({"trust": "trusted"}) == "trusted"
    assert host_trust({"trust": "maybe"}) == "untrusted"  # a typo never widens trust


def _inventory(labels_h2: dict) -> Config:
    gpu = {"model": "NVIDIA H100 80GB HBM3", "memory_mib": 81559}
    c = Config()
    c.GpuInventory.hosts = [
        {"name": "e1", "url": "unix:///x/e1.sock", "class": "enterprise", "gpus": [{**gpu, "uuid": "GPU-1"}]},
        {"name": "e2", "url": "unix:///x/e2.sock", "class": "enterprise", "labels": labels_h2,
         "gpus": [{**gpu, "uuid": "GPU-2"}]},
    ]
    return c


def _trust(offering, config) -> str:
    """The offering's trust as the spawner asks it: its backend's hosts' labels."""
    return offering_trust(offering, backend_class(offering.backend).host_labels(offering, config))


def test_an_untrusted_host_makes_an_offering_untrusted():
    assert _trust(H100, _inventory({})) == "trusted"
    assert _trust(H100, _inventory({"trust": "untrusted"})) == "untrusted"
    # a host label cannot raise an untrusted class
    assert _trust(RTX, _inventory({"trust": "trusted"})) == "untrusted"
    assert _trust(TRN, _inventory({"trust": "untrusted"})) == "trusted"  # ec2: no hosts


def test_env_filter_strips_credentials_keeps_token_and_hardware():
    env = {
        "AWS_SECRET_ACCESS_KEY": "s", "AWS_ACCESS_KEY_ID": "k", "HYBRIDHUB_DB_URL": "postgres://p",
        "HYBRIDHUB_CLASS": "community", "HYBRIDHUB_GPUS": "GPU-1", "JUPYTERHUB_API_TOKEN": "t",
        "PATH": "/usr/bin", "MY_SECRET_KEY": "x", "PGPASSWORD": "x", "LANG": "C.UTF-8",
    }
    assert filter_env(env) == {
        "HYBRIDHUB_CLASS": "community", "HYBRIDHUB_GPUS": "GPU-1", "JUPYTERHUB_API_TOKEN": "t",
        "PATH": "/usr/bin", "LANG": "C.UTF-8",
    }


def test_hidden_dirs_merge_groups_and_drop_nested():
    hidden = hidden_dirs({"lab": ["data", "data/ct"], "proj": ["data", "notes"]})
    assert hidden == (HiddenDir("data", ("lab", "proj")), HiddenDir("notes", ("proj",)))


def test_plan_bars_only_the_charged_group_and_only_untrusted():
    barred = {"lab-vision": True, "course-ml101": False}
    conf = {"lab-vision": ["scans"], "course-ml101": []}
    with pytest.raises(BarredFromUntrusted) as info:
        plan_confinement(trust="untrusted", charged_group="lab-vision", barred=barred,
                         confidential=conf, offering_label="community/rtx4090 (RTX 4090)")
    msg = info.value.user_message
    assert "'lab-vision' is barred from untrusted hardware by an administrator" in msg
    assert "community/rtx4090" in msg and "volunteers outside the university" in msg
    plan = plan_confinement(trust="untrusted", charged_group="course-ml101", barred=barred,
                            confidential=conf, offering_label="x")
    assert plan.untrusted and plan.hidden_paths == ["scans"]
    assert "~/scans (confidential to lab-vision)" in plan.notice()
    trusted = plan_confinement(trust="trusted", charged_group="lab-vision", barred=barred,
                               confidential=conf, offering_label="x")
    assert not trusted.untrusted and trusted.hidden == () and trusted.notice() is None


def _local_child(tmp_path):
    from jupyterhub.objects import Hub, Server

    from hybridhub.backends.local import LocalBackend

    user = MiniUser(name="alice", escaped_name="alice", url="/user/alice/", groups=[])
    c = Config()
    c.LocalBackend.home_root = str(tmp_path)
    child = LocalBackend(user=user, config=c, orm_spawner=None, hub=Hub(base_url="/hub/"))
    child.server = Server(base_url="/user/alice/")
    return child


def test_confine_local_child_prefixes_the_launcher_and_filters_env(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret")
    child = _local_child(tmp_path)
    child.env_keep = [*child.env_keep, "AWS_SECRET_ACCESS_KEY"]
    assert child.get_env()["AWS_SECRET_ACCESS_KEY"] == "very-secret"
    plan = Confinement("untrusted", (HiddenDir("secret", ("lab",)),))
    confine_backend(child, plan)
    assert child.cmd[:6] == [sys.executable, "-P", "-m", "hybridhub.backends.local.confine", "--hide",
                             str(tmp_path / "alice" / "secret")]
    env = child.get_env()
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert env["HYBRIDHUB_TRUST"] == "untrusted"
    assert env["HYBRIDHUB_NOT_MOUNTED"] == "secret (confidential to lab)"


def test_trusted_confinement_changes_nothing(tmp_path):
    child = _local_child(tmp_path)
    cmd, get_env = list(child.cmd), child.get_env
    confine_backend(child, Confinement("trusted"))
    assert child.cmd == cmd and child.get_env == get_env


def test_confine_docker_child_adds_read_only_tmpfs_mounts():
    from hybridhub.backends.docker import DockerBackend

    user = MiniUser(name="alice", escaped_name="alice", url="/user/alice/", groups=[])
    child = DockerBackend(user=user, config=Config(), orm_spawner=None)
    child.extra_host_config = {"shm_size": "1g"}
    confine_backend(child, Confinement("untrusted", (HiddenDir("data/ct", ("lab",)),)))
    (mount,) = child.extra_host_config["mounts"]
    assert mount["Target"] == "/home/jovyan/data/ct" and mount["Type"] == "tmpfs"
    assert mount["ReadOnly"] is True and child.extra_host_config["shm_size"] == "1g"


def test_a_backend_that_cannot_hide_refuses():
    child = SimpleNamespace(get_env=dict, cmd=[])
    with pytest.raises(ConfinementError, match="cannot leave confidential folders out"):
        confine_backend(child, Confinement("untrusted", (HiddenDir("x", ("g",)),)))
    confine_backend(child, Confinement("untrusted"))  # nothing to hide: env filtering only
    assert child.get_env() == {"HYBRIDHUB_TRUST": "untrusted"}


def test_confine_launcher_hides_the_folder_for_the_command_only(tmp_path):
    secret = tmp_path / "home" / "secret"
    secret.mkdir(parents=True)
    (secret / "scan.dcm").write_text("patient data")
    (tmp_path / "home" / "public.txt").write_text("ok")
    out = subprocess.run(
        [sys.executable, "-m", "hybridhub.backends.local.confine", "--hide", str(secret), "--", "sh", "-c",
         f"ls -A {secret}; cat {tmp_path}/home/public.txt; echo; touch {secret}/x 2>/dev/null || echo ro"],
        capture_output=True, text=True, timeout=30,
    )
    require(out.returncode != 78, f"mount namespaces (unshare): {out.stderr.strip()}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ok", "ro"]  # the folder is empty and read-only
    assert os.listdir(secret) == ["scan.dcm"]  # and untouched outside


@pytest.mark.parametrize("backend_kind, status, reason", [
    ("docker", "host h1 unreachable", "host lost"),
    ("local", 0, "stopped by user"),
    ("local", 1, "server exited"),
    ("ec2", 0, "host lost"),
])
def test_end_reason_from_poll_status(backend_kind, status, reason):
    from hybridhub.spawner.provenance import end_reason

    backend = SimpleNamespace(watches_machine=backend_class(backend_kind).watches_machine)
    assert end_reason(backend, status)[0] == reason
    own = SimpleNamespace(offering=None, end_reason=lambda s: "end of course")
    assert end_reason(own, 0) == ("end of course", "0")


def test_every_hybridspawner_setting_has_help():
    from hybridhub.spawner.hybrid import HybridSpawner
    from hybridhub.spawner.trust_provenance import TrustAndProvenanceMixin

    own = {**TrustAndProvenanceMixin.class_own_traits(config=True), **HybridSpawner.class_own_traits(config=True)}
    assert {"trust_words", "untrusted_env_deny", "untrusted_env_allow"} <= set(own)
    assert [n for n, t in own.items() if not t.help] == []
