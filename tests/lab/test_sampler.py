"""The server extension's utilisation sources and reporter (no hub, no accelerator).

NVML is a stand-in ``pynvml`` module injected where the sampler imports it; neuron-monitor
is a script printing a report recorded in its documented format
(``tests/data/neuron-monitor-trn1.32xlarge.json``).
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from hybridhub_lab import sampler
from hybridhub_lab.handlers import HybridhubLab, make_reporter
from hybridhub_lab.sampler import (
    NeuronSource,
    NvmlSource,
    Reporter,
    SimulatedSource,
    find_source,
    parse_neuron_report,
    utilisation_url,
)

NEURON_REPORT = Path(__file__).resolve().parents[1] / "data" / "neuron-monitor-trn1.32xlarge.json"
MIB = 1024 * 1024


def fake_pynvml(utils: list[int], fail_init: Exception | None = None) -> types.ModuleType:
    """A stand-in for nvidia-ml-py's ``pynvml`` with ``len(utils)`` GPUs GPU-0..GPU-n."""
    nvml = types.ModuleType("pynvml")

    def init():
        if fail_init is not None:
            raise fail_init

    nvml.nvmlInit = init
    nvml.nvmlDeviceGetCount = lambda: len(utils)
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i
    nvml.nvmlDeviceGetUUID = lambda h: f"GPU-{h}".encode()
    nvml.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=utils[h], memory=0)
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(
        used=(h + 1) * 1024 * MIB, total=81559 * MIB, free=0)
    return nvml


def test_nvml_reports_only_the_gpus_this_server_may_use(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([5, 97, 0, 40]))
    source = NvmlSource.open({"CUDA_VISIBLE_DEVICES": "GPU-1,GPU-3"})
    assert source is not None and source.name == "nvml"
    assert source.sample() == [
        {"index": 0, "utilisation": 97.0, "memory_used_mb": 2048.0, "memory_total_mb": 81559.0},
        {"index": 1, "utilisation": 40.0, "memory_used_mb": 4096.0, "memory_total_mb": 81559.0},
    ]
    assert [d["utilisation"] for d in NvmlSource.open({"NVIDIA_VISIBLE_DEVICES": "2"}).sample()] == [0.0]
    assert len(NvmlSource.open({"NVIDIA_VISIBLE_DEVICES": "all"}).sample()) == 4


def test_no_nvml_library_or_driver_is_no_source(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed: import fails
    assert NvmlSource.open({}) is None
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([1], fail_init=RuntimeError("no driver")))
    assert NvmlSource.open({}) is None
    assert find_source({"HYBRIDHUB_UTILISATION_SOURCE": "nvml"}) is None


def test_a_recorded_neuron_monitor_report_is_one_device():
    (device,) = parse_neuron_report(json.loads(NEURON_REPORT.read_text()))
    # four NeuronCores held by the runtime, two busy: (91.5 + 88.5 + 0 + 0) / 4
    assert device == {"index": 0, "utilisation": 45.0, "memory_used_mb": 4096.0, "memory_total_mb": 0.0}
    idle = json.loads(NEURON_REPORT.read_text()) | {"neuron_runtime_data": []}
    assert parse_neuron_report(idle)[0]["utilisation"] == 0.0  # no runtime: the chips sit idle
    assert parse_neuron_report({"neuron_hardware_info": {"neuron_device_count": 0}}) == []


def _script(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "neuron-monitor"
    path.write_text(f"#!{sys.executable}\nimport sys, time\n{body}\n")
    path.chmod(0o755)
    return [str(path)]


async def test_neuron_monitor_is_read_once_and_stopped(tmp_path):
    report = NEURON_REPORT.read_text().strip()
    command = _script(tmp_path, f"print({report!r}, flush=True)\ntime.sleep(600)")  # it reports forever
    (device,) = await NeuronSource(command).sample()
    assert device["utilisation"] == 45.0


async def test_a_silent_or_garbled_neuron_monitor_gives_no_sample(tmp_path, monkeypatch):
    monkeypatch.setattr(sampler, "NEURON_TIMEOUT", 0.5)
    assert await NeuronSource(_script(tmp_path, "time.sleep(600)")).sample() is None
    assert await NeuronSource(_script(tmp_path, "print('not json', flush=True)")).sample() is None
    monkeypatch.setattr(sampler, "NEURON_MAX_BYTES", 1024)
    assert await NeuronSource(_script(tmp_path, "print('x' * 5000, flush=True)")).sample() is None


def test_neuron_monitor_on_the_path_is_found(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    found = find_source({}, which=lambda name: f"/opt/aws/neuron/bin/{name}")
    assert isinstance(found, NeuronSource) and found.command == ["/opt/aws/neuron/bin/neuron-monitor"]
    assert find_source({}, which=lambda name: None) is None  # no source: utilisation unknown


def test_the_simulated_source_reads_the_file_the_demo_writes(tmp_path):
    env = {"HYBRIDHUB_UTILISATION_SOURCE": "simulated", "HOME": str(tmp_path), "HYBRIDHUB_COUNT": "2"}
    source = find_source(env)
    assert isinstance(source, SimulatedSource)
    assert [d["utilisation"] for d in source.sample()] == [0.0, 0.0]  # no file: the devices sit idle
    (tmp_path / ".hybridhub").mkdir()
    source.path.write_text(json.dumps({"utilisation": 80}))
    assert [d["utilisation"] for d in source.sample()] == [80.0, 80.0]
    source.path.write_text(json.dumps({"devices": [{"utilisation": 3, "memory_used_mb": 10,
                                                    "memory_total_mb": 24576}] * 3}))
    assert source.sample() == [{"index": i, "utilisation": 3.0, "memory_used_mb": 10.0,
                                "memory_total_mb": 24576.0} for i in range(2)]  # at most HYBRIDHUB_COUNT
    source.path.write_text("{broken")
    assert source.sample() is None


class _Source:
    name = "simulated"

    def __init__(self, devices):
        self.devices = devices

    def sample(self):
        return self.devices


async def test_the_reporter_obeys_retry_after_and_backs_off():
    answers = [(409, 0.0), (200, 0.0), (429, 45.0), (503, 0.0), (503, 0.0), (200, 0.0)]
    posted = []

    async def post(body):
        posted.append(body)
        return answers.pop(0)

    reporter = Reporter(_Source([{"index": 0, "utilisation": 1.0}]), "http://portal/x", "secret-token",
                        interval=30, max_backoff=100, post=post)
    assert "secret-token" not in repr(reporter)
    # 409: the session is not recorded yet (a server reports as it starts): no back-off
    assert [await reporter.once() for _ in range(6)] == [30, 30, 45, 60, 100, 30]
    assert posted[0] == {"source": "simulated", "devices": [{"index": 0, "utilisation": 1.0}]}
    quiet = Reporter(_Source(None), "http://portal/x", "t", interval=30, post=post)
    assert await quiet.once() == 30 and len(posted) == 6  # no sample: nothing posted


def test_the_reporter_needs_a_hub_and_a_source(tmp_path, monkeypatch):
    config = HybridhubLab(portal_url="http://hub/services/hybridhub-portal/", utilisation_interval=2)
    env = {"JUPYTERHUB_API_TOKEN": "t", "JUPYTERHUB_USER": "a b", "JUPYTERHUB_SERVER_NAME": "gpu",
           "HYBRIDHUB_UTILISATION_SOURCE": "simulated", "HOME": str(tmp_path), "HYBRIDHUB_COUNT": "1"}
    reporter = make_reporter(config, env)
    assert reporter.interval == 2 and reporter.url == utilisation_url(config.portal_url, "a b", "gpu")
    assert reporter.url == "http://hub/services/hybridhub-portal/api/users/a%20b/utilisation?server=gpu"
    assert make_reporter(config, {**env, "JUPYTERHUB_API_TOKEN": ""}) is None
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setenv("PATH", str(tmp_path))  # no neuron-monitor either
    assert make_reporter(config, {**env, "HYBRIDHUB_UTILISATION_SOURCE": ""}) is None


@pytest.mark.parametrize("interval", ["0.5", ""])
def test_the_interval_comes_from_the_environment(monkeypatch, interval):
    monkeypatch.setenv("HYBRIDHUB_UTILISATION_INTERVAL", interval)
    assert HybridhubLab().utilisation_interval == (float(interval) if interval else 30.0)
