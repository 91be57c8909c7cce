"""
Check that every ``module.name`` the architecture page cites exists: ``python docs/check_names.py``.

The names are the double-backquoted dotted names relative to ``twisted_sipnat`` (``core.engine.Engine.receive``)
and the full ``twisted_sipnat.…`` ones; each is imported as the longest module prefix, then looked up attribute by
attribute.  Exits 1 and lists the missing ones, so a rename that leaves the page behind is caught.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from typing import Any, List, Set

ROOT = Path(__file__).resolve().parents[1]
PAGES = [Path(__file__).with_name("architecture.rst")]
_RELATIVE = re.compile(
    r"``((?:core|service|driver|names|discovery|protocols|errors|controller|sockets|tap|settings)\.[A-Za-z_.]+)``"
)
_FULL = re.compile(r"twisted_sipnat\.([A-Za-z_][A-Za-z_.]*[A-Za-z_])")


def cited(text: str) -> Set[str]:
    return set(_RELATIVE.findall(text)) | set(_FULL.findall(text))


def exists(name: str) -> bool:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module("twisted_sipnat." + ".".join(parts[:i]))
        except ImportError:
            continue
        for attribute in parts[i:]:
            if not hasattr(obj, attribute):
                return False
            obj = getattr(obj, attribute)
        return True
    return False


def main() -> int:
    sys.path.insert(0, str(ROOT))
    missing: List[str] = []
    count = 0
    for page in PAGES:
        names = cited(page.read_text(encoding="utf-8"))
        count += len(names)
        missing += [f"{page.name}: {name}" for name in sorted(names) if not exists(name)]
    print(f"{count} names checked", *missing, sep="\n")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
