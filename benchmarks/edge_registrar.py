"""
The edge registrar under a REGISTER flood: what a table of bindings costs and what the flood leaves behind.

Spoofed REGISTERs from distinct sources (each with its own rate-limit bucket) go through the real UDP path of
the edge role (``SharedDatagramProtocol`` -> ``SIPEdgeDatagramProtocol`` -> ``core.proxy`` -> ``core.registrar``)
on a ``task.Clock``: no sockets, so the figures are the edge's own work.  Printed: registry size and pending
timers after the flood, how many were refused with 503, memory per binding (tracemalloc and RSS), REGISTERs
handled per second of CPU, and the expiry of the whole table.

    python benchmarks/edge_registrar.py [--count 12000] [--max-registrations 10000]
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from typing import Any, List, Tuple

import _common
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock

from twisted_sipnat.service.edge import EdgeRole


class _UDP:
    def __init__(self) -> None:
        self.codes: List[bytes] = []

    def write(self, data: bytes, addr: Any = None) -> None:
        self.codes.append(data[8:11])

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", "203.0.113.20", 5060)


def _register(i: int) -> Tuple[bytes, Tuple[str, int]]:
    host = f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
    data = (
        f"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP {host}:5060;branch=z9hG4bK{i};rport\r\n"
        f"Max-Forwards: 70\r\nTo: <sip:u{i}@example.com>\r\nFrom: <sip:u{i}@example.com>;tag={i}\r\n"
        f"Call-ID: flood{i}@{host}\r\nCSeq: 1 REGISTER\r\nContact: <sip:u{i}@{host}:5060>\r\nExpires: 3600\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    return data, (host, 5060)


def _edge(maxRegistrations: int) -> Tuple[Clock, EdgeRole, _UDP]:
    clock = Clock()
    edge = EdgeRole(clock, udp=(5060, "203.0.113.20"), domain="example.com", maxRegistrations=maxRegistrations)
    udp = _UDP()
    edge.shared.makeConnection(udp)  # type: ignore[arg-type]
    return clock, edge, udp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=12000)
    parser.add_argument("--max-registrations", type=int, default=10000)
    args = parser.parse_args()
    messages = [_register(i) for i in range(args.count)]

    # Timing and RSS, without tracemalloc (which slows every allocation).
    clock, edge, udp = _edge(args.max_registrations)
    gc.collect()
    rssBefore = _common.rssBytes()
    cpu = time.process_time()
    for data, source in messages:
        edge.shared.datagramReceived(data, source)
    cpu = time.process_time() - cpu
    rssAfter = _common.rssBytes()
    held = len(edge.registry)
    refused = udp.codes.count(b"503")
    timers = len(clock.getDelayedCalls())
    clock.advance(3600)
    expired = (len(edge.registry), len(clock.getDelayedCalls()))
    edge.sip.stop()

    # Memory per binding, traced, on a fresh edge.
    clock2, edge2, _ = _edge(args.max_registrations)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for data, source in messages:
        edge2.shared.datagramReceived(data, source)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    perBinding = (after - before) / max(1, len(edge2.registry))
    edge2.sip.stop()

    print(f"REGISTERs sent: {args.count:,}; --max-registrations {args.max_registrations:,}")
    print(f"registry size after the flood: {held:,} bindings; {refused:,} refused with 503")
    print(f"pending reactor timers: {timers}")
    print(f"memory per binding: {perBinding:,.0f} bytes traced (with its rate-limit bucket), "
          f"RSS +{(rssAfter - rssBefore) / 1e6:.1f} MB for the whole flood")
    print(f"REGISTERs handled: {args.count / cpu:,.0f} per CPU second")
    print(f"after 3600 s: {expired[0]} bindings, {expired[1]} pending timers")


if __name__ == "__main__":
    main()
