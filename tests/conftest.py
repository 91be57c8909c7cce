"""
Fixtures shared by every test layer; the shared constants (the next hop, the STUN servers) are in
``tests/addresses.py``.

Hypothesis does not reset function-scoped fixtures between the examples of one test, so property tests build
their Clocks inside the test body instead of taking this fixture.
"""

from __future__ import annotations

from typing import Iterator

import pytest
from twisted.internet.task import Clock


@pytest.fixture
def clock() -> Iterator[Clock]:
    """A Clock for the test; the test fails if it leaves a delayed call behind (a leaked timer)."""
    clock = Clock()
    yield clock
    left = clock.getDelayedCalls()
    assert left == [], f"the test left {len(left)} delayed call(s) on its Clock"
