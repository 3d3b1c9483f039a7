"""What add_hybridhub tunes in the hub process for a lecture hall's load (docs/performance.md)."""

from __future__ import annotations

import sys

import pytest
from traitlets.config import Config

from hybridhub.hub.config import GIL_SWITCH_SECONDS, add_hybridhub


def test_the_hubs_gil_switch_interval_is_shortened_unless_told_not_to(tmp_path):
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)  # Python's default
        add_hybridhub(Config(), db_url=f"sqlite:///{tmp_path / 'a.sqlite'}", freeze_gc=False)
        assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_SECONDS) and GIL_SWITCH_SECONDS < 0.005
        sys.setswitchinterval(0.005)
        add_hybridhub(Config(), db_url=f"sqlite:///{tmp_path / 'b.sqlite'}", freeze_gc=False, switch_interval=0)
        assert sys.getswitchinterval() == pytest.approx(0.005)  # 0: Python's own is left
    finally:
        sys.setswitchinterval(before)
