"""GPU discovery on output captured from a real GPU host (an NVIDIA H200, 2026-11-26).

`tests/data/nvidia-smi-1xh200-real.csv` is the verbatim output of
`nvidia-smi --query-gpu=index,uuid,name,memory.total --format=csv,noheader` on a lent H200 machine.
"""

from hybridhub.backends.inventory import offering_matches, parse_nvidia_smi_csv
from hybridhub.catalog import load_catalog
from tests.fixtures.docker import DATA


def test_real_h200_output_parses_and_matches_only_the_h200_offering():
    [gpu] = parse_nvidia_smi_csv((DATA / "nvidia-smi-1xh200-real.csv").read_text())
    assert gpu.index == 0
    assert gpu.uuid == "GPU-73ee7162-1344-5309-5ce6-26e3342f1762"
    assert gpu.model == "NVIDIA H200"
    assert gpu.memory_mib == 143771
    matches = [o.key for o in load_catalog().all_offerings() if offering_matches(o, gpu)]
    assert matches == ["enterprise/h200"]
