"""A backend's own offering fields: declared as a frozen dataclass, parsed from the catalog.

A backend names its schema in :attr:`hybridhub.backends.base.BackendMixin.offering_fields`::

    @dataclass(frozen=True)
    class SlurmFields:
        gres: str = field(metadata={"help": "GRES name:type", "pattern": r"^[\\w-]+:[\\w.-]+$"})
        partition: str | None = field(default=None, metadata={"help": "Slurm partition"})

Each dataclass field is a catalog key of the offering (``partition: gpu-h100``); one without a
default is required.  :func:`parse_fields` checks the keys the catalog left to the backend
(:attr:`hybridhub.catalog.Offering.backend_fields`) against the schema and raises
:class:`~hybridhub.catalog.CatalogError` naming ``<class>.offerings.<name>.<field>``.  Types: ``str``,
``bool``, ``int``, ``float`` (an int is accepted), ``list[str]``, ``dict``, each optionally ``| None``;
``metadata["pattern"]`` is a regular expression a string must match in full.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from hybridhub.catalog import CatalogError

if TYPE_CHECKING:
    from hybridhub.catalog import Offering

_SCALARS: dict[type, str] = {str: "a string", bool: "true or false", int: "an integer", float: "a number"}


@lru_cache(maxsize=64)
def _spec(schema: type) -> tuple[tuple[dataclasses.Field, Any, bool], ...]:
    """Each field of ``schema`` with its resolved type and whether it may be null (checked once)."""
    if not (dataclasses.is_dataclass(schema) and isinstance(schema, type)):
        raise TypeError(f"offering_fields must be a dataclass, got {schema!r}")
    hints = typing.get_type_hints(schema)
    spec = []
    for f in dataclasses.fields(schema):
        tp, args = hints[f.name], typing.get_args(hints[f.name])
        nullable = typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args
        if nullable:
            (tp,) = [a for a in args if a is not type(None)]
        spec.append((f, tp, nullable))
    return tuple(spec)


def _checked(value: Any, tp: Any, nullable: bool, key: str, pattern: str | None, what: str = "") -> Any:
    """``value`` as type ``tp``, or :class:`CatalogError` naming ``key``."""
    if value is None:
        if nullable:
            return None
        raise CatalogError(key, "must not be null")
    origin = typing.get_origin(tp) or tp
    if origin is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise CatalogError(key, f"must be a list of strings, got {value!r}")
        return tuple(value)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise CatalogError(key, f"must be a mapping, got {value!r}")
        return dict(value)
    ok = isinstance(value, tp) and (tp is bool or not isinstance(value, bool))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise CatalogError(key, f"must be {_SCALARS.get(tp, tp.__name__)}, got {value!r}")
    if pattern and not re.fullmatch(pattern, value):
        raise CatalogError(key, f"must match {pattern} ({what}), got {value!r}")
    return value


def parse_fields(schema: type | None, offering: Offering) -> Any:
    """``offering``'s backend fields as an instance of ``schema`` (None when the backend has none).

    Raises :class:`CatalogError` naming the key at fault: an undeclared key, a missing required
    one, or a value of the wrong type.
    """
    given = dict(offering.backend_fields)
    if schema is None:
        if given:
            raise CatalogError(offering.config_key(sorted(given)[0]),
                               f"unknown key; the {offering.backend!r} backend has no offering fields")
        return None
    spec = _spec(schema)
    unknown = set(given) - {f.name for f, _, _ in spec}
    if unknown:
        raise CatalogError(offering.config_key(sorted(unknown)[0]),
                           f"unknown key; the {offering.backend!r} backend's fields: {[f.name for f, _, _ in spec]}")
    values = {}
    for f, tp, nullable in spec:
        key = offering.config_key(f.name)
        if f.name in given:
            values[f.name] = _checked(given[f.name], tp, nullable, key, f.metadata.get("pattern"),
                                      f.metadata.get("help", ""))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise CatalogError(key, f"is required for the {offering.backend!r} backend")
    return schema(**values)

