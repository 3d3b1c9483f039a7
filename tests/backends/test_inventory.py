"""GPU inventory: nvidia-smi CSV parsing on captured output, model matching, validation."""

from __future__ import annotations

import pytest
from traitlets.config import Config

from hybridhub.backends.inventory import (
    GpuInventory,
    InventoryError,
    model_tokens,
    offering_matches,
    parse_nvidia_smi_csv,
)
from hybridhub.catalog import load_catalog
from tests.fixtures.docker import DATA


def catalog():
    gpu = {"counts": [1, 2], "price_per_hour": 1.0, "max_hours": 8, "backend": "docker"}
    return load_catalog(
        {
            "community": {
                "offerings": {
                    "rtx4090": {"model": "RTX 4090", **gpu},
                    "rtx3090": {"model": "RTX 3090", **gpu},
                    "exact": {
                        "model": "Any 24 GB card",
                        **gpu,
                        "extra": {"gpu_model": "NVIDIA GeForce RTX 4090"},
                    },
                }
            },
            "enterprise": {
                "offerings": {
                    "h100": {"model": "H100 80GB", **gpu},
                    "a100": {"model": "A100 80GB", **gpu},
                    "h100-nvl": {
                        "model": "H100 80GB",
                        **gpu,
                        "extra": {"pool": "nvl", "host_labels": {"rack": "b"}},
                    },
                }
            },
        }
    )


def test_parse_8x_h100_capture():
    gpus = parse_nvidia_smi_csv((DATA / "nvidia-smi-8xh100.csv").read_text())
    assert [g.index for g in gpus] == list(range(8))
    assert {g.model for g in gpus} == {"NVIDIA H100 80GB HBM3"}
    assert {g.memory_mib for g in gpus} == {81559}
    assert len({g.uuid for g in gpus}) == 8 and all(g.uuid.startswith("GPU-") for g in gpus)


def test_parse_2x_rtx4090_capture():
    gpus = parse_nvidia_smi_csv((DATA / "nvidia-smi-2xrtx4090.csv").read_text())
    assert [(g.index, g.model, g.memory_mib) for g in gpus] == [
        (0, "NVIDIA GeForce RTX 4090", 24564),
        (1, "NVIDIA GeForce RTX 4090", 24564),
    ]


def test_parse_skips_header_line():
    gpus = parse_nvidia_smi_csv((DATA / "nvidia-smi-4xa100-header.csv").read_text())
    assert len(gpus) == 4 and gpus[0].model == "NVIDIA A100-SXM4-80GB"


@pytest.mark.parametrize(
    "line, problem",
    [
        ("0, GPU-x, NVIDIA H100", "expected 4 fields"),
        ("a, GPU-x, NVIDIA H100, 81559 MiB", "index must be an integer"),
        ("0, 1234, NVIDIA H100, 81559 MiB", "not a GPU UUID"),
        ("0, GPU-x, NVIDIA H100, [N/A]", "memory.total"),
    ],
)
def test_parse_rejects_bad_lines_naming_the_line(line, problem):
    with pytest.raises(InventoryError, match=problem) as e:
        parse_nvidia_smi_csv("0, GPU-ok, NVIDIA H100, 1 MiB\n" + line, source="cap.csv")
    assert e.value.key == "cap.csv:2"


def test_model_tokens_normalise_vendor_and_spacing():
    assert model_tokens("NVIDIA GeForce RTX 4090") == model_tokens("rtx4090") == {"rtx", "4090"}
    assert model_tokens("NVIDIA H100 80GB HBM3") >= {"h100", "80gb"}


@pytest.mark.parametrize(
    "offering, gpu_name, memory, expected",
    [
        ("community/rtx4090", "NVIDIA GeForce RTX 4090", 24564, True),
        ("community/rtx4090", "NVIDIA GeForce RTX 3090", 24576, False),
        ("community/rtx3090", "NVIDIA GeForce RTX 3090", 24576, True),
        ("enterprise/h100", "NVIDIA H100 80GB HBM3", 81559, True),
        ("enterprise/h100", "NVIDIA H100 PCIe", 81559, True),  # size from memory.total
        ("enterprise/h100", "NVIDIA H100 NVL", 95830, False),  # 94 GB card is not "80GB"
        ("enterprise/h100", "NVIDIA A100-SXM4-80GB", 81920, False),
        ("enterprise/a100", "NVIDIA A100-SXM4-80GB", 81920, True),
        ("enterprise/a100", "NVIDIA A100-SXM4-40GB", 40960, False),
        ("community/exact", "NVIDIA GeForce RTX 4090", 24564, True),
        ("community/exact", "NVIDIA GeForce RTX 3090", 24576, False),
    ],
)
def test_offering_matches_inventory_model(offering, gpu_name, memory, expected):
    from hybridhub.backends.inventory import Gpu

    off = catalog().by_key(offering)
    assert offering_matches(off, Gpu(0, "GPU-1", gpu_name, memory)) is expected


def inventory(hosts) -> GpuInventory:
    c = Config()
    c.GpuInventory.hosts = hosts
    return GpuInventory(config=c)


def test_candidates_follow_class_pool_and_labels():
    inv = inventory(
        [
            {
                "name": "c1",
                "url": "tcp://c1:2376",
                "class": "community",
                "nvidia_smi_file": str(DATA / "nvidia-smi-2xrtx4090.csv"),
            },
            {
                "name": "e1",
                "url": "tcp://e1:2376",
                "class": "enterprise",
                "nvidia_smi_file": str(DATA / "nvidia-smi-8xh100.csv"),
            },
            {
                "name": "e2",
                "url": "unix:///run/e2.sock",
                "class": "enterprise",
                "pool": "nvl",
                "labels": {"rack": "b"},
                "nvidia_smi": (DATA / "nvidia-smi-8xh100.csv")
                .read_text()
                .replace("GPU-", "GPU-e2"),
            },
        ]
    )
    cat = catalog()
    names = lambda key: [h.name for h, _ in inv.candidates(cat.by_key(key))]  # noqa: E731
    assert names("community/rtx4090") == ["c1"]
    assert names("enterprise/h100") == ["e1", "e2"]
    assert names("enterprise/h100-nvl") == ["e2"]
    assert names("enterprise/a100") == []
    hosts = {h.name: h for h in inv.all_hosts()}
    assert hosts["e1"].ip == "e1" and hosts["e2"].ip == "127.0.0.1"
    assert hosts["e1"].pool == "enterprise"


@pytest.mark.parametrize(
    "host, key",
    [
        ({"url": "unix:///x", "class": "community"}, "hosts[0].name"),
        ({"name": "a", "url": "x", "class": "community"}, "hosts[a].url"),
        ({"name": "a", "url": "unix:///x", "class": "gold"}, "hosts[a].class"),
        ({"name": "a", "url": "unix:///x", "class": "community", "gpu": []}, "hosts[0].gpu"),
        (
            {"name": "a", "url": "unix:///x", "class": "community", "gpus": [{"uuid": "GPU-1"}]},
            "hosts[a].gpus[0].model",
        ),
        (
            {"name": "a", "url": "unix:///x", "class": "community", "nvidia_smi_file": "/nope.csv"},
            "hosts[a].nvidia_smi_file",
        ),
    ],
)
def test_bad_host_config_names_the_key(host, key):
    with pytest.raises(InventoryError) as e:
        inventory([host]).all_hosts()
    assert e.value.key == key


def test_duplicate_names_and_gpus_are_refused():
    h = {
        "name": "a",
        "url": "unix:///x",
        "class": "community",
        "gpus": [{"uuid": "GPU-1", "model": "RTX 4090", "memory_mib": 24564}],
    }
    with pytest.raises(InventoryError, match="unique"):
        inventory([h, h]).all_hosts()
    with pytest.raises(InventoryError, match="also on a"):
        inventory([h, {**h, "name": "b"}]).all_hosts()


def test_hosts_file_yaml(tmp_path):
    f = tmp_path / "hosts.yaml"
    f.write_text(
        "hosts:\n"
        "  - name: gpu7\n    url: tcp://gpu7.example.edu:2376\n    class: enterprise\n"
        f"    nvidia_smi_file: {DATA / 'nvidia-smi-8xh100.csv'}\n"
    )
    c = Config()
    c.GpuInventory.hosts_file = str(f)
    (host,) = GpuInventory(config=c).all_hosts()
    assert host.name == "gpu7" and len(host.gpus) == 8 and host.ip == "gpu7.example.edu"


def test_every_trait_has_help():
    for name, trait in GpuInventory.class_traits(config=True).items():
        assert trait.help, name
