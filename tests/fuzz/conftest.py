"""
The ``fuzz``-marked long runs are deselected (not skipped) unless a ``-m`` expression was given, e.g. by
``tox -e fuzz`` (``pytest -m fuzz tests/fuzz``); their CI-sized twins, which carry no marker, always run.

The long runs are exempt from the suite's 120 s per-test timeout (setup.cfg): 100,000 hypothesis examples
take minutes.  They get one second per ten examples instead (at least 20 minutes).
"""

from __future__ import annotations

from typing import List

import pytest

from .support import FUZZ_EXAMPLES

LONG_RUN_TIMEOUT = max(1200, FUZZ_EXAMPLES // 10)


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("fuzz") is not None:
            item.add_marker(pytest.mark.timeout(LONG_RUN_TIMEOUT))
    if config.getoption("markexpr", ""):
        return
    keep: List[pytest.Item] = []
    dropped: List[pytest.Item] = []
    for item in items:
        (dropped if item.get_closest_marker("fuzz") is not None else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
