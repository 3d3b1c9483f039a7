"""The Sphinx docs build without a warning, and the configuration reference is generated from the traits."""

from __future__ import annotations

import html
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# a few of HybridSpawner's own configurable traits whose help is plain prose (no reST markup)
REFERENCE_TRAITS = ("db_url", "default_hours", "min_launch_hours")


def _text(page: str) -> str:
    """The visible text of an HTML page, whitespace collapsed and Sphinx's smart quotes undone."""
    text = html.unescape(re.sub(r"<[^>]+>", " ", page))
    text = text.translate(str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'}))
    return " ".join(text.split())


def test_docs_build_without_warnings_and_reference_has_trait_help(tmp_path):
    from hybridhub.spawner import HybridSpawner

    out = tmp_path / "html"
    build = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "-d", str(tmp_path / "doctrees"),
         str(ROOT / "docs"), str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stdout[-2000:] + "\n" + build.stderr[-6000:]

    page = _text((out / "reference" / "spawner.html").read_text(encoding="utf-8"))
    traits = HybridSpawner.class_traits()
    for name in REFERENCE_TRAITS:
        help_text = " ".join(traits[name].help.split())
        assert help_text, f"HybridSpawner.{name} has no help string"
        assert f"c.HybridSpawner.{name}" in page, f"HybridSpawner.{name} is missing from the reference"
        assert help_text in page, f"the help of HybridSpawner.{name} is missing from the reference: {help_text!r}"
