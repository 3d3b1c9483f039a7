"""Trust, provenance and verification on the docker backend, through a real hub and real engines.

Community hardware is engine ``h1`` reached through a socket relay (so the test can
"lose" that host without touching the engine other tests use); enterprise hardware is
engine ``h2``.  Both mount the same host directory as the home, as an NFS home would.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from pathlib import Path

import nbformat
import pytest

from hybridhub.accounting.db import Database
from hybridhub.accounting.sessions import END_BY_SERVICE, END_HOST_LOST, SessionLog
from hybridhub.accounting.trust import TrustPolicy
from tests.fixtures.docker import DATA, engine_url, hub_docker_config, remove_labelled
from tests.fixtures.hub import hub_factory, hub_prereqs  # noqa: F401  (fixtures)
from tests.fixtures.trust import deterministic_notebook, probe, verify

pytestmark = pytest.mark.docker

USER = "alice"
UNTRUSTED = {"class": "community", "model": "rtx4090", "count": 1, "hours": 1, "group": "course-ml101"}


class SocketRelay:
    """A unix socket that relays to a Docker Engine's socket until :meth:`lose` is called."""

    def __init__(self, path: Path, target: str):
        self.path, self.target = path, target.removeprefix("unix://")
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen(64)
        self.conns: list[socket.socket] = []
        self.lost = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.lost:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.target)
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def lose(self) -> None:
        """The host is gone: refuse new connections and cut the open ones."""
        self.lost = True
        self.server.close()
        self.path.unlink(missing_ok=True)
        for s in self.conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass


@pytest.fixture(scope="module")
def setup(hub_prereqs, docker_engines, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("trustdocker")
    relay = SocketRelay(tmp / "h1-relay.sock", engine_url("h1"))
    label = f"trust-{uuid.uuid4().hex[:6]}"
    hosts = [
        {"name": "volunteer-h1", "url": f"unix://{relay.path}", "class": "community",
         "nvidia_smi_file": str(DATA / "nvidia-smi-2xrtx4090.csv")},
        {"name": "dc-h2", "url": docker_engines.urls["h2"], "class": "enterprise",
         "nvidia_smi_file": str(DATA / "nvidia-smi-8xh100.csv")},
    ]
    homes = tmp / "homes"
    extra = hub_docker_config(hosts, hub_label=label) + "\n".join([
        f"c.DockerBackend.home_host_dir = '{homes}/{{username}}'",
        "c.DockerBackend.notebook_dir = '/home/jovyan'",
        "c.JupyterHub.allow_named_servers = True",
        "c.Spawner.poll_interval = 1",
        "c.Spawner.env_keep = ['PATH', 'LANG', 'AWS_SECRET_ACCESS_KEY']",
    ]) + "\n"
    from tests.fixtures.hub import Hub

    hub = Hub(tmp_path_factory.mktemp("hub"), extra_config=extra,
              env={"AWS_SECRET_ACCESS_KEY": "docker-test-secret"}).start()
    db = Database(hub.db_url)
    (homes / USER).mkdir(parents=True)
    yield hub, db, relay, homes / USER
    hub.stop()
    db.dispose()
    remove_labelled(docker_engines, label)
    relay.lose()


def test_confidential_folder_is_not_mounted_and_provenance_names_host_gpus_image(setup):
    hub, db, _relay, home = setup
    TrustPolicy(db).set_policy("course-ml101", confidential_dirs=["secret"])
    (home / "secret").mkdir()
    (home / "secret" / "patients.csv").write_text("id\n1\n")
    (home / "public.txt").write_text("shared")
    try:
        assert hub.spawn(USER, UNTRUSTED).status_code in (201, 202)
        model = hub.wait_ready(USER, timeout=120)
        seen = probe(hub, model)
        assert seen["secret"] == [] and seen["public"] == "shared"
        assert "AWS_SECRET_ACCESS_KEY" not in seen["env"] and seen["trust"] == "untrusted"
        assert seen["not_mounted"] == "secret (confidential to course-ml101)"
        hub.stop_server(USER)
    finally:
        TrustPolicy(db).set_policy("course-ml101", confidential_dirs=[])
    assert os.listdir(home / "secret") == ["patients.csv"]  # untouched on the host
    rec = SessionLog(db).sessions(USER)[0]
    assert rec.host == "volunteer-h1" and rec.backend == "docker" and rec.trust == "untrusted"
    assert len(rec.gpu_uuids) == 1 and rec.gpu_uuids[0].startswith("GPU-")
    assert rec.image and rec.image_id.startswith("sha256:") and rec.details["container"]
    assert rec.hidden_dirs == ["secret"] and rec.end_reason == END_BY_SERVICE  # hub.stop_server: a service


def test_verification_on_docker_passes_then_finds_the_tampered_cell(setup):
    hub, db, _relay, home = setup
    (home / "results").mkdir(exist_ok=True)
    nb = deterministic_notebook()
    nbformat.write(nb, home / "results" / "det.ipynb")
    nb.cells[3].outputs[0]["text"] = "stdev 0.5\n"
    nbformat.write(nb, home / "results" / "tampered.ipynb")

    v = verify(hub, db, "results/det.ipynb", offering="enterprise/h100")
    assert v.state == "passed", (v.message, v.report)
    run = SessionLog(db).get(v.run_session_id)
    assert run.host == "dc-h2" and run.trust == "trusted" and run.image_id.startswith("sha256:")
    assert v.report["run_session"]["gpu_uuids"] == run.gpu_uuids

    v = verify(hub, db, "results/tampered.ipynb", offering="enterprise/h100")
    assert v.state == "failed" and v.report["summary"]["differing"] == [3]
    [diff] = v.report["cells"][3]["differences"]
    assert diff["what"] == "stdout" and diff["expected"] == "stdev 0.5\n"


def test_host_loss_closes_the_record_as_host_lost(setup):
    hub, db, relay, _home = setup
    assert hub.spawn(USER, UNTRUSTED).status_code in (201, 202)
    hub.wait_ready(USER, timeout=120)
    relay.lose()
    hub.wait_stopped(USER, timeout=60)
    rec = SessionLog(db).sessions(USER)[0]
    assert rec.end_reason == END_HOST_LOST and "volunteer-h1" in rec.end_detail
    assert rec.stopped_at is not None and rec.host == "volunteer-h1"
