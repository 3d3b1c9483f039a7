"""The EC2 bootstrap: rendering, quoting, and one real run of the generated user-data
on this machine (jupyterhub-singleuser from the venv, the home synced with S3 on moto,
a stand-in instance-metadata service delivering a spot interruption notice)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from hybridhub.backends.ec2.userdata import (
    BootstrapSpec,
    env_file_text,
    extract_script,
    render_script,
    render_user_data,
)
from tests.fixtures.hub import free_port

#: A minimal stand-in for the AWS CLI's `aws s3 sync` (used only where no real CLI is installed).
AWS_CLI_STANDIN = """#!{python}
import os, sys, boto3
args = sys.argv[1:]
assert args[:2] == ["s3", "sync"], args
args = args[2:]
endpoint, excludes, paths = None, [], []
while args:
    a = args.pop(0)
    if a == "--endpoint-url": endpoint = args.pop(0)
    elif a == "--exclude": excludes.append(args.pop(0))
    elif a.startswith("--"): pass
    else: paths.append(a)
src, dst = paths
s3 = boto3.client("s3", endpoint_url=endpoint)
import fnmatch
def skip(rel): return any(fnmatch.fnmatch(rel, p) for p in excludes)
if src.startswith("s3://"):
    bucket, _, prefix = src[5:].partition("/")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            rel = o["Key"][len(prefix):]
            if rel and not skip(rel):
                os.makedirs(os.path.dirname(os.path.join(dst, rel)) or dst, exist_ok=True)
                s3.download_file(bucket, o["Key"], os.path.join(dst, rel))
else:
    bucket, _, prefix = dst[5:].partition("/")
    for root, _, files in os.walk(src):
        for f in files:
            rel = os.path.relpath(os.path.join(root, f), src)
            if not skip(rel):
                s3.upload_file(os.path.join(root, f), bucket, prefix + rel)
"""


class FakeImds:
    """The parts of IMDSv2 the bootstrap uses: a session token and spot/instance-action."""

    def __init__(self):
        self.notice: dict | None = None
        self.token_requests = 0
        imds = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, body=b""):
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self):
                if self.path == "/latest/api/token" and self.headers.get(
                    "X-aws-ec2-metadata-token-ttl-seconds"
                ):
                    imds.token_requests += 1
                    return self._send(200, b"imds-session-token")
                self._send(400)

            def do_GET(self):
                if self.headers.get("X-aws-ec2-metadata-token") != "imds-session-token":
                    return self._send(401)  # IMDSv2 required
                if self.path == "/latest/meta-data/spot/instance-action" and imds.notice:
                    return self._send(200, json.dumps(imds.notice).encode())
                self._send(404)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class HubApiStandIn:
    """Answers the single-user server's start-up check of its hub (GET /hub/api/)."""

    def __init__(self):
        self.requests: list[str] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _answer(self):
                stand_in.requests.append(f"{self.command} {self.path}")
                body = b'{"version": "6.1.1"}' if self.path.rstrip("/") == "/hub/api" else b"{}"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-JupyterHub-Version", "6.1.1")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def aws_cli(tmp_path: Path) -> tuple[str, str]:
    """The AWS CLI for the bootstrap's S3 sync: the real one when installed, else a stand-in."""
    real = shutil.which("aws")
    if real:
        return real, "aws-cli"
    path = tmp_path / "aws"
    path.write_text(AWS_CLI_STANDIN.format(python=sys.executable))
    path.chmod(0o755)
    return str(path), "stand-in"


# ------------------------------------------------------------------ rendering


def test_env_file_round_trips_awkward_values(tmp_path):
    env = {"JUPYTERHUB_API_TOKEN": "abc'def\"$HOME`id`", "MULTI": "line1\nline2", "EMPTY": ""}
    f = tmp_path / "env"
    f.write_text(env_file_text(env))
    dump = "import os, json, sys; print(json.dumps({k: os.environ[k] for k in sys.argv[1:]}))"
    out = subprocess.run(
        [
            "bash",
            "-c",
            f'set -a; . "$0"; exec {sys.executable} -c "$1" {" ".join(env)}',
            str(f),
            dump,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out) == env


def test_script_is_valid_bash_and_token_only_in_env_file():
    spec = BootstrapSpec(
        env={"JUPYTERHUB_API_TOKEN": "tok-123456789"},
        args=("--debug",),
        s3_uri="s3://b/homes/alice/",
        home_storage="s3",
    )
    script = render_script(spec)
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    assert script.count("tok-123456789") == 1
    assert "set -x" not in script.replace("never add `set -x`", "")
    mime = render_user_data(spec, every_boot=True)
    assert "scripts-user, always" in mime and extract_script(mime) == script
    assert render_user_data(spec) == script


@pytest.mark.parametrize(
    "bad",
    [
        {"home_storage": "s3", "s3_uri": ""},
        {"home_storage": "efs", "efs_target": ""},
        {"home_storage": "nfs"},
        {"lab_spec": "/opt/wheels/hybridhub-0.1.0-py3-none-any.whl"},  # the hub's wheel, not the Lab's
        {"lab_spec": "hybridhub[aws]==0.1.0"},
    ],
)
def test_spec_validation(bad):
    with pytest.raises(ValueError):
        BootstrapSpec(env={}, **{"home_storage": "none", **bad})


@pytest.mark.parametrize(
    "spec",
    ["hybridhub-lab==0.1.0", "/opt/wheels/hybridhub_lab-0.1.0-py3-none-any.whl",
     "https://example.org/w/hybridhub_lab-0.1.0-py3-none-any.whl?sig=1", "hybridhub_lab @ file:///opt/w/lab.whl",
     "hybridhub_lab-0.1.0.tar.gz"],
)
def test_user_data_installs_only_the_lab_distribution(spec):
    script = render_script(BootstrapSpec(env={}, home_storage="none", lab_spec=spec))
    assert f"HH_LAB_SPEC={shlex.quote(spec)}" in script


# ------------------------------------------------------------------ a real run


async def test_user_data_brings_up_singleuser_with_s3_home_and_spot_notice(
    moto, ec2_factory, tmp_path
):
    """Launch on moto, take the user-data moto stored, run it here as cloud-init would."""
    s3 = moto.client("s3")
    s3.create_bucket(Bucket="lab-homes")
    s3.put_object(Bucket="lab-homes", Key="homes/alice/notes.ipynb", Body=b'{"cells": []}')
    s3.put_object(Bucket="lab-homes", Key="homes/alice/.cache/junk", Body=b"x")
    cli, cli_kind = aws_cli(tmp_path)
    imds = FakeImds()
    hub_api = HubApiStandIn()
    home, state = tmp_path / "home", tmp_path / "state"
    port = free_port()
    b = ec2_factory(
        "alice",
        "aws/trn1-spot",
        notebook_port=port,
        bind_ip="127.0.0.1",
        python_path=sys.executable,
        unix_user="",
        instance_home_dir=str(home),
        bootstrap_state_dir=str(state),
        home_storage="s3",
        home_s3_uri="s3://lab-homes/homes/{username}/",
        home_s3_endpoint_url=moto.direct_url,
        home_sync_command=cli,
        home_sync_interval=0,
        imds_url=imds.url,
        instance_spot_poll_seconds=0.2,
        args=["--ServerApp.allow_root=True"],
        server_ready_timeout=90,
        hub_connect_url=hub_api.url,
    )
    procs: list[subprocess.Popen] = []
    log_path = tmp_path / "cloud-init-output.log"

    async def boot_instance():
        """Play EC2: when the instance exists, run its user-data (minus the systemd hand-off)."""
        while not moto.instances():
            await asyncio.sleep(0.05)
        iid = moto.instances()[0]["InstanceId"]
        attr = moto.client("ec2").describe_instance_attribute(InstanceId=iid, Attribute="userData")
        script = tmp_path / "part-001"
        script.write_text(extract_script(base64.b64decode(attr["UserData"]["Value"]).decode()))
        script.chmod(0o700)
        env = {
            k: v for k, v in os.environ.items() if k.startswith("AWS_")
        }  # instance-role stand-in
        env.update(PATH=os.environ["PATH"], HH_FOREGROUND="1", LANG="C.UTF-8")
        procs.append(
            subprocess.Popen(
                ["bash", str(script)],
                env=env,
                stdout=open(log_path, "wb"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )

    booter = asyncio.ensure_future(boot_instance())
    try:
        host, got_port = await asyncio.wait_for(b.start(), 120)
        await booter
        assert (host, got_port) == ("127.0.0.1", port)
        # the server answers on its port under the hub-given prefix
        r = requests.get(f"http://127.0.0.1:{port}/user/alice/api", timeout=10)
        assert r.status_code == 200 and "version" in r.json()
        # ... with the environment the hub gave it, token included, from the root-only env file
        pid = int((state / "server.pid").read_text())
        environ = dict(
            kv.split("=", 1)
            for kv in Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
            if "=" in kv
        )
        assert environ["JUPYTERHUB_API_TOKEN"] == b.api_token
        assert environ["JUPYTERHUB_SERVICE_URL"] == f"http://127.0.0.1:{port}/user/alice/"
        assert environ["HYBRIDHUB_INSTANCE_TYPE"] == "trn1.2xlarge"
        assert environ["HOME"] == str(home)
        assert environ["JUPYTERHUB_API_URL"] == f"{hub_api.url}/hub/api"
        assert any(r.startswith("GET /hub/api") for r in hub_api.requests)  # it reached "its hub"
        assert oct((state / "server.env").stat().st_mode & 0o777) == "0o600"
        # the home came down from S3 (caches excluded)
        assert (home / "notes.ipynb").read_bytes() == b'{"cells": []}'
        assert not (home / ".cache" / "junk").exists()
        (home / "results.txt").write_text("trained")
        # the two-minute notice: the bootstrap syncs the home up and stops the server
        imds.notice = {"action": "terminate", "time": "2026-11-26T05:14:00Z"}
        procs[0].wait(timeout=60)
        out = log_path.read_text()
        assert "spot interruption notice" in out
        assert (
            s3.get_object(Bucket="lab-homes", Key="homes/alice/results.txt")["Body"].read()
            == b"trained"
        )
        assert imds.token_requests > 0
        assert b.api_token not in out  # the bootstrap's log (cloud-init-output.log) holds no token
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/user/alice/api", timeout=2)
        print(f"home synced with {cli_kind}")
    finally:
        booter.cancel()
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(10)
        imds.close()
        hub_api.close()
        await b.stop()
    assert moto.instances() == []
    _ = time
