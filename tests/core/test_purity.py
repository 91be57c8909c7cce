"""
The core is pure: every module under ``twisted_sipnat/core/`` (found by walking the directory, so a new module
is covered without editing this test), ``twisted_sipnat.errors`` and ``twisted_sipnat.settings`` import in a
process where ``twisted`` and ``zope`` cannot be imported at all.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import twisted_sipnat

PACKAGE = Path(twisted_sipnat.__file__).resolve().parent

PROGRAM = r"""
import importlib, importlib.abc, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("twisted", "zope"):
            raise ImportError("refused for the purity test: " + name)
        return None

sys.meta_path.insert(0, Refuse())
for name in sys.argv[1:]:
    importlib.import_module(name)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("twisted", "zope"))
assert not leaked, leaked
print("imported", len(sys.argv) - 1)
"""


def coreModules() -> list:
    names = []
    for path in sorted((PACKAGE / "core").rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(relative.parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def test_the_core_walk_finds_the_engine_and_its_parts() -> None:
    names = coreModules()
    for expected in ("twisted_sipnat.core.engine", "twisted_sipnat.core.events", "twisted_sipnat.core.flows",
                     "twisted_sipnat.core.resolution", "twisted_sipnat.core.transactions"):
        assert expected in names


def test_core_errors_and_settings_import_without_twisted() -> None:
    names = coreModules() + ["twisted_sipnat.errors", "twisted_sipnat.settings"]
    result = subprocess.run([sys.executable, "-c", PROGRAM, *names], capture_output=True, text=True,
                            cwd=str(PACKAGE.parent), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"imported {len(names)}"


def test_the_purity_check_would_notice_a_twisted_import() -> None:
    result = subprocess.run([sys.executable, "-c", PROGRAM, "twisted_sipnat.controller"], capture_output=True,
                            text=True, cwd=str(PACKAGE.parent), timeout=60)
    assert result.returncode != 0 and "refused for the purity test" in result.stderr
