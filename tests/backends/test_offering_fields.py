"""Each backend declares the schema of its own offering fields; the catalog names none of them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest
from jupyterhub.spawner import SimpleLocalProcessSpawner

from hybridhub.backends import check_catalog
from hybridhub.backends.base import BackendMixin
from hybridhub.catalog import CatalogError, Offering, load_catalog


@dataclass(frozen=True)
class RackFields:
    """A site backend's own keys."""

    rack: str = field(metadata={"help": "the rack's name", "pattern": r"[a-z][0-9]+"})
    slots: int = field(default=1, metadata={"help": "servers per machine"})
    weight: float | None = field(default=None, metadata={"help": "scheduling weight"})


class RackBackend(BackendMixin, SimpleLocalProcessSpawner):
    """Servers in a named rack (declares fields; nothing in hybridhub knows them)."""

    offering_fields = RackFields


SITE = {"lab-rack": RackBackend}


def rack_catalog(**fields) -> dict:
    return {"lab": {"backend": "lab-rack", "offerings": {"rtx4090": {
        "model": "RTX 4090", "counts": [1], "price_per_hour": 0.35, "max_hours": 4, **fields}}}}


def test_offering_carries_no_backend_fields():
    names = {f.name for f in dataclasses.fields(Offering)}
    assert not names & {"instance_type", "spot", "partition", "gres"}
    assert not hasattr(Offering, "instance_type")


def test_a_site_backend_reads_its_own_parsed_fields():
    off = check_catalog(load_catalog(rack_catalog(rack="b7", weight=2)), SITE).by_key("lab/rtx4090")
    assert RackBackend.fields_of(off) == RackFields(rack="b7", slots=1, weight=2.0)


@pytest.mark.parametrize("fields, key, problem", [
    ({"rack": 7}, "rack", "must be a string"),
    ({"rack": "rack seven"}, "rack", "must match"),
    ({}, "rack", "is required"),
    ({"rack": "b7", "slots": "two"}, "slots", "must be an integer"),
    ({"rack": "b7", "slots": True}, "slots", "must be an integer"),
    ({"rack": "b7", "colour": "red"}, "colour", "unknown key"),
])
def test_a_bad_field_is_named_with_its_catalog_key(fields, key, problem):
    with pytest.raises(CatalogError) as exc:
        check_catalog(load_catalog(rack_catalog(**fields)), SITE)
    assert exc.value.key == f"lab.offerings.rtx4090.{key}"
    assert problem in str(exc.value)


def test_a_backend_without_a_schema_refuses_unknown_keys():
    cfg = {"gpu": {"backend": "local", "offerings": {"l4": {
        "model": "L4", "counts": [1], "price_per_hour": 0.8, "max_hours": 4, "gres": "gpu:l4"}}}}
    with pytest.raises(CatalogError) as exc:
        check_catalog(load_catalog(cfg))
    assert exc.value.key == "gpu.offerings.l4.gres"


def test_ec2_and_slurm_declare_their_fields():
    from hybridhub.backends.ec2 import Ec2Backend, Ec2Fields
    from hybridhub.backends.slurm import SlurmBackend, SlurmFields

    off = load_catalog().by_key("aws/trn1.2xlarge")
    assert Ec2Backend.fields_of(off) == Ec2Fields(instance_type="trn1.2xlarge", spot=False)
    assert Ec2Backend.offering_detail(off) == "trn1.2xlarge"
    slurm = load_catalog({"e": {"backend": "slurm", "offerings": {"h100": {
        "model": "H100", "counts": [1], "price_per_hour": 2.5, "max_hours": 8, "gres": "gpu:h100"}}}})
    assert SlurmBackend.fields_of(slurm.by_key("e/h100")) == SlurmFields(gres="gpu:h100", partition=None)


def test_backend_override_drops_the_replaced_backends_fields():
    cat = check_catalog(load_catalog(backend_override="local"))
    assert all(not o.backend_fields for o in cat.all_offerings())
