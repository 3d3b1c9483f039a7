"""GPU pools: hosts (Docker Engines), their GPUs, their class and labels.

The inventory is configuration (``c.GpuInventory.hosts``); a host's GPUs are
listed inline or read from the CSV that ``nvidia-smi
--query-gpu=index,uuid,name,memory.total --format=csv,noheader`` prints on it.

A catalog offering maps to inventory GPUs by model name (see
:func:`offering_matches`): ``offering.extra["gpu_model"]`` (a name or a list
of names) when set, otherwise the offering's ``model``; the match is on
normalised name tokens, so the offering model ``"RTX 4090"`` matches
``"NVIDIA GeForce RTX 4090"`` and ``"H100 80GB"`` matches
``"NVIDIA H100 80GB HBM3"``.  A host only serves offerings of its own class
(``community`` or ``enterprise``) and, when the offering names a pool
(``extra["pool"]``) or host labels (``extra["host_labels"]``), only those.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import yaml
from traitlets import List, Unicode
from traitlets.config import Configurable

if TYPE_CHECKING:
    from hybridhub.catalog import Offering

HOST_CLASSES = ("community", "enterprise")

#: Words that say who made the card or its product line, not which card it is.
_VENDOR_WORDS = {"nvidia", "geforce", "tesla", "quadro", "amd", "radeon", "instinct"}
_MEMORY_TOKEN = re.compile(r"^(\d+)(gb|g)$")


class InventoryError(ValueError):
    """The inventory configuration or an nvidia-smi capture is invalid; ``key`` names the place."""

    def __init__(self, key: str, problem: str):
        self.key = key
        super().__init__(f"inventory {key}: {problem}")


@dataclass(frozen=True)
class Gpu:
    """One GPU on a host, as nvidia-smi reports it."""

    index: int
    uuid: str
    model: str
    memory_mib: int


@dataclass(frozen=True)
class Host:
    """A Docker Engine with GPUs, in one class (community or enterprise) and pool."""

    name: str
    url: str
    resource_class: str
    gpus: tuple[Gpu, ...]
    pool: str = ""
    labels: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    ip: str = "127.0.0.1"

    def gpus_for(self, offering: Offering) -> list[Gpu]:
        """The GPUs on this host that can serve ``offering`` (empty if the host cannot)."""
        if not host_serves(self, offering):
            return []
        return [g for g in self.gpus if offering_matches(offering, g)]


def parse_nvidia_smi_csv(text: str, *, source: str = "nvidia-smi") -> list[Gpu]:
    """Parse ``nvidia-smi --query-gpu=index,uuid,name,memory.total --format=csv[,noheader]``.

    A header line (``index, uuid, name, memory.total [MiB]``) is skipped when present;
    memory is read in MiB (``81559 MiB``; a bare number is taken as MiB).
    """
    gpus: list[Gpu] = []
    rows = csv.reader(io.StringIO(text), skipinitialspace=True)
    for lineno, row in enumerate(rows, start=1):
        if not row or not "".join(row).strip():
            continue
        if row[0].strip().lower() == "index":
            continue
        if len(row) != 4:
            raise InventoryError(
                f"{source}:{lineno}", f"expected 4 fields, got {len(row)}: {row!r}"
            )
        index, uuid, name, memory = (c.strip() for c in row)
        if not index.isdigit():
            raise InventoryError(f"{source}:{lineno}", f"index must be an integer, got {index!r}")
        if not uuid.startswith(("GPU-", "MIG-")):
            raise InventoryError(f"{source}:{lineno}", f"not a GPU UUID: {uuid!r}")
        m = re.fullmatch(r"(\d+)(?:\s*MiB)?", memory)
        if not m:
            raise InventoryError(
                f"{source}:{lineno}", f"memory.total must be like '81559 MiB', got {memory!r}"
            )
        gpus.append(Gpu(index=int(index), uuid=uuid, model=name, memory_mib=int(m.group(1))))
    return gpus


def model_tokens(name: str) -> set[str]:
    """Normalised tokens of a GPU model name: lower case, vendor words dropped.

    ``"NVIDIA GeForce RTX 4090"`` -> ``{"rtx", "4090"}``; ``"A100-SXM4-80GB"`` ->
    ``{"a100", "sxm4", "80gb"}``; ``"RTX4090"`` -> ``{"rtx", "4090"}``.
    """
    tokens: set[str] = set()
    for tok in re.split(r"[^a-z0-9]+", name.lower()):
        if not tok or tok in _VENDOR_WORDS:
            continue
        mem = _MEMORY_TOKEN.match(tok)
        if mem:
            tokens.add(f"{mem.group(1)}gb")
            continue
        # split letter/digit runs so "rtx4090" and "rtx 4090" agree; keep "h100", "a100"
        parts = re.findall(r"[a-z]+|\d+", tok)
        if len(parts) == 2 and len(parts[0]) >= 3 and parts[1].isdigit():
            tokens.update(parts)
        else:
            tokens.add(tok)
    return tokens


def _names_for(offering: Offering) -> list[str]:
    wanted = offering.extra.get("gpu_model")
    if wanted is None:
        return [offering.model]
    return [wanted] if isinstance(wanted, str) else [str(w) for w in wanted]


def offering_matches(offering: Offering, gpu: Gpu) -> bool:
    """Whether ``gpu`` is the accelerator model ``offering`` sells.

    Every token of the wanted name must be in the GPU's name, except a memory
    size (``80GB``) that the GPU's name leaves out: that one must agree with the
    GPU's memory within 10 %.
    """
    have = model_tokens(gpu.model)
    for name in _names_for(offering):
        want = model_tokens(name)
        if not want:
            continue
        missing = want - have
        ok = True
        for tok in missing:
            mem = _MEMORY_TOKEN.match(tok)
            if not mem or abs(gpu.memory_mib / 1024 - int(mem.group(1))) > 0.1 * int(mem.group(1)):
                ok = False
                break
        if ok:
            return True
    return False


def host_serves(host: Host, offering: Offering) -> bool:
    """Whether ``host`` may run ``offering``: same class, pool and labels."""
    if host.resource_class != offering.resource_class:
        return False
    pool = offering.extra.get("pool")
    if pool and host.pool != pool:
        return False
    wanted_labels = offering.extra.get("host_labels") or {}
    return all(host.labels.get(k) == v for k, v in wanted_labels.items())


def _host_ip(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme in ("tcp", "http", "https", "ssh") and parsed.hostname:
        return parsed.hostname
    return "127.0.0.1"


def _gpu_from_dict(d: Any, where: str, index: int) -> Gpu:
    if not isinstance(d, dict):
        raise InventoryError(where, "must be a mapping with uuid, model and memory_mib")
    for key in ("uuid", "model"):
        if not isinstance(d.get(key), str) or not d[key]:
            raise InventoryError(f"{where}.{key}", "is required (a non-empty string)")
    memory = d.get("memory_mib", 0)
    if isinstance(memory, bool) or not isinstance(memory, int) or memory < 0:
        raise InventoryError(
            f"{where}.memory_mib", f"must be a non-negative integer, got {memory!r}"
        )
    return Gpu(
        index=int(d.get("index", index)), uuid=d["uuid"], model=d["model"], memory_mib=memory
    )


def host_from_config(cfg: Any, position: int) -> Host:
    """Build and validate one :class:`Host` from a ``GpuInventory.hosts`` entry."""
    where = f"hosts[{position}]"
    if not isinstance(cfg, dict):
        raise InventoryError(where, "must be a mapping")
    allowed = {
        "name",
        "url",
        "class",
        "pool",
        "labels",
        "gpus",
        "nvidia_smi",
        "nvidia_smi_file",
        "ip",
    }
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise InventoryError(f"{where}.{unknown[0]}", f"unknown key; allowed: {sorted(allowed)}")
    name = cfg.get("name")
    if not isinstance(name, str) or not name:
        raise InventoryError(f"{where}.name", "is required (a non-empty string)")
    where = f"hosts[{name}]"
    url = cfg.get("url")
    if not isinstance(url, str) or "://" not in url:
        raise InventoryError(
            f"{where}.url", f"must be a Docker Engine URL (unix:// or tcp://), got {url!r}"
        )
    cls = cfg.get("class")
    if cls not in HOST_CLASSES:
        raise InventoryError(f"{where}.class", f"must be one of {list(HOST_CLASSES)}, got {cls!r}")
    labels = cfg.get("labels", {})
    if not isinstance(labels, dict):
        raise InventoryError(f"{where}.labels", "must be a mapping")
    gpus: list[Gpu] = []
    if "gpus" in cfg:
        if not isinstance(cfg["gpus"], list):
            raise InventoryError(f"{where}.gpus", "must be a list")
        gpus += [_gpu_from_dict(g, f"{where}.gpus[{i}]", i) for i, g in enumerate(cfg["gpus"])]
    if cfg.get("nvidia_smi"):
        gpus += parse_nvidia_smi_csv(str(cfg["nvidia_smi"]), source=f"{where}.nvidia_smi")
    if cfg.get("nvidia_smi_file"):
        path = Path(str(cfg["nvidia_smi_file"]))
        try:
            text = path.read_text()
        except OSError as e:
            raise InventoryError(f"{where}.nvidia_smi_file", f"cannot read {path}: {e}") from e
        gpus += parse_nvidia_smi_csv(text, source=str(path))
    uuids = [g.uuid for g in gpus]
    if len(set(uuids)) != len(uuids):
        raise InventoryError(f"{where}.gpus", "a GPU UUID is listed twice")
    return Host(
        name=name,
        url=url,
        resource_class=cls,
        gpus=tuple(gpus),
        pool=str(cfg.get("pool") or cls),
        labels={str(k): str(v) for k, v in labels.items()},
        ip=str(cfg.get("ip") or _host_ip(url)),
    )


class GpuInventory(Configurable):
    """The GPU hosts the ``docker`` backend may place servers on."""

    hosts = List(
        help="""GPU hosts, one mapping each:

        - ``name``: unique host name (used in the database and in logs)
        - ``url``: its Docker Engine, e.g. ``unix:///var/run/docker.sock`` or ``tcp://gpu7:2376``
        - ``class``: ``community`` or ``enterprise`` (must equal the offering's class)
        - ``pool``: pool name (default: the class); offerings may ask for one with ``extra.pool``
        - ``labels``: free-form labels; offerings may require some with ``extra.host_labels``
        - ``ip``: address where the hub reaches servers on this host (default: the URL's host,
          127.0.0.1 for unix sockets)
        - ``gpus``: list of ``{uuid, model, memory_mib}``, and/or
        - ``nvidia_smi`` / ``nvidia_smi_file``: the text (or a file holding the output) of
          ``nvidia-smi --query-gpu=index,uuid,name,memory.total --format=csv,noheader``
        """,
    ).tag(config=True)

    hosts_file = Unicode(
        "",
        help="YAML file with more hosts (a list of mappings shaped like `hosts` entries, or a "
        "mapping with a `hosts` list); read on every placement, so hosts can be added "
        "without restarting the hub.",
    ).tag(config=True)

    def host_configs(self) -> list[Any]:
        """``hosts`` followed by the entries of ``hosts_file``."""
        configs = list(self.hosts)
        if self.hosts_file:
            try:
                loaded = yaml.safe_load(Path(self.hosts_file).read_text()) or []
            except (OSError, yaml.YAMLError) as e:
                raise InventoryError("hosts_file", f"cannot read {self.hosts_file}: {e}") from e
            if isinstance(loaded, dict):
                loaded = loaded.get("hosts", [])
            if not isinstance(loaded, list):
                raise InventoryError("hosts_file", "must hold a list of hosts")
            configs += loaded
        return configs

    def all_hosts(self) -> list[Host]:
        """Every configured host, validated; raises :class:`InventoryError` naming a bad key."""
        hosts = [host_from_config(cfg, i) for i, cfg in enumerate(self.host_configs())]
        names = [h.name for h in hosts]
        if len(set(names)) != len(names):
            raise InventoryError("hosts", "host names must be unique")
        seen: dict[str, str] = {}
        for h in hosts:
            for g in h.gpus:
                if g.uuid in seen:
                    raise InventoryError(
                        f"hosts[{h.name}].gpus", f"GPU {g.uuid} is also on {seen[g.uuid]}"
                    )
                seen[g.uuid] = h.name
        return hosts

    def host(self, name: str) -> Host | None:
        """The host called ``name``, or None."""
        return next((h for h in self.all_hosts() if h.name == name), None)

    def candidates(self, offering: Offering) -> list[tuple[Host, list[Gpu]]]:
        """Hosts that can serve ``offering``, each with its matching GPUs."""
        out = []
        for h in self.all_hosts():
            gpus = h.gpus_for(offering)
            if gpus:
                out.append((h, gpus))
        return out
