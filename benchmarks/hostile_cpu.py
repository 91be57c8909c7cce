"""
CPU per hostile datagram: the work spent on one request must grow linearly with its size, so the largest UDP
datagram (64 KB, up to 16,000 attributes) cannot stall the reactor, and a spoofed-source flood must cost the
rate limiter the same per request whatever its table size.  Printed as ratios measured in one run, so the
machine's speed does not matter: 8x the attributes should cost about 8x (quadratic work costs about 64x).

    python benchmarks/hostile_cpu.py

(These were once timed assertions in the test suite; timings belong here.  The fixes they guard are in
``stun.Message.unknownComprehensionRequired``, the responder's unsupported-attribute check and
``responder.RateLimit``'s O(1) eviction.)
"""

from __future__ import annotations

import gc
import time
from typing import Callable, List

import _common  # noqa: F401  (puts the repository on sys.path)

from twisted_sipnat import stun
from twisted_sipnat.core.responder import BindingResponder, RateLimit


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


def attributeGrowth(name: str, make: Callable[[int], bytes], count: int = 16000) -> None:
    responder = BindingResponder()
    small, large = make(count // 8), make(count)
    tSmall = bestOf(5, lambda: responder.respond(small, ("192.0.2.1", 5060)))
    tLarge = bestOf(5, lambda: responder.respond(large, ("192.0.2.1", 5060)))
    print(f"{name:<52} {len(large):>6} B: {1000 * tLarge:7.2f} ms; 8x the attributes cost "
          f"{tLarge / tSmall:5.1f}x (linear ~8x, quadratic ~64x)")


def rateLimitGrowth() -> None:
    hosts = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(200_000)]

    def perRequest(maxSources: int) -> float:
        limit = RateLimit(20.0, 40, maxSources=maxSources)
        for i, host in enumerate(hosts[:maxSources]):
            limit.allow(host, i * 1e-4)
        rest = hosts[maxSources: maxSources + 100_000]
        start = time.perf_counter()
        for i, host in enumerate(rest):
            limit.allow(host, 10.0 + i * 1e-4)
        return (time.perf_counter() - start) / len(rest)

    small = min(perRequest(1000) for _ in range(3))
    large = min(perRequest(65536) for _ in range(3))
    print(f"{'rate limiter, spoofed flood, evicting per request':<52}: {1e6 * small:.2f} us with 1,000 sources, "
          f"{1e6 * large:.2f} us with 65,536 ({large / small:.1f}x; constant-time eviction ~1x)")


def main() -> None:
    attributeGrowth("16,000 unknown comprehension-required attributes",
                    lambda n: request([stun.RawAttribute(0x4000 + i, b"") for i in range(n)]))

    def mixed(n: int) -> bytes:
        attributes: List[stun.Attribute] = [stun.RawAttribute(0x4000 + i, b"") for i in range(n // 2)]
        attributes += [stun.ResponsePort(5060)] * (n // 2)
        return request(attributes)

    attributeGrowth("unknown + unsupported (RESPONSE-PORT) attributes", mixed, count=10000)
    rateLimitGrowth()


if __name__ == "__main__":
    main()
