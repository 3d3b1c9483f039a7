"""Accelerator utilisation where it is produced: sampled in the server, reported to the portal.

Sources, tried in order (``HYBRIDHUB_UTILISATION_SOURCE`` names one and skips the others):

- ``simulated`` (the local backend sets it): a small JSON file the demo or a test writes,
  ``~/.hybridhub/utilisation.json``: ``{"utilisation": 80}`` for every device, or
  ``{"devices": [{"utilisation": 80, "memory_used_mb": 1024, "memory_total_mb": 81920}]}``;
  without the file the ``HYBRIDHUB_COUNT`` simulated devices sit idle (0 %);
- ``nvml``: NVIDIA GPUs through ``nvidia-ml-py`` (``pynvml``, imported only when tried; an
  optional dependency), only the GPUs ``CUDA_VISIBLE_DEVICES``/``NVIDIA_VISIBLE_DEVICES`` name;
- ``neuron``: Trainium/Inferentia through one report of ``neuron-monitor`` (its JSON
  document, read with a size and time bound); the instance is reported as one device, as the
  catalog counts the instance: the mean use of the NeuronCores its runtimes hold.

No source: nothing is reported, and the Lab says "utilisation unknown" (nothing is culled
for it).  :class:`Reporter` posts a sample every ``interval`` seconds with the server's own
token, obeys the portal's ``Retry-After`` and backs off while the portal is down.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

log = logging.getLogger("hybridhub_lab.sampler")
Device = dict[str, Any]
MIB = 1024 * 1024
#: Largest neuron-monitor report read (bytes) and longest wait for it (seconds).
NEURON_MAX_BYTES = 4 * MIB
NEURON_TIMEOUT = 10.0


class SimulatedSource:
    """Devices described by a JSON file (the local backend's simulated accelerators)."""

    name = "simulated"

    def __init__(self, path: Path, count: int):
        self.path = path
        self.count = count

    def sample(self) -> list[Device] | None:
        try:
            data = json.loads(self.path.read_text()[:65536])
        except FileNotFoundError:
            data = {}
        except (OSError, ValueError) as e:
            log.warning("hybridhub: cannot read %s (%s)", self.path, e)
            return None
        rows = data.get("devices") if isinstance(data, dict) else None
        if not isinstance(rows, list):
            rows = [{"utilisation": data.get("utilisation", 0) if isinstance(data, dict) else 0}] * self.count
        return [{"index": i, "utilisation": float(r.get("utilisation", 0)),
                 "memory_used_mb": float(r.get("memory_used_mb", 0)),
                 "memory_total_mb": float(r.get("memory_total_mb", 0))}
                for i, r in enumerate(rows[: self.count]) if isinstance(r, dict)]


def visible_gpus(env: dict[str, str]) -> list[str] | None:
    """The GPUs (indexes or UUIDs) this server may use, from the environment (None: all)."""
    for var in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
        raw = env.get(var, "").strip()
        if raw and raw not in ("all", "void", "none"):
            return [v.strip() for v in raw.split(",") if v.strip()]
    return None


class NvmlSource:
    """NVIDIA GPUs through NVML (``pynvml`` from nvidia-ml-py)."""

    name = "nvml"

    def __init__(self, nvml: Any, visible: list[str] | None):
        self.nvml = nvml
        self.visible = visible

    @classmethod
    def open(cls, env: dict[str, str]) -> NvmlSource | None:
        """The source, if pynvml imports and NVML initialises (None otherwise)."""
        try:
            import pynvml
        except ImportError:
            return None
        try:
            pynvml.nvmlInit()
        except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            log.info("hybridhub: NVML unavailable (%s)", type(e).__name__)
            return None
        return cls(pynvml, visible_gpus(env))

    def _handles(self) -> list[Any]:
        nvml = self.nvml
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        if self.visible is None:
            return handles
        by_uuid = {_text(nvml.nvmlDeviceGetUUID(h)): h for h in handles}
        return [by_uuid.get(v) if not v.isdigit() else handles[int(v)] if int(v) < len(handles) else None
                for v in self.visible]

    def sample(self) -> list[Device] | None:
        out = []
        for i, handle in enumerate(h for h in self._handles() if h is not None):
            rates = self.nvml.nvmlDeviceGetUtilizationRates(handle)
            memory = self.nvml.nvmlDeviceGetMemoryInfo(handle)
            out.append({"index": i, "utilisation": float(rates.gpu),
                        "memory_used_mb": round(memory.used / MIB, 1),
                        "memory_total_mb": round(memory.total / MIB, 1)})
        return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_neuron_report(report: dict[str, Any]) -> list[Device]:
    """neuron-monitor's JSON report as one device: the mean use of the NeuronCores the runtimes
    hold (0 % when no runtime runs), and the device memory they use ([] if no Neuron device)."""
    cores: list[float] = []
    used = 0
    for runtime in report.get("neuron_runtime_data") or []:
        body = runtime.get("report") or {}
        in_use = (body.get("neuroncore_counters") or {}).get("neuroncores_in_use") or {}
        cores += [float(c.get("neuroncore_utilization") or 0) for c in in_use.values()]
        used += int(((body.get("memory_used") or {}).get("neuron_runtime_used_bytes") or {})
                    .get("neuron_device") or 0)
    if not int((report.get("neuron_hardware_info") or {}).get("neuron_device_count") or 0):
        return []
    return [{"index": 0, "utilisation": round(sum(cores) / len(cores), 1) if cores else 0.0,
             "memory_used_mb": round(used / MIB, 1), "memory_total_mb": 0.0}]


class NeuronSource:
    """Trainium/Inferentia through one report of ``neuron-monitor`` (a bounded read)."""

    name = "neuron"

    def __init__(self, command: list[str]):
        self.command = command

    async def sample(self) -> list[Device] | None:
        proc = await asyncio.create_subprocess_exec(*self.command, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.DEVNULL, limit=NEURON_MAX_BYTES)
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), NEURON_TIMEOUT)
        except (TimeoutError, ValueError) as e:  # ValueError: a line over the limit
            log.warning("hybridhub: no neuron-monitor report (%s)", type(e).__name__)
            return None
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        try:
            return parse_neuron_report(json.loads(line))
        except (ValueError, TypeError, AttributeError) as e:
            log.warning("hybridhub: unreadable neuron-monitor report (%s)", type(e).__name__)
            return None


def find_source(env: dict[str, str], which=None) -> Any:
    """The first source that works here (see the module docstring), or None."""
    wanted = env.get("HYBRIDHUB_UTILISATION_SOURCE", "")
    count = int(env.get("HYBRIDHUB_COUNT") or 0)
    if wanted == "simulated":
        home = Path(env.get("HOME") or Path.home())
        return SimulatedSource(home / ".hybridhub" / "utilisation.json", count)
    if wanted in ("", "nvml"):
        nvml = NvmlSource.open(env)
        if nvml is not None:
            return nvml
    if wanted in ("", "neuron"):
        from shutil import which as find

        path = (which or find)("neuron-monitor")
        if path:
            return NeuronSource([path])
    return None


class Reporter:
    """Posts ``source``'s samples to the portal every ``interval`` seconds (module docstring)."""

    def __init__(self, source: Any, url: str, token: str, *, interval: float = 30.0, max_backoff: float = 300.0,
                 post: Callable[[dict[str, Any]], Awaitable[tuple[int, float]]] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.source = source
        self.url = url
        self._token = token
        self.interval = interval
        self.max_backoff = max_backoff
        self._post = post or self._post_http
        self.clock = clock
        self.failures = 0
        self.sent = 0
        self.last: list[Device] | None = None

    def __repr__(self) -> str:  # never show the token
        return f"Reporter({self.url!r})"

    async def _post_http(self, body: dict[str, Any]) -> tuple[int, float]:
        request = HTTPRequest(self.url, method="POST", body=json.dumps(body), request_timeout=10,
                              headers={"Authorization": f"token {self._token}",
                                       "Content-Type": "application/json"})
        try:
            response = await AsyncHTTPClient().fetch(request)
        except HTTPClientError as e:
            retry = (e.response.headers.get("Retry-After") if e.response is not None else None) or 0
            return e.code, float(retry)
        return response.code, 0.0

    async def once(self) -> float:
        """Sample and post once; returns the seconds to wait before the next time."""
        devices = self.source.sample()
        if asyncio.iscoroutine(devices):
            devices = await devices
        self.last = devices
        if devices is None:
            return self.interval
        try:
            code, retry_after = await self._post({"source": self.source.name, "devices": devices})
        except Exception as e:  # the portal is down or unreachable: back off
            code, retry_after = 599, 0.0
            log.info("hybridhub: utilisation report failed (%s)", type(e).__name__)
        if code == 200:
            self.failures, self.sent = 0, self.sent + 1
            return self.interval
        if code == 429:
            return max(self.interval, retry_after)
        if code == 409:  # the hub has not recorded this server's start yet: try again next time
            return self.interval
        self.failures += 1
        return min(self.interval * 2 ** self.failures, self.max_backoff)

    async def run(self) -> None:
        """Report until cancelled."""
        while True:
            try:
                wait = await self.once()
            except Exception:
                log.exception("hybridhub: utilisation sampling failed")
                wait = self.max_backoff
            await asyncio.sleep(wait)


def utilisation_url(portal_url: str, username: str, server_name: str) -> str:
    """The portal URL ``username``'s server ``server_name`` reports its utilisation to."""
    return (f"{portal_url.rstrip('/')}/api/users/{quote(username, safe='')}/utilisation"
            f"?server={quote(server_name, safe='')}")
