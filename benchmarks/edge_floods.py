"""
Connection floods against the edge and stun roles under a 1024 open-file limit (issue 13, "Edge, TCP,
unbounded"): each scenario starts a fresh role in its own process with ``RLIMIT_NOFILE`` (1024, 1024) (so
raising the soft limit cannot help: the connection table has to decide), floods it over loopback, and prints

- the server's RSS growth (``VmRSS`` from ``/proc/PID/status``: before the flood, and the larger of 1 s after
  it is sent and after the legitimate requests),
- how many of N legitimate requests were answered during the flood (TCP REGISTERs for the edge, TCP Binding
  requests for ``stun --tcp``),
- how many flood connections the server still holds 10 s later.

Scenarios: (a) 1,016 idle connections; (b) 600 connections each stalled after a 61 KB partial header;
(c) ``stun --tcp``, 600 connections each stalled inside a 60 KB STUN message.

    python benchmarks/edge_floods.py                     # this checkout
    python benchmarks/edge_floods.py --checkout /path    # another checkout's roles (a baseline), same floods
    python benchmarks/edge_floods.py --hard 0            # soft limit 1024, hard as inherited (the role raises it)
"""

from __future__ import annotations

import argparse
import time
from typing import Callable, List, Optional

import _common  # noqa: F401  (puts the repository on sys.path)

from tests.security import floodkit


def scenario(name: str, role: floodkit.Role, ready: Callable[[], None], payload: bytes, count: int,
             legit: Callable[[int], bool], requests: int, after: float) -> None:
    try:
        ready()
        time.sleep(0.5)
        before = role.rssKiB()
        start = time.monotonic()
        flood = floodkit.openConnections(role.port, count, payload)  # type: ignore[attr-defined]
        sent = time.monotonic() - start
        time.sleep(1.0)  # let the server read what was sent
        peak = role.rssKiB()
        answered = sum(legit(i) for i in range(requests))
        peak = max(peak, role.rssKiB())
        held = floodkit.stillOpen(flood)
        time.sleep(after)
        later = floodkit.stillOpen(flood)
        print(f"{name:<44} {len(flood):>5} conns in {sent:4.1f} s | RSS {before / 1024:6.1f} MB -> "
              f"{peak / 1024:6.1f} MB (+{(peak - before) / 1024:5.1f} MB) | legit answered {answered}/{requests} | "
              f"open at once {held:>5}, {after:.0f} s later {later:>5}")
        floodkit.closeAll(flood)
    finally:
        role.stop()


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", help="run the roles from this checkout instead (a baseline)")
    parser.add_argument("--hard", type=int, default=1024, help="hard RLIMIT_NOFILE of the role (0: inherited)")
    parser.add_argument("--idle", type=int, default=1016)
    parser.add_argument("--slowloris", type=int, default=600)
    parser.add_argument("--header-kb", type=int, default=61)
    parser.add_argument("--stun", type=int, default=600)
    parser.add_argument("--stun-kb", type=int, default=60)
    parser.add_argument("--requests", type=int, default=3, help="legitimate requests during each flood")
    parser.add_argument("--after", type=float, default=10.0, help="seconds until the flood is counted again")
    parser.add_argument("--role-option", action="append", default=[], metavar="OPTION",
                        help="an option for the roles, e.g. --role-option=--max-buffered-bytes=4194304")
    args = parser.parse_args(argv)
    floodkit.raiseOwnFileLimit(8192)
    hard = args.hard or None
    print(f"roles from {args.checkout or 'this checkout'}, RLIMIT_NOFILE (1024, {hard or 'inherited'})")

    def edgeRun(name: str, payload: bytes, count: int) -> None:
        port = floodkit.freeTCPPort()
        role = floodkit.edge(port, soft=1024, hard=hard, extra=args.role_option, checkout=args.checkout)
        role.port = port  # type: ignore[attr-defined]
        scenario(name, role, lambda: floodkit.waitForEdge(port, role), payload, count,
                 lambda i: floodkit.registerAnswered(port, i), args.requests, args.after)

    edgeRun(f"(a) edge: {args.idle} idle", b"", args.idle)
    edgeRun(f"(b) edge: {args.slowloris} x {args.header_kb} KB partial header",
            floodkit.slowlorisHeader(args.header_kb * 1024), args.slowloris)
    port = floodkit.freeTCPPort()
    role = floodkit.stun(port, soft=1024, hard=hard, extra=args.role_option, checkout=args.checkout)
    role.port = port  # type: ignore[attr-defined]
    size = args.stun_kb * 1024
    partial = floodkit.bindingRequest(length=min(65532, size))[:20] + b"\x00" * (size - 20 - 100)
    scenario(f"(c) stun --tcp: {args.stun} x {args.stun_kb} KB partial", role,
             lambda: floodkit.waitForSTUN(port, role), partial, args.stun,
             lambda i: floodkit.bindingAnswered(port), args.requests, args.after)


if __name__ == "__main__":
    main()
