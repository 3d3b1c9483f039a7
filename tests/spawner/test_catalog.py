"""The resource catalog: shipped defaults and start-up validation."""

import copy

import pytest

from hybridhub.backends import check_catalog
from hybridhub.catalog import DEFAULT_CATALOG, CatalogError, load_catalog


def test_default_catalog_has_three_classes_with_documented_offerings():
    cat = load_catalog()
    assert [rc.name for rc in cat.classes] == ["community", "enterprise", "aws"]
    assert [o.model for o in cat.get_class("community").offerings] == ["RTX 3090", "RTX 4090", "RTX 5090"]
    assert [o.model for o in cat.get_class("enterprise").offerings] == ["A100 80GB", "H100 80GB", "H200 141GB"]
    aws = {o.name: o for o in cat.get_class("aws").offerings}
    assert {k: v.price_per_hour for k, v in aws.items()} == {
        "trn1.2xlarge": 1.34,
        "trn1.32xlarge": 21.50,
        "inf2.xlarge": 0.76,
        "inf2.8xlarge": 1.97,
    }
    assert all(o.backend == "ec2" and o.backend_fields["instance_type"] == o.name for o in aws.values())
    # an H100 hour costs four RTX 4090 hours (TRESBillingWeights)
    assert cat.offering("enterprise", "h100").billing_weight == 4 * cat.offering("community", "rtx4090").billing_weight
    assert cat.get_class("community").trust == "untrusted"


def test_same_image_on_every_gpu_class():
    cat = load_catalog()
    images = {o.image for rc in ("community", "enterprise") for o in cat.get_class(rc).offerings}
    assert len(images) == 1


def test_backend_override_maps_everything_to_local():
    cat = load_catalog(backend_override="local")
    assert {o.backend for o in cat.all_offerings()} == {"local"}


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda c: c["community"]["offerings"]["rtx4090"].update(counts=[0]), "community.offerings.rtx4090.counts"),
        (
            lambda c: c["aws"]["offerings"]["inf2.xlarge"].update(price_per_hour="cheap"),
            "aws.offerings.inf2.xlarge.price_per_hour",
        ),
        (lambda c: c["enterprise"]["offerings"]["h100"].update(colour="red"), "enterprise.offerings.h100.colour"),
        (lambda c: c["enterprise"]["offerings"]["h100"].pop("max_hours"), "enterprise.offerings.h100.max_hours"),
        (lambda c: c["community"].update(trust="maybe"), "community.trust"),
        (
            lambda c: c["community"]["offerings"]["rtx3090"].update(backend="kubernetes"),
            "community.offerings.rtx3090.backend",
        ),
        (
            lambda c: c["aws"]["offerings"]["inf2.xlarge"].pop("instance_type"),
            "aws.offerings.inf2.xlarge.instance_type",
        ),
        (lambda c: c["enterprise"].update(offerings={}), "enterprise.offerings"),
    ],
)
def test_invalid_catalog_names_the_bad_key(mutate, key):
    cfg = copy.deepcopy(DEFAULT_CATALOG)
    mutate(cfg)
    with pytest.raises(CatalogError) as exc:
        check_catalog(load_catalog(cfg))  # the catalog's own keys, then each backend's
    assert exc.value.key == key
    assert key in str(exc.value)


def test_catalog_from_yaml_file(tmp_path):
    f = tmp_path / "catalog.yaml"
    f.write_text(
        "gpu:\n  display_name: Lab GPUs\n  backend: local\n  offerings:\n"
        "    l4: {model: L4, memory_gb: 24, counts: [1], price_per_hour: 0.8, max_hours: 4, groups: [lab-x]}\n"
    )
    cat = load_catalog(path=str(f))
    off = cat.offering("gpu", "l4")
    assert off.model == "L4" and off.groups == ("lab-x",)
    assert not off.allowed_for({"course-y"}) and off.allowed_for({"lab-x"})
    f.write_text("gpu: [not, a, mapping]\n")
    with pytest.raises(CatalogError, match="'gpu'"):
        load_catalog(path=str(f))
