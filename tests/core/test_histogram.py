"""The fixed-bucket histogram behind ``sipnat_keepalive_rtt_seconds``."""

from __future__ import annotations

from typing import List

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twisted_sipnat.core.histogram import KEEPALIVE_RTT_BUCKETS, Histogram


def test_observations_fall_into_the_first_bucket_whose_bound_holds_them() -> None:
    h = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 3.0):
        h.observe(value)
    assert h.cumulative() == [(0.1, 2), (1.0, 4), (float("inf"), 5)]
    assert h.count == 5
    assert h.sum == pytest.approx(4.65)


def test_a_negative_time_from_a_stepped_clock_counts_as_zero() -> None:
    h = Histogram((0.1,))
    h.observe(-5.0)
    assert h.cumulative() == [(0.1, 1), (float("inf"), 1)]
    assert h.sum == 0.0


@pytest.mark.parametrize("bounds", [(1.0, 0.5), (1.0, 1.0), (float("nan"),), (float("inf"),)])
def test_bounds_must_be_finite_and_ascending(bounds: tuple) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError):
        Histogram(bounds)


def test_the_default_bounds_reach_past_a_full_stun_transaction() -> None:
    # RFC 8489 §6.2.1: 39.5 s with the default RTO; an answer to the last retransmission is still counted finely.
    assert KEEPALIVE_RTT_BUCKETS[-1] >= 39.5


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=50))
def test_cumulative_counts_are_monotonic_and_end_with_the_count(values: List[float]) -> None:
    h = Histogram()
    for value in values:
        h.observe(value)
    counts = [n for _, n in h.cumulative()]
    assert counts == sorted(counts)
    assert counts[-1] == h.count == len(values)
    for bound, n in h.cumulative():
        assert n == sum(1 for v in values if v <= bound)
