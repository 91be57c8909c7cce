"""
The two STUN client tables the network can grow, filled past their bounds: the long-term credentials learned per
server (``core.longterm.LongTermCredentials``, at most ``DEFAULT_MAX_CREDENTIALS``) and the failure cache
(``core.failurecache.FailureCache``, at most ``DEFAULT_MAX_FAILURES``).  Prints each table's size at the end (its
bound), the memory it holds (tracemalloc) and the cost of one insertion while it is full, so the bounds'
price is a measured figure, not a guess.

Every credential entry is as large as a hostile server can make it cheaply: its own realm and a 500-byte nonce.

Usage: ``python benchmarks/longterm_tables.py [--overfill N]`` (N times the bound is inserted; default 3).
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twisted_sipnat.core import stun  # noqa: E402
from twisted_sipnat.core.failurecache import DEFAULT_MAX_FAILURES, FailureCache  # noqa: E402
from twisted_sipnat.core.longterm import DEFAULT_MAX_CREDENTIALS, LongTermCredentials  # noqa: E402
from twisted_sipnat.errors import STUNTimeout  # noqa: E402


def credentials(overfill: int) -> None:
    challenges = [
        stun.Message(stun.BINDING, stun.ERROR, bytes(12),
                     [stun.ErrorCode(401, "Unauthorized"), stun.Realm(f"realm-{i}"), stun.Nonce("x" * 500 + str(i))])
        for i in range(DEFAULT_MAX_CREDENTIALS * overfill)
    ]
    table = LongTermCredentials()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    for i, message in enumerate(challenges):
        table.learn(("198.18.0.1", 1024 + i), "alice", "pw", message)
    elapsed = time.perf_counter() - started
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    print(f"learned credentials: {len(table)} entries (bound {DEFAULT_MAX_CREDENTIALS}), "
          f"{held / 1024:.0f} KiB held, {elapsed / len(challenges) * 1e6:.1f} us per challenge learned "
          f"({len(challenges)} learned, {table.evictions} evicted)")


def failures(overfill: int) -> None:
    cache = FailureCache()
    error = STUNTimeout((("192.0.2.1", 3478),), 39.5)
    keys = [("example.com", (("198.18.0.1", i),)) for i in range(DEFAULT_MAX_FAILURES * overfill)]
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    for key in keys:
        cache.remember(key, error, 3600.0, 0.0)
    elapsed = time.perf_counter() - started
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    print(f"failure cache: {len(cache)} entries (bound {DEFAULT_MAX_FAILURES}), {held / 1024:.0f} KiB held, "
          f"{elapsed / len(keys) * 1e6:.1f} us per failure remembered ({len(keys)} remembered, "
          f"{cache.evictions} evicted)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--overfill", type=int, default=3, help="insert N times each bound (default 3)")
    args = parser.parse_args()
    credentials(args.overfill)
    failures(args.overfill)
    return 0


if __name__ == "__main__":
    sys.exit(main())
