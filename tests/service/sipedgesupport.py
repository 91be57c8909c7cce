"""
The edge role's SIP side on a Clock with fake transports: the real ``SharedDatagramProtocol`` and
``SharedStreamFactory`` in front of it, so each test goes through exactly what a packet off the wire does.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Tuple

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from twisted_sipnat.protocols import SharedStreamFactory, SharedStreamProtocol
from twisted_sipnat.service.edge import EdgeRole
from twisted_sipnat.service.figures import Figures
from twisted_sipnat.service.sipedge import SIPEdgeStreamFactory

EDGE = ("203.0.113.20", 5062)
HostPort = Tuple[str, int]


class FakeUDP:
    """A UDP port that records what is written to it."""

    def __init__(self) -> None:
        self.written: List[Tuple[bytes, HostPort]] = []

    def write(self, data: bytes, addr: Any = None) -> None:
        self.written.append((bytes(data), (addr[0], addr[1])))

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", *EDGE)

    def to(self, addr: HostPort) -> List[bytes]:
        return [d for d, a in self.written if a == addr]


class EdgeHarness:
    """An :class:`EdgeRole` whose UDP socket is a :class:`FakeUDP`; :meth:`connect` opens a fake TCP connection."""

    def __init__(self, clock: Clock, **kw: Any) -> None:
        self.clock = clock
        kw.setdefault("domain", "example.com")
        self.edge = EdgeRole(clock, udp=(EDGE[1], EDGE[0]), **kw)
        self.udp = FakeUDP()
        self.edge.shared.makeConnection(self.udp)  # type: ignore[arg-type]
        self.streams = SharedStreamFactory(SIPEdgeStreamFactory(self.edge.sip), pongResponder=True)
        self.connections: List[Tuple[SharedStreamProtocol, StringTransport]] = []
        self.closed: List[SharedStreamProtocol] = []

    def datagram(self, data: bytes, source: HostPort) -> List[bytes]:
        """Deliver ``data`` from ``source``; what was written back to ``source``."""
        before = len(self.udp.written)
        self.edge.shared.datagramReceived(data, source)
        return [d for d, a in self.udp.written[before:] if a == source]

    def connect(self, source: HostPort) -> Tuple[SharedStreamProtocol, StringTransport]:
        proto = self.streams.buildProtocol(IPv4Address("TCP", *source))
        transport = StringTransport(peerAddress=IPv4Address("TCP", *source), hostAddress=IPv4Address("TCP", EDGE[0], 5063))
        proto.makeConnection(transport)
        self.connections.append((proto, transport))
        return proto, transport

    def close(self, proto: SharedStreamProtocol) -> None:
        if proto not in self.closed:
            self.closed.append(proto)
            proto.connectionLost(Failure(ConnectionDone()))

    def figures(self) -> Figures:
        figures = Figures()
        self.edge.reportFigures(figures)
        return figures

    def stop(self) -> None:
        for proto, _ in self.connections:
            self.close(proto)
        self.edge.sip.stop()


def taken(transport: StringTransport) -> bytes:
    data = transport.value()
    transport.clear()
    return data


@contextmanager
def edgeLogs() -> Iterator[List[Dict[str, Any]]]:
    """The events the library logs inside the block."""
    events: List[Dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)


def named(events: List[Dict[str, Any]], name: str) -> List[Dict[str, Any]]:
    return [e for e in events if e.get("sipnat_event") == name]
