"""
The ``fuzz``-marked long runs are deselected (not skipped) unless a ``-m`` expression was given, e.g. by
``tox -e fuzz`` (``pytest -m fuzz tests/fuzz``); their CI-sized twins, which carry no marker, always run.
"""

from __future__ import annotations

from typing import List

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    if config.getoption("markexpr", ""):
        return
    keep: List[pytest.Item] = []
    dropped: List[pytest.Item] = []
    for item in items:
        (dropped if item.get_closest_marker("fuzz") is not None else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
