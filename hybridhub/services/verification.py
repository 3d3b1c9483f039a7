"""Run a notebook again on trusted hardware and compare the outputs with the saved ones.

:class:`VerificationRunner` does one :class:`hybridhub.accounting.sessions.Verification`:

1. start the user's named server ``verify-<id>`` through the hub's REST API, with the
   chosen (trusted) offering, charged to the verification's group: the spawner admits
   and records it like any launch, so it costs what a launch costs and has its own
   provenance record;
2. read the notebook from the user's home through the server's contents API;
3. start a kernel in the server (kernels API) and, over the kernel's websocket, run
   ``nbclient`` *inside the server* on the notebook, with ``allow_errors`` so every
   cell runs; the executed copy is written to ``hybridhub-verify/<id>/<name>`` in the
   home (the user can open it);
4. read the executed copy back (contents API), compare (:func:`hybridhub.services.notebook_compare.compare_notebooks`),
   and store the report with the verification, next to the provenance of the session
   checked and of the run;
5. always stop the server, and delete it (the user's named servers are not cluttered with
   ``verify-<id>`` ones, nor their ``named_server_limit_per_user`` used up).

Only the hub's REST API and the server's own API are used, with the portal's service
token (scopes ``servers``, ``access:servers``, ``read:users``); the token is never
logged.  Paths are relative to the server's root folder (the home).
"""

from __future__ import annotations

import asyncio
import json
import logging
import posixpath
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from hybridhub.accounting.sessions import SessionLog, VerificationInfo
from hybridhub.hubapi import HubApi, HubApiError, JsonApi
from hybridhub.services.notebook_compare import Tolerance, compare_notebooks

log = logging.getLogger("hybridhub.verifier")

RESULT_DIR = "hybridhub-verify"

#: Runs in the verification server's kernel: execute the notebook with nbclient there.
KERNEL_CODE = """
import json as _j, os as _o, time as _t
import nbclient as _nbc, nbformat as _nbf
_p = _j.loads({params!r})
_nb = _nbf.read(_p["src"], as_version=4)
_t0 = _t.time()
_kw = dict(timeout=_p["cell_timeout"], allow_errors=True,
           resources={{"metadata": {{"path": _o.path.dirname(_o.path.abspath(_p["src"]))}}}})
if _p["kernel_name"]:
    _kw["kernel_name"] = _p["kernel_name"]
_nbc.NotebookClient(_nb, **_kw).execute()
_o.makedirs(_o.path.dirname(_p["dst"]), exist_ok=True)
_nbf.write(_nb, _p["dst"])
print(_j.dumps({{"seconds": round(_t.time() - _t0, 3), "nbclient": _nbc.__version__,
                 "kernel": _nb.metadata.get("kernelspec", {{}}).get("name")}}))
"""


class VerificationError(RuntimeError):
    """The verification could not be carried out (not: the outputs differ)."""


def normalize_notebook_path(path: str) -> str:
    """A notebook path relative to the home, or ValueError (absolute, ``..``, not .ipynb)."""
    text = (path or "").strip()
    if text.startswith("~/"):
        text = text[2:]
    if not text or text.startswith("/") or ".." in text.split("/"):
        raise ValueError(f"give a notebook path inside your home, got {path!r}")
    if not text.endswith(".ipynb"):
        raise ValueError(f"{path!r} is not a notebook (.ipynb)")
    return posixpath.normpath(text)


def result_path(verification_id: int, notebook: str) -> str:
    """Where the executed copy is written, relative to the home."""
    return f"{RESULT_DIR}/{verification_id}/{posixpath.basename(notebook)}"


async def start_and_wait(hub: HubApi, user: str, server: str, options: dict, timeout: float) -> dict:
    """Start the named server and wait until it is ready; its model."""
    try:
        await hub.start_server(user, server, options)
    except HubApiError as e:
        raise VerificationError(f"the hub refused to start {server}: {e.message}") from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        model = await hub.server(user, server)
        if model is None:
            raise VerificationError(f"{server} failed to start (see the hub's log)")
        if model.get("ready"):
            return model
        await asyncio.sleep(0.5)
    raise VerificationError(f"{server} was not ready within {timeout:g} s")


async def stop_and_wait(hub: HubApi, user: str, server: str, timeout: float = 60) -> None:
    """Stop the named server, wait until the hub has no record of it running; the hub then deletes it,
    so no ``verify-<id>`` server is left to count against the user's ``named_server_limit_per_user``."""
    if not await hub.stop_server(user, server, remove=True):
        raise VerificationError(f"the hub did not stop {server}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and await hub.server(user, server) is not None:
        await asyncio.sleep(0.2)


class ServerApi(JsonApi):
    """A single-user server's contents and kernels APIs, reached through the proxy."""

    def __init__(self, server_url: str, token: str, timeout: float = 60):
        super().__init__(server_url.rstrip("/") + "/api", token, timeout=timeout)

    async def notebook(self, path: str) -> dict:
        """The notebook at ``path`` (relative to the server's root) as nbformat JSON."""
        try:
            model = await self.call("GET", "/contents/" + quote(path) + "?type=notebook&content=1")
        except HubApiError as e:
            raise VerificationError(f"cannot read {path}: {e.message}") from None
        return model["content"]

    async def execute(self, code: str, timeout: float) -> dict[str, Any]:
        """Run ``code`` in a new kernel; ``{"stdout", "stderr", "error"}``; the kernel is removed."""
        kernel = await self.call("POST", "/kernels", {"name": "python3", "path": ""})
        try:
            return await self._run(kernel["id"], code, timeout)
        finally:
            try:
                await self.call("DELETE", f"/kernels/{kernel['id']}")
            except Exception as e:  # the server may already be stopping
                log.info("could not delete kernel %s: %s", kernel["id"], e)

    async def _run(self, kernel_id: str, code: str, timeout: float) -> dict[str, Any]:
        url = self.base_url.replace("http", "ws", 1) + f"/kernels/{kernel_id}/channels"
        ws = await websocket_connect(
            HTTPRequest(url, headers={"Authorization": f"token {self._token}"},
                        request_timeout=self.timeout),
            max_message_size=256 * 1024 * 1024,
        )
        msg_id = uuid.uuid4().hex
        ws.write_message(json.dumps(execute_request(code, msg_id)))
        out: dict[str, Any] = {"stdout": "", "stderr": "", "error": None}
        replied = idle = False
        deadline = time.monotonic() + timeout
        try:
            while not (replied and idle):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise VerificationError(f"the run did not finish within {timeout:g} s")
                raw = await asyncio.wait_for(ws.read_message(), left)
                if raw is None:
                    raise VerificationError("the kernel connection closed during the run")
                msg = json.loads(raw)
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind, content = msg.get("msg_type") or msg["header"]["msg_type"], msg["content"]
                if kind == "stream":
                    out[content["name"]] = out.get(content["name"], "") + content["text"]
                elif kind == "error":
                    out["error"] = f"{content['ename']}: {content['evalue']}"
                elif kind == "execute_reply":
                    replied = True
                elif kind == "status" and content.get("execution_state") == "idle":
                    idle = True
        except TimeoutError:
            raise VerificationError(f"the run did not finish within {timeout:g} s") from None
        finally:
            ws.close()
        return out


def execute_request(code: str, msg_id: str) -> dict[str, Any]:
    """A Jupyter messaging ``execute_request`` on the shell channel (JSON websocket protocol)."""
    return {
        "header": {
            "msg_id": msg_id, "msg_type": "execute_request", "username": "hybridhub-verifier",
            "session": uuid.uuid4().hex, "version": "5.3",
            "date": datetime.now(UTC).isoformat(),
        },
        "parent_header": {}, "metadata": {}, "buffers": [], "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": False,
                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
    }


class VerificationRunner:
    """Carry out verifications (see the module doc) against one hub."""

    def __init__(
        self,
        sessions: SessionLog,
        *,
        hub_api_url: str,
        proxy_url: str,
        token: str,
        hours: float = 1.0,
        start_timeout: float = 300,
        run_timeout: float = 1800,
        cell_timeout: float = 600,
        kernel_name: str = "",
    ):
        self.sessions = sessions
        self.hub = HubApi(hub_api_url, token)
        self.proxy_url = proxy_url.rstrip("/")
        self._token = token
        self.hours = hours
        self.start_timeout = start_timeout
        self.run_timeout = run_timeout
        self.cell_timeout = cell_timeout
        self.kernel_name = kernel_name

    def __repr__(self) -> str:
        return f"VerificationRunner({self.hub!r}, proxy={self.proxy_url!r})"

    def options(self, v: VerificationInfo, count: int = 1) -> dict[str, Any]:
        """The launch options of the verification server (charged to ``v.group``)."""
        cls, _, model = v.offering.partition("/")
        return {"class": cls, "model": model, "count": count, "hours": self.hours, "group": v.group}

    async def run(
        self, verification_id: int, tolerance: Tolerance | None = None, count: int = 1
    ) -> VerificationInfo:
        """Carry out one verification; its final state (passed, failed or error)."""
        v = self.sessions.verification(verification_id)
        if v is None:
            raise KeyError(verification_id)
        tolerance = tolerance or Tolerance()
        await asyncio.to_thread(self.sessions.update_verification, v.id, state="running")
        started = time.monotonic()
        state, message, report = "error", "", None
        try:
            report = await self._check(v, tolerance, count)
        except VerificationError as e:
            message = str(e)
        except Exception as e:
            log.exception("verification %s failed", v.id)
            message = f"{type(e).__name__}: {e}"
        finally:
            try:
                await stop_and_wait(self.hub, v.username, v.server_name)
            except Exception as e:
                log.warning("could not stop %s/%s: %s", v.username, v.server_name, e)
        if report is not None:
            state = "passed" if report["verdict"] == "passed" else "failed"
            differing = report["summary"]["differing"]
            message = "every compared cell matches" if state == "passed" else (
                f"cell(s) {', '.join(map(str, differing))} differ from the saved outputs"
            )
        return await self._finish(v, state, message, report, started)

    async def _check(self, v: VerificationInfo, tolerance: Tolerance, count: int) -> dict:
        """Start the server, run the notebook there, compare: the report."""
        model = await start_and_wait(self.hub, v.username, v.server_name, self.options(v, count),
                                     self.start_timeout)
        server = ServerApi(self.proxy_url + model["url"], self._token)
        original = await server.notebook(v.notebook)
        params = {"src": v.notebook, "dst": result_path(v.id, v.notebook),
                  "cell_timeout": self.cell_timeout, "kernel_name": self.kernel_name}
        ran = await server.execute(KERNEL_CODE.format(params=json.dumps(params)), self.run_timeout)
        if ran["error"]:
            raise VerificationError(f"nbclient failed in the server: {ran['error']}")
        executed = await server.notebook(params["dst"])
        report = compare_notebooks(original, executed, tolerance, notebook=v.notebook)
        report["executed_copy"] = params["dst"]
        report["nbclient"] = _last_json_line(ran["stdout"])
        return report

    async def _finish(self, v: VerificationInfo, state: str, message: str,
                      report: dict | None, started: float) -> VerificationInfo:
        run_session = await asyncio.to_thread(self._run_session_id, v)
        if report is not None:
            report["verification_id"] = v.id
            report["seconds"] = round(time.monotonic() - started, 1)
            report["checked_session"] = self._provenance(v.session_id)
            report["run_session"] = self._provenance(run_session)
            if (report["run_session"] or {}).get("trust") != "trusted":
                state, report["verdict"] = "error", "not verified"
                message = "the re-run did not run on trusted hardware, so it verifies nothing"
        return await asyncio.to_thread(
            self.sessions.update_verification, v.id, state=state, message=message,
            report=report, run_session_id=run_session,
        )

    def _run_session_id(self, v: VerificationInfo) -> int | None:
        rows = [r for r in self.sessions.sessions(v.username, limit=50)
                if r.server_name == v.server_name and r.started_at >= v.created_at]
        return rows[-1].id if rows else None

    def _provenance(self, session_id: int | None) -> dict | None:
        rec = self.sessions.get(session_id) if session_id else None
        if rec is None:
            return None
        keep = ("id", "offering", "accelerator", "trust", "backend", "host", "instance_id",
                "instance_type", "gpu_uuids", "image", "image_id", "started_at", "stopped_at",
                "end_reason")
        d = rec.as_dict()
        return {k: d[k] for k in keep}


def _last_json_line(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


#: The portal's own hub-token scopes a verification needs (and nothing more).
PORTAL_SCOPES = ("servers", "access:servers", "read:users")


def configure_verification(c: Any, *, proxy_url: Any, service_name: str = "hybridhub-portal") -> None:
    """Hub config for verifications run by the portal service ``service_name``.

    A role giving the portal :data:`PORTAL_SCOPES`, and ``HYBRIDHUB_PROXY_URL`` (a string, or a
    callable JupyterHub calls when it starts the service) in its environment so it reaches the
    servers.  Verifications run in named servers (``verify-<id>``): they need the site's
    ``c.JupyterHub.allow_named_servers = True``, which this leaves to the site.  Call after the
    portal's service entry exists.
    """
    role = {"name": f"{service_name}-verify", "services": [service_name], "scopes": list(PORTAL_SCOPES),
            "description": "Run notebooks again on trusted hardware to verify results"}
    c.JupyterHub.load_roles = [
        *[r for r in c.JupyterHub.get("load_roles", []) if r.get("name") != role["name"]], role,
    ]
    for service in c.JupyterHub.get("services", []):
        if service.get("name") == service_name:
            service.setdefault("environment", {})["HYBRIDHUB_PROXY_URL"] = proxy_url
