"""
The RFC 8489 retransmission timeline as it happens on real sockets: resolvePublicAddress against a loopback
"server" that records when each request arrives and never answers.  Prints each arrival instant next to the RFC
instant (0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s) and when the Deferred failed (39.5 s).  Takes ~40 s.

    python benchmarks/timeline.py [--rto 0.5]
"""

from __future__ import annotations

import argparse
from typing import Any, List

from twisted.internet import defer, task
from twisted.internet.protocol import DatagramProtocol

from twisted_sipnat import NATSettings, NATTraversalController, SharedDatagramProtocol, STUNTimeout
from twisted_sipnat.core.transaction import udpSchedule


class Silent(DatagramProtocol):
    def __init__(self) -> None:
        self.arrivals: List[float] = []
        from twisted.internet import reactor

        self.clock = reactor.seconds

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.arrivals.append(self.clock())


@defer.inlineCallbacks
def main(reactor: Any, rto: float) -> Any:
    silent = Silent()
    server = reactor.listenUDP(0, silent, interface="127.0.0.1")
    controller = NATTraversalController(NATSettings(stunServers=[("127.0.0.1", server.getHost().port)], rto=rto),
                                        reactor=reactor)
    client = SharedDatagramProtocol(controller=controller)
    port = reactor.listenUDP(0, client, interface="127.0.0.1")
    start = reactor.seconds()  # the timebase every callLater uses
    try:
        yield controller.resolvePublicAddress(None, client, ("127.0.0.1", 5060))
    except STUNTimeout:
        failedAt = reactor.seconds() - start
    else:
        raise SystemExit("the silent server answered?")
    finally:
        yield port.stopListening()
        yield server.stopListening()
    offsets, timeout = udpSchedule(rto)
    print(f"{'send':>4} {'RFC 8489':>9} {'measured':>9} {'error':>8}")
    for i, (expected, arrival) in enumerate(zip(offsets, silent.arrivals, strict=False)):
        measured = arrival - start
        print(f"{i + 1:>4} {expected:>8.3f}s {measured:>8.3f}s {1000 * (measured - expected):>+6.1f}ms")
    print(f"fail {timeout:>8.3f}s {failedAt:>8.3f}s {1000 * (failedAt - timeout):>+6.1f}ms")
    print(f"requests received: {len(silent.arrivals)} (RFC: {len(offsets)})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rto", type=float, default=0.5)
    args = parser.parse_args()
    task.react(main, [args.rto])
