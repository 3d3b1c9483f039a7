"""Backends are plug-ins, found through the ``hybridhub.backends`` entry-point group.

A backend is a JupyterHub ``Spawner`` subclass that also carries
:class:`hybridhub.backends.base.BackendMixin`, the contract it implements.  The shipped
backends register in ``pyproject.toml`` exactly as a site's own package does::

    [project.entry-points."hybridhub.backends"]
    lab-cluster = "mysite.backend:LabClusterBackend"

and a catalog offering names one with ``backend: lab-cluster``.  ``HybridSpawner.backend_classes``
adds or overrides names from the hub's configuration.  Nothing outside a backend names a
backend: the spawner, the hub wiring and the catalog ask this registry, then call hooks.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from traitlets.utils.importstring import import_item

from hybridhub.catalog import CatalogError

if TYPE_CHECKING:
    from hybridhub.catalog import Catalog, Offering

#: The entry-point group backends register in.
ENTRY_POINT_GROUP = "hybridhub.backends"


@lru_cache(maxsize=1)
def registered() -> dict[str, str]:
    """Backend name -> ``module:Class`` of every installed backend (nothing is imported).

    Read once per process: scanning the installed distributions costs tens of milliseconds, and the
    picker asks for every offering's backend on the hub's loop.
    """
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


@lru_cache(maxsize=64)
def _load(target: str) -> type:
    module, _, attr = target.partition(":")
    return import_item(f"{module}.{attr}" if attr else module)


#: Backend classes that passed :func:`check_contract` (checked once each).
_checked: set[type] = set()


def backend_class(name: str, configured: Mapping[str, str | type] | None = None, *, key: str = "backend") -> type:
    """The class implementing backend ``name``: ``configured`` first, then the entry points.

    Raises :class:`CatalogError` naming ``key`` when no backend has that name, when its package
    cannot be imported (say, an extra that is not installed), or when it breaks the contract.
    """
    target = (configured or {}).get(name) or registered().get(name)
    if isinstance(target, type) and target in _checked:
        return target
    if target is None:
        known = sorted({*registered(), *(configured or {})})
        raise CatalogError(key, f"no backend named {name!r}; installed: {known}")
    if isinstance(target, str):
        try:
            target = _load(target)
        except ImportError as e:
            raise CatalogError(key, f"backend {name!r} cannot be imported ({e}); "
                                    f"is its package (or hybridhub's [{name}] extra) installed?") from e
        if target in _checked:
            return target
    check_contract(name, target, key)
    _checked.add(target)
    return target


def check_contract(name: str, cls: object, key: str = "backend") -> None:
    """Refuse a backend class that is not a Spawner with :class:`BackendMixin` and its own start/poll/stop."""
    from jupyterhub.spawner import Spawner

    from hybridhub.backends.base import REQUIRED_HOOKS, BackendMixin

    if not (isinstance(cls, type) and issubclass(cls, Spawner) and issubclass(cls, BackendMixin)):
        raise CatalogError(key, f"backend {name!r} ({cls!r}) must subclass jupyterhub.spawner.Spawner "
                                "and hybridhub.backends.base.BackendMixin")
    missing = [hook for hook in REQUIRED_HOOKS if getattr(cls, hook) is getattr(Spawner, hook)]
    if missing:
        raise CatalogError(key, f"backend {name!r} ({cls.__qualname__}) does not implement {', '.join(missing)}")


def check_offering(offering: Offering, configured: Mapping[str, str | type] | None = None) -> None:
    """The offering's backend exists, its fields parse with the backend's schema and the backend accepts
    the offering (each names the key at fault)."""
    cls = backend_class(offering.backend, configured, key=offering.config_key("backend"))
    cls.fields_of(offering)
    cls.check_offering(offering)


def check_catalog(catalog: Catalog, configured: Mapping[str, str | type] | None = None) -> Catalog:
    """:func:`check_offering` for every offering of ``catalog``; returns the catalog."""
    for offering in catalog.all_offerings():
        check_offering(offering, configured)
    return catalog
