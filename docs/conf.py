"""Sphinx configuration for twisted_sipnat (built with ``sphinx-build -W -b html docs OUT`` in tox and CI)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from twisted_sipnat._version import __version__  # noqa: E402

project = "twisted_sipnat"
author = "the twisted_sipnat authors"
copyright = "the twisted_sipnat authors"
version = release = __version__

# Built-in extensions only: the docs build offline, with no Graphviz or PlantUML (the sequence diagram is an
# SVG committed next to its source, docs/diagrams/sequence.py).
extensions = ["sphinx.ext.autodoc", "sphinx.ext.viewcode"]

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "description"
# Names from Twisted and zope that autodoc meets in signatures; without intersphinx (no network) they stay text.
nitpicky = False

exclude_patterns = ["_build", "diagrams/*.py"]
html_theme = "alabaster"
html_static_path: list[str] = []
