"""The resource catalog: hardware classes and the offerings inside them.

The catalog is configuration (a dict on ``HybridSpawner.catalog`` or a YAML
file named by ``HybridSpawner.catalog_file``).  :func:`load_catalog` validates
it and raises :class:`CatalogError` naming the offending key, so a bad config
stops the hub at start-up instead of failing a student's launch later.  The catalog knows
only the keys every offering has; any other key of an offering belongs to its backend and is
kept, unparsed, in :attr:`Offering.backend_fields`.  The backend declares and parses those in its
own schema (:attr:`hybridhub.backends.base.BackendMixin.offering_fields`), checked for every
offering when the hub starts (:func:`hybridhub.backends.check_catalog`).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

TRUST_LEVELS = ("trusted", "untrusted")
#: A backend's name: an entry point of the ``hybridhub.backends`` group (see :mod:`hybridhub.backends`).
BACKEND_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")

#: Default notebook image: the same on every class, so a workflow moves unchanged.
DEFAULT_IMAGE = "quay.io/jupyter/pytorch-notebook:2025-06-02"
#: The AWS Neuron SDK image for Trainium/Inferentia (same Jupyter stack, Neuron runtime).
NEURON_IMAGE = "public.ecr.aws/neuron/pytorch-training-neuronx:2.5.1-neuronx-py310-sdk2.21.0-ubuntu22.04"


class CatalogError(ValueError):
    """The catalog configuration is invalid; ``key`` is the dotted path at fault."""

    def __init__(self, key: str, problem: str):
        self.key = key
        super().__init__(f"catalog key {key!r}: {problem}")


@dataclass(frozen=True)
class Offering:
    """One thing a user can pick: an accelerator model in a class, with its limits and price."""

    resource_class: str
    name: str
    model: str
    memory_gb: float
    counts: tuple[int, ...]
    price_per_hour: float
    backend: str
    image: str
    max_hours: float
    groups: tuple[str, ...] = ()
    min_hours: float | None = None  # None: HybridSpawner.min_launch_hours
    hours_step: float | None = None  # None: HybridSpawner.hours_resolution
    billing_weight: float = 1.0
    trust: str = "trusted"
    cpu_limit: float | None = None
    mem_limit: str | None = None
    #: Minutes its accelerators may stay idle before the idle culler stops the server (None: never;
    #: :mod:`hybridhub.accounting.utilisation`).
    idle_minutes: float | None = None
    #: Free-form settings for the backend (``extra: {rack: b7}``), checked by the backend if at all.
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    #: The offering's keys that the catalog does not know, as written: the backend's own fields,
    #: which it parses with its schema (:meth:`hybridhub.backends.base.BackendMixin.fields_of`).
    backend_fields: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> str:
        """Stable identifier ``class/name`` used in forms, the database and state."""
        return f"{self.resource_class}/{self.name}"

    def config_key(self, field: str) -> str:
        """The catalog key of one of this offering's settings, as :class:`CatalogError` names it."""
        return f"{self.resource_class}.offerings.{self.name}.{field}"

    def allowed_for(self, groups: set[str]) -> bool:
        """Whether a user in ``groups`` may launch this offering (empty list: everyone)."""
        return not self.groups or bool(set(self.groups) & groups)


@dataclass(frozen=True)
class ResourceClass:
    """A family of hardware (community GPU, enterprise GPU, AWS Neuron)."""

    name: str
    display_name: str
    description: str
    trust: str
    offerings: tuple[Offering, ...]


@dataclass(frozen=True)
class Catalog:
    """All classes, in display order."""

    classes: tuple[ResourceClass, ...]

    def offering(self, class_name: str, name: str) -> Offering | None:
        """The offering ``name`` in ``class_name``, or None."""
        for rc in self.classes:
            if rc.name == class_name:
                for off in rc.offerings:
                    if off.name == name:
                        return off
        return None

    def by_key(self, key: str) -> Offering | None:
        """The offering whose :attr:`Offering.key` is ``key``."""
        cls, _, name = key.partition("/")
        return self.offering(cls, name)

    def get_class(self, name: str) -> ResourceClass | None:
        """The class called ``name``, or None."""
        return next((rc for rc in self.classes if rc.name == name), None)

    def all_offerings(self) -> list[Offering]:
        """Every offering of every class."""
        return [off for rc in self.classes for off in rc.offerings]


def _gpu(model: str, memory: int, price: float, weight: float, counts=(1, 2, 4), hours=8):
    return {
        "model": model,
        "memory_gb": memory,
        "counts": list(counts),
        "price_per_hour": price,
        "billing_weight": weight,
        "max_hours": hours,
    }


def _neuron(itype: str, model: str, memory: int, price: float, weight: float, hours=8):
    return {
        "model": model,
        "memory_gb": memory,
        "counts": [1],
        "price_per_hour": price,
        "billing_weight": weight,
        "max_hours": hours,
        "instance_type": itype,
        "image": NEURON_IMAGE,
    }


#: The shipped catalog.  GPU prices are our documented choice (community prices
#: follow public marketplace rates, enterprise prices common on-demand cloud
#: rates); AWS prices are on-demand us-east-1.  Billing weights follow Slurm's
#: TRESBillingWeights: one H100 hour costs as much as four RTX 4090 hours.
DEFAULT_CATALOG: dict[str, Any] = {
    "community": {
        "display_name": "Community GPU",
        "description": "Consumer cards on volunteer-run nodes: prototyping and small inference.",
        "trust": "untrusted",
        "backend": "docker",
        "idle_minutes": 60,
        "offerings": {
            "rtx3090": _gpu("RTX 3090", 24, 0.22, 0.5, counts=(1, 2)),
            "rtx4090": _gpu("RTX 4090", 24, 0.35, 1.0, counts=(1, 2)),
            "rtx5090": _gpu("RTX 5090", 32, 0.65, 1.5, counts=(1, 2)),
        },
    },
    "enterprise": {
        "display_name": "Enterprise GPU",
        "description": "Data-centre GPUs on managed hosts: large training runs.",
        "trust": "trusted",
        "backend": "docker",
        "idle_minutes": 30,
        "offerings": {
            "a100": _gpu("A100 80GB", 80, 1.80, 3.0, counts=(1, 2, 4, 8), hours=24),
            "h100": _gpu("H100 80GB", 80, 2.50, 4.0, counts=(1, 2, 4, 8), hours=24),
            "h200": _gpu("H200 141GB", 141, 3.50, 5.0, counts=(1, 2, 4, 8), hours=24),
        },
    },
    "aws": {
        "display_name": "AWS Trainium / Inferentia",
        "description": "EC2 trn1/inf2 instances with the AWS Neuron SDK: cost-efficient training and inference.",
        "trust": "trusted",
        "backend": "ec2",
        "idle_minutes": 30,
        "offerings": {
            "trn1.2xlarge": _neuron("trn1.2xlarge", "Trainium (1 chip)", 32, 1.34, 1.0),
            "trn1.32xlarge": _neuron("trn1.32xlarge", "Trainium (16 chips)", 512, 21.50, 16.0, hours=24),
            "inf2.xlarge": _neuron("inf2.xlarge", "Inferentia2 (1 chip)", 32, 0.76, 0.5),
            "inf2.8xlarge": _neuron("inf2.8xlarge", "Inferentia2 (1 chip, 32 vCPU)", 32, 1.97, 1.0),
        },
    },
}

_CLASS_KEYS = {"display_name", "description", "trust", "backend", "image", "offerings", "groups", "idle_minutes"}
#: Longest ``idle_minutes`` (a week).
MAX_IDLE_MINUTES = 7 * 24 * 60
#: The keys every offering has; the others are its backend's (:attr:`Offering.backend_fields`).
_OFFERING_KEYS = {
    "model", "memory_gb", "counts", "price_per_hour", "backend", "image", "max_hours", "groups",
    "min_hours", "hours_step", "billing_weight", "trust", "cpu_limit", "mem_limit", "extra", "idle_minutes",
}


def _number(value: Any, key: str, *, minimum: float = 0, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CatalogError(key, f"must be a number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        raise CatalogError(key, f"must be {'>' if strict else '>='} {minimum}, got {value!r}")
    return float(value)


def _str_list(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CatalogError(key, f"must be a list of strings, got {value!r}")
    return tuple(value)


def _idle_minutes(value: Any, key: str) -> float | None:
    """``idle_minutes``: None (never) or a number of minutes above 0, at most a week."""
    if value is None:
        return None
    minutes = _number(value, key, strict=True)
    if minutes > MAX_IDLE_MINUTES:
        raise CatalogError(key, f"must be at most {MAX_IDLE_MINUTES} (a week), got {value!r}")
    return minutes


def _offering(cls_name: str, cls_cfg: dict, name: str, cfg: Any, image: str) -> Offering:
    where = f"{cls_name}.offerings.{name}"
    if not isinstance(cfg, dict):
        raise CatalogError(where, "must be a mapping")
    for required in ("model", "counts", "price_per_hour", "max_hours"):
        if required not in cfg:
            raise CatalogError(f"{where}.{required}", "is required")
    if not isinstance(cfg["model"], str) or not cfg["model"]:
        raise CatalogError(f"{where}.model", "must be a non-empty string")
    counts = cfg["counts"]
    if (
        not isinstance(counts, list)
        or not counts
        or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in counts)
    ):
        raise CatalogError(f"{where}.counts", f"must be a non-empty list of positive integers, got {counts!r}")
    backend = cfg.get("backend", cls_cfg.get("backend", "local"))
    if not isinstance(backend, str) or not BACKEND_NAME.match(backend):
        raise CatalogError(f"{where}.backend", f"must be a backend's name ({BACKEND_NAME.pattern}), got {backend!r}")
    trust = cfg.get("trust", cls_cfg.get("trust", "trusted"))
    if trust not in TRUST_LEVELS:
        raise CatalogError(f"{where}.trust", f"must be one of {list(TRUST_LEVELS)}, got {trust!r}")
    extra = cfg.get("extra", {})
    if not isinstance(extra, dict):
        raise CatalogError(f"{where}.extra", "must be a mapping")
    return Offering(
        resource_class=cls_name,
        name=name,
        model=cfg["model"],
        memory_gb=_number(cfg.get("memory_gb", 0), f"{where}.memory_gb"),
        counts=tuple(sorted(set(counts))),
        price_per_hour=_number(cfg["price_per_hour"], f"{where}.price_per_hour"),
        backend=backend,
        image=str(cfg.get("image", image)),
        max_hours=_number(cfg["max_hours"], f"{where}.max_hours", strict=True),
        groups=_str_list(cfg.get("groups", cls_cfg.get("groups", [])), f"{where}.groups"),
        min_hours=None if cfg.get("min_hours") is None else _number(
            cfg["min_hours"], f"{where}.min_hours", strict=True),
        hours_step=None if cfg.get("hours_step") is None else _number(
            cfg["hours_step"], f"{where}.hours_step"),
        billing_weight=_number(cfg.get("billing_weight", 1.0), f"{where}.billing_weight", strict=True),
        trust=trust,
        cpu_limit=(
            None if cfg.get("cpu_limit") is None else _number(cfg["cpu_limit"], f"{where}.cpu_limit", strict=True)
        ),
        mem_limit=None if cfg.get("mem_limit") is None else str(cfg["mem_limit"]),
        idle_minutes=_idle_minutes(cfg.get("idle_minutes", cls_cfg.get("idle_minutes")), (
            f"{where}.idle_minutes" if "idle_minutes" in cfg else f"{cls_name}.idle_minutes")),
        extra=dict(extra),
        backend_fields={k: copy.deepcopy(v) for k, v in cfg.items() if k not in _OFFERING_KEYS},
    )


def load_catalog(
    config: dict[str, Any] | None = None,
    *,
    path: str | None = None,
    backend_override: str | None = None,
    default_image: str = DEFAULT_IMAGE,
) -> Catalog:
    """Validate catalog configuration and build a :class:`Catalog`.

    ``config`` is a mapping of class name to class settings (see
    :data:`DEFAULT_CATALOG`); ``path`` names a YAML file with the same shape and
    wins over ``config``.  ``backend_override`` maps every offering to one
    backend (the embedded demo maps everything to ``local``) and drops the
    fields of the backends it replaces.
    """
    if path:
        try:
            config = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as e:
            raise CatalogError("catalog_file", f"cannot read {path}: {e}") from e
    if config is None:
        config = copy.deepcopy(DEFAULT_CATALOG)
    if not isinstance(config, dict) or not config:
        raise CatalogError("catalog", "must be a non-empty mapping of class name to class settings")
    classes = []
    for cls_name, cls_cfg in config.items():
        if not isinstance(cls_cfg, dict):
            raise CatalogError(cls_name, "must be a mapping")
        if "/" in cls_name:
            raise CatalogError(cls_name, "class names may not contain '/'")
        unknown = set(cls_cfg) - _CLASS_KEYS
        if unknown:
            raise CatalogError(f"{cls_name}.{sorted(unknown)[0]}", f"unknown key; allowed: {sorted(_CLASS_KEYS)}")
        offerings_cfg = cls_cfg.get("offerings")
        if not isinstance(offerings_cfg, dict) or not offerings_cfg:
            raise CatalogError(f"{cls_name}.offerings", "must be a non-empty mapping")
        trust = cls_cfg.get("trust", "trusted")
        if trust not in TRUST_LEVELS:
            raise CatalogError(f"{cls_name}.trust", f"must be one of {list(TRUST_LEVELS)}, got {trust!r}")
        image = cls_cfg.get("image", default_image)
        offerings = []
        for name, off_cfg in offerings_cfg.items():
            if backend_override and isinstance(off_cfg, dict):
                off_cfg = {k: v for k, v in off_cfg.items() if k in _OFFERING_KEYS} | {"backend": backend_override}
            offerings.append(_offering(cls_name, cls_cfg, str(name), off_cfg, image))
        classes.append(
            ResourceClass(
                name=cls_name,
                display_name=str(cls_cfg.get("display_name", cls_name)),
                description=str(cls_cfg.get("description", "")),
                trust=trust,
                offerings=tuple(offerings),
            )
        )
    return Catalog(classes=tuple(classes))
