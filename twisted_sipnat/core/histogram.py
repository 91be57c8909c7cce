"""
A cumulative histogram with fixed bucket bounds, pure (no I/O, no clock): the keepalive round-trip times.

Why fixed bounds: an operator's dashboard adds up the buckets of many processes and many scrapes, which only
works when every process counts into the same bounds.  Why here rather than in the service layer: the engine
measures the round-trip time at the one place it knows it (the answer to a keepalive transaction, RFC 5626
§4.4.2), and it must not import anything that knows about Prometheus.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import List, Sequence, Tuple

__all__ = ["KEEPALIVE_RTT_BUCKETS", "Histogram"]

#: Upper bounds (seconds) of the keepalive round-trip buckets.  A STUN keepalive's round-trip time runs from the
#: first send to the answer, so retransmissions (RFC 8489 §6.2.1: up to 39.5 s with the default RTO) fall into
#: the upper buckets; ``+Inf`` is implied.
KEEPALIVE_RTT_BUCKETS: Tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0,
)


class Histogram:
    """
    Counts observations into buckets with the upper bounds ``bounds`` (ascending; ``+Inf`` implied), and keeps
    their sum.  :meth:`cumulative` gives the Prometheus view: for each bound, the observations ``<=`` it.
    """

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: Sequence[float] = KEEPALIVE_RTT_BUCKETS) -> None:
        bounds = tuple(float(b) for b in bounds)
        if list(bounds) != sorted(set(bounds)) or any(b != b or b == float("inf") for b in bounds):
            raise ValueError(f"bucket bounds must be finite and strictly ascending, not {bounds!r}")
        self.bounds = bounds
        #: Observations per bucket (not cumulative); the last one is ``+Inf``.
        self.counts: List[int] = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Count one observation (a negative one, from a clock that stepped back, counts as 0)."""
        value = max(0.0, float(value))
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> List[Tuple[float, int]]:
        """``[(bound, observations <= bound), ..., (inf, count)]``."""
        running = 0
        out: List[Tuple[float, int]] = []
        for bound, n in zip(self.bounds + (float("inf"),), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out
