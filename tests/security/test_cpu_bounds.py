"""
CPU per datagram: the work spent on one request grows linearly with its size, so the largest UDP datagram
(64 KB, up to 16,000 attributes) cannot stall the reactor.  Measured as a ratio -- eight times the attributes
must cost under 24 times the time (quadratic work costs about 64) -- so the test does not depend on the
machine's speed, and best-of-five with the garbage collector off keeps a loaded machine's noise out.
"""

from __future__ import annotations

import gc
import time
from typing import Callable, List

from twisted_sipnat import stun
from twisted_sipnat.responder import BindingResponder, RateLimit


def bestOf(runs: int, work: Callable[[], object]) -> float:
    times: List[float] = []
    gc.disable()
    try:
        for _ in range(runs):
            start = time.perf_counter()
            work()
            times.append(time.perf_counter() - start)
    finally:
        gc.enable()
    return min(times)


def request(attributes: List[stun.Attribute]) -> bytes:
    return stun.Message(stun.BINDING, stun.REQUEST, None, attributes).encode(fingerprint=False)


def assertLinear(make: Callable[[int], bytes], count: int = 16000) -> None:
    responder = BindingResponder()
    small, large = make(count // 8), make(count)
    assert len(large) <= 65507  # it fits one UDP datagram
    tSmall = bestOf(5, lambda: responder.respond(small, ("192.0.2.1", 5060)))
    tLarge = bestOf(5, lambda: responder.respond(large, ("192.0.2.1", 5060)))
    assert tLarge < 24 * tSmall + 0.005, f"8x the attributes took {tLarge / tSmall:.1f}x the time ({tLarge:.3f} s)"


def test_many_distinct_unknown_comprehension_required_attributes() -> None:
    assertLinear(lambda n: request([stun.RawAttribute(0x4000 + i, b"") for i in range(n)]))


def test_unknown_attributes_mixed_with_unsupported_ones() -> None:
    def make(n: int) -> bytes:
        attributes: List[stun.Attribute] = [stun.RawAttribute(0x4000 + i, b"") for i in range(n // 2)]
        attributes += [stun.ResponsePort(5060)] * (n // 2)
        return request(attributes)

    assertLinear(make, count=10000)


def test_rate_limit_cost_does_not_grow_with_the_number_of_sources() -> None:
    """A flood from spoofed sources keeps the bucket table full and evicts one per request: each eviction must
    cost O(1), whatever ``maxSources`` is (forgetting the oldest of a plain dict scans its deleted slots)."""
    hosts = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(200_000)]

    def flood(maxSources: int) -> float:
        limit = RateLimit(20.0, 40, maxSources=maxSources)
        for i, host in enumerate(hosts[:maxSources]):  # fill the table first
            limit.allow(host, i * 1e-4)
        rest = hosts[maxSources : maxSources + 100_000]
        start = time.perf_counter()
        for i, host in enumerate(rest):
            limit.allow(host, 10.0 + i * 1e-4)
        return (time.perf_counter() - start) / len(rest)

    small, large = min(flood(1000) for _ in range(3)), min(flood(65536) for _ in range(3))
    assert large < 5 * small, f"{large * 1e6:.1f} us per request with 65,536 sources, {small * 1e6:.1f} with 1,000"
