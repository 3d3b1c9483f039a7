"""Sphinx configuration: the hand-written pages in docs/ plus a configuration reference generated
from the traits of the spawner and the backends (autodoc-traits).

Build (warnings are errors, as in CI's tests/test_docs.py)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import sys
from pathlib import Path

from traitlets import TraitType

# the checkout's package, also when it is not installed
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

project = "hybridhub"
author = "hybridhub contributors"
copyright = "hybridhub contributors"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "autodoc_traits",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "**/*.json", "Thumbs.db", ".DS_Store"]

# MyST (```{eval-rst} fences hold the autodoc directives); headings get anchors for in-page links.
myst_heading_anchors = 3

# autodoc: members in source order, type hints in the description, not the signature.
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# No network at build time: no intersphinx.  References to JupyterHub, traitlets or dockerspawner
# classes that are not documented here stay plain text instead of failing the build.
nitpicky = False

html_theme = "pydata_sphinx_theme"
html_title = "hybridhub"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
html_static_path: list[str] = []


# Help strings of inherited third-party traits that are plain text, not reStructuredText (their
# indented lists and code examples make docutils warn): shown as preformatted text instead.
# Keyed by the module of the class that defines the trait and the trait's name.
PLAIN_TEXT_HELP = {
    ("dockerspawner.dockerspawner", "cpu_limit"),
    ("dockerspawner.dockerspawner", "mem_limit"),
}


def _plain_text_help(app, what, name, obj, options, lines):
    if not isinstance(obj, TraitType) or obj.this_class is None:
        return
    if (obj.this_class.__module__, obj.name) in PLAIN_TEXT_HELP and lines:
        lines[:] = [".. code-block:: text", "", *(f"   {line}" if line else "" for line in lines), ""]


def setup(app):
    app.connect("autodoc-process-docstring", _plain_text_help)
