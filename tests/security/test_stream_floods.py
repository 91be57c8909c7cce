"""
Connection floods against the stream side of the edge and stun roles (issue 13, "Edge, TCP, unbounded"):

- 1,016 idle connections under a 1024 open-file limit left 0 of 3 legitimate TCP REGISTERs answered: the
  subprocess tests below run the edge role under exactly that limit, with the soft limit raisable (the role
  raises it) and with soft = hard = 1024 (the connection table evicts the idle connections to make room);
- 600 connections stalled after a 61 KB partial header kept RSS +92.6 MB, all still open 10 s later;
- ``stun --tcp`` with 600 x 60 KB partial STUN messages: +35 MB, all kept.

The in-process tests run the roles as they are (their SIP handler included: they only ask that "a 200 came
back") on a Clock with StringTransports; the subprocess ones over real loopback sockets.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from tests.security import floodkit
from twisted_sipnat.service.edge import EdgeRole
from twisted_sipnat.service.figures import Figures
from twisted_sipnat.service.stunserver import STUNRole
from twisted_sipnat.streamlimits import RefusedConnection


def connect(factory: Any, host: str, port: int) -> Tuple[Optional[Any], StringTransport]:
    address = IPv4Address("TCP", host, port)
    transport = StringTransport(peerAddress=address, hostAddress=IPv4Address("TCP", "127.0.0.1", 5060))
    protocol = factory.buildProtocol(address)
    if protocol is not None:
        protocol.makeConnection(transport)
    return protocol, transport


def closeAll(clients: List[Tuple[Optional[Any], StringTransport]]) -> None:
    for protocol, _ in clients:
        if protocol is not None:
            protocol.connectionLost(Failure(ConnectionDone()))


def edgeRole(clock: Clock, **limits: Any) -> EdgeRole:
    return EdgeRole(clock, udp=(0, "127.0.0.1"), tcp="tcp:0:interface=127.0.0.1", domain="example.com",
                    connectionLimits=limits)


def open_(clients: List[Tuple[Optional[Any], StringTransport]]) -> int:
    return sum(1 for p, t in clients if p is not None and not t.disconnecting)


def test_idle_flood_beyond_the_cap_then_registers_are_still_answered() -> None:
    clock = Clock()
    edge = edgeRole(clock, maxConnections=100)
    factory = edge.tcp.factory  # type: ignore[union-attr]
    flood = [connect(factory, "203.0.113.5", 10000 + i) for i in range(1016)]
    assert open_(flood) <= 100
    real = [connect(factory, "192.0.2.20", 20000 + i) for i in range(3)]
    for i, (protocol, _) in enumerate(real):
        assert not isinstance(protocol, RefusedConnection), "a legitimate client was refused"
        protocol.dataReceived(floodkit.registerRequest(i))
    assert [t.value().startswith(b"SIP/2.0 200") for _, t in real] == [True, True, True]
    assert not any(t.disconnecting for _, t in real)
    # the next idle flood only displaces itself: the clients that registered stay
    more = [connect(factory, "203.0.113.5", 30000 + i) for i in range(500)]
    assert not any(t.disconnecting for _, t in real)
    figures = Figures()
    edge.reportFigures(figures)
    assert figures.get("sipnat_connections", transport="tcp") == 100
    assert figures.get("sipnat_connections_refused_total", reason="evicted") == 1016 + 3 + 500 - 100
    closeAll(flood + real + more)


def test_slowloris_partial_headers_are_bounded_and_timed_out() -> None:
    clock = Clock()
    edge = edgeRole(clock, handshakeTimeout=10.0)
    factory = edge.tcp.factory  # type: ignore[union-attr]
    limit = factory.limiter.limits.maxBufferedBytes
    header = floodkit.slowlorisHeader(61 * 1024)
    flood = [connect(factory, "203.0.113.5", 10000 + i) for i in range(600)]
    for protocol, transport in flood:
        if not transport.disconnecting:
            protocol.dataReceived(header)  # type: ignore[union-attr]
    held = sum(p.splitter.buffered for p, t in flood if not t.disconnecting)  # type: ignore[union-attr]
    assert held <= limit < 600 * len(header)
    assert factory.limiter.table.refused["buffer_limit"] > 0
    real, realTransport = connect(factory, "192.0.2.20", 20000)
    real.dataReceived(floodkit.registerRequest(1))  # type: ignore[union-attr]
    assert realTransport.value().startswith(b"SIP/2.0 200")
    clock.advance(10)
    assert open_(flood) == 0, "partial headers still held after the first-message timeout"
    assert not realTransport.disconnecting
    closeAll(flood + [(real, realTransport)])


def test_the_buffered_bytes_total_holds_against_connections_from_many_sources() -> None:
    clock = Clock()
    edge = edgeRole(clock, maxBufferedBytes=1_000_000)
    factory = edge.tcp.factory  # type: ignore[union-attr]
    flood = []
    for i in range(200):
        protocol, transport = connect(factory, f"198.51.100.{i % 250}", 10000 + i)
        protocol.dataReceived(floodkit.slowlorisHeader(20_000 + 100 * i))  # type: ignore[union-attr]
        flood.append((protocol, transport))
        assert sum(p.splitter.buffered for p, t in flood if not t.disconnecting) <= 1_000_000
    assert factory.limiter.table.bufferedBytes <= 1_000_000
    closeAll(flood)


def test_partial_bodies_count_against_the_total_too() -> None:
    """Headers complete, body stalled: the splitter copies nothing, but the SIP handler holds the body."""
    clock = Clock()
    edge = edgeRole(clock, maxBufferedBytes=1_000_000)
    factory = edge.tcp.factory  # type: ignore[union-attr]
    head = (b"OPTIONS sip:example.com SIP/2.0\r\nVia: SIP/2.0/TCP 203.0.113.5:1;branch=z9hG4bKx\r\n"
            b"Call-ID: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 60000\r\n\r\n")
    flood = [connect(factory, "203.0.113.5", 10000 + i) for i in range(100)]
    for protocol, transport in flood:
        if not transport.disconnecting:
            protocol.dataReceived(head + b"x" * 50_000)  # type: ignore[union-attr]
    assert factory.limiter.table.bufferedBytes <= 1_000_000
    assert open_(flood) <= 1_000_000 // 50_000
    closeAll(flood)


def test_per_source_cap_keeps_one_address_from_taking_the_table() -> None:
    clock = Clock()
    edge = edgeRole(clock, maxConnections=1000, maxConnectionsPerSource=50)
    factory = edge.tcp.factory  # type: ignore[union-attr]
    flood = [connect(factory, "203.0.113.5", 10000 + i) for i in range(400)]
    assert open_(flood) == 50
    assert len(factory.limiter.table) == 50
    others = [connect(factory, f"192.0.2.{i}", 20000) for i in range(1, 101)]
    assert open_(others) == 100
    closeAll(flood + others)


def test_stun_tcp_partial_message_flood_is_not_kept() -> None:
    clock = Clock()
    role = STUNRole(clock, udp=(0, "127.0.0.1"), tcp="tcp:0:interface=127.0.0.1")
    factory = role.tcp.factory  # type: ignore[union-attr]
    partial = floodkit.bindingRequest(length=60 * 1024 - 20)[:8] + b"\x00" * (60 * 1024 - 8 - 100)
    flood = [connect(factory, "203.0.113.5", 10000 + i) for i in range(600)]
    for protocol, _ in flood:
        protocol.dataReceived(partial)  # type: ignore[union-attr]
    assert open_(flood) == 0
    assert sum(p.framer.buffered for p, _ in flood) == 0  # type: ignore[union-attr]
    # small partial requests are bounded by the table: the first-message timeout closes them
    small = [connect(factory, "203.0.113.6", 30000 + i) for i in range(600)]
    for protocol, _ in small:
        protocol.dataReceived(floodkit.bindingRequest(length=400)[:200])  # type: ignore[union-attr]
    clock.advance(factory.limiter.limits.handshakeTimeout)
    assert open_(small) == 0
    closeAll(flood + small)


# -- over real loopback sockets, in a child process under a 1024 open-file limit --------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("hard", [None, 1024], ids=["soft-1024", "soft-and-hard-1024"])
def test_1016_idle_connections_under_a_1024_file_limit_leave_registers_answered(hard: Optional[int]) -> None:
    """
    The issue's case.  ``soft-1024``: the role raises its soft limit to the hard one at start-up.
    ``soft-and-hard-1024``: it cannot, so its connection table (capped below the limit) evicts idle
    connections for the REGISTERs.  On the old code both answered 0 of 3.
    """
    floodkit.raiseOwnFileLimit(4096)
    port = floodkit.freeTCPPort()
    # with both limits at 1024, first-message timeouts long enough that only eviction can make room
    extra = ["--handshake-timeout", "600"] if hard is not None else []
    role = floodkit.edge(port, soft=1024, hard=hard, extra=extra)
    idle: List[Any] = []
    try:
        floodkit.waitForEdge(port, role)
        idle = floodkit.openConnections(port, 1016)
        answered = sum(floodkit.registerAnswered(port, i, timeout=5.0) for i in range(3))
        assert answered == 3, role.output()[-2000:]
    finally:
        floodkit.closeAll(idle)
        role.stop()


@pytest.mark.timeout(120)
def test_slowloris_over_loopback_is_evicted_and_closed() -> None:
    floodkit.raiseOwnFileLimit(4096)
    port = floodkit.freeTCPPort()
    role = floodkit.edge(port, soft=1024, hard=1024, extra=["--handshake-timeout", "2"])
    flood: List[Any] = []
    try:
        floodkit.waitForEdge(port, role)
        flood = floodkit.openConnections(port, 300, floodkit.slowlorisHeader())
        assert floodkit.registerAnswered(port, 1, timeout=5.0)
        import time

        end = time.monotonic() + 15
        while floodkit.stillOpen(flood) and time.monotonic() < end:
            time.sleep(0.2)
        assert floodkit.stillOpen(flood) == 0
    finally:
        floodkit.closeAll(flood)
        role.stop()
