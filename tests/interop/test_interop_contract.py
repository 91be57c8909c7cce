"""
The public contract (docs/api.rst) against real peers no one here wrote, over loopback with the real reactor:

- ``resolvePublicAddress`` against coturn (and against Kamailio as an RFC 5626 edge, whose replies carry no
  FINGERPRINT) returns our own loopback address and port, as ``IPv4Address("UDP", ...)``;
- UDP STUN keepalives answered by Kamailio's stun module, over several short intervals, with no false flow
  failure; Kamailio stopped → ``STUNTimeout``;
- TCP CRLFCRLF pings answered by Kamailio's pongs (``tcp_crlf_ping``) while SIP traffic shares the connection;
  Kamailio stopped → ``FlowConnectionLost`` (the connection closes) or ``PongTimeout``.

Intervals are shortened (0.5 s keepalives, 50-100 ms RTO) so each test stays within seconds; the library is
imported inside each test, so a missing piece fails that test with an ImportError rather than hiding the fixture
smoke tests beside it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, List, Tuple

import pytest
import pytest_twisted
from peerkit import RunningPeer

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

LOOPBACK = "127.0.0.1"


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def sleep(seconds: float) -> Any:
    """Let the real reactor run for ``seconds`` (a Deferred; nothing blocks)."""
    from twisted.internet.task import deferLater

    return deferLater(_reactor(), seconds, lambda: None)


class RecordingObserver:
    """
    An ``IBindingObserver`` that records every flow failure and fires ``first`` on the first one (with the
    count: a Deferred given a Failure as its result would errback instead).
    """

    def __init__(self) -> None:
        from twisted.internet.defer import Deferred
        from zope.interface import directlyProvides

        from twisted_sipnat.interfaces import IBindingObserver

        directlyProvides(self, IBindingObserver)
        self.failures: List[Any] = []
        self.first: Deferred[Any] = Deferred()

    def flowFailure(self, reason: Any) -> None:
        self.failures.append(reason)
        if not self.first.called:
            self.first.callback(len(self.failures))


def listenShared(controller: Any) -> Tuple[Any, Any, Counter[Any]]:
    """
    A ``SharedDatagramProtocol`` on an ephemeral loopback port, with the datagrams it receives counted per
    source (by wrapping the instance's ``datagramReceived``, which is what the reactor calls).
    """
    from twisted_sipnat import SharedDatagramProtocol

    shared = SharedDatagramProtocol(controller=controller)
    port = _reactor().listenUDP(0, shared, interface=LOOPBACK)
    received: Counter[Any] = Counter()
    original = shared.datagramReceived

    def counting(data: bytes, addr: Any) -> None:
        received[addr] += 1
        original(data, addr)

    shared.datagramReceived = counting
    return shared, port, received


# ----------------------------------------------------------------------------------------------- resolution


@pytest_twisted.ensureDeferred
async def test_resolvePublicAddressAgainstCoturn(coturn: RunningPeer) -> None:
    """coturn, a STUN server no one here wrote, reflects our own socket: IPv4Address("UDP", 127.0.0.1, port)."""
    from twisted.internet.address import IPv4Address

    from twisted_sipnat import NATSettings, NATTraversalController

    controller = NATTraversalController(NATSettings(stunServers=[coturn.address]), reactor=_reactor())
    shared, port, received = listenShared(controller)
    try:
        address = await controller.resolvePublicAddress("interop", shared, coturn.address)
        assert address == IPv4Address("UDP", LOOPBACK, port.getHost().port)
        assert received[coturn.address] == 1
    finally:
        controller.freeResources()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_resolvePublicAddressAgainstCoturnOverIPv6(coturn6: RunningPeer) -> None:
    """The same over ``::1``: an ``IPv6Address("UDP", "::1", port)`` comes back."""
    from twisted.internet.address import IPv6Address

    from twisted_sipnat import NATSettings, NATTraversalController, SharedDatagramProtocol

    controller = NATTraversalController(NATSettings(stunServers=[coturn6.address]), reactor=_reactor())
    shared = SharedDatagramProtocol(controller=controller)
    port = _reactor().listenUDP(0, shared, interface="::1")
    try:
        address = await controller.resolvePublicAddress("interop", shared, coturn6.address)
        assert isinstance(address, IPv6Address)
        assert (address.type, address.host, address.port) == ("UDP", "::1", port.getHost().port)
    finally:
        controller.freeResources()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_resolveFailsOverFromASilentServerToCoturn(coturn: RunningPeer) -> None:
    """
    The first server never answers (a port nothing listens on); after its RFC 8489 budget (7 requests, scaled by
    ``rto``) the controller moves to coturn, which answers.
    """
    import peerkit
    from twisted.internet.address import IPv4Address

    from twisted_sipnat import NATSettings, NATTraversalController

    silent = (LOOPBACK, peerkit.freePort(LOOPBACK))
    rto = 0.02
    controller = NATTraversalController(NATSettings(stunServers=[silent, coturn.address], rto=rto), reactor=_reactor())
    shared, port, received = listenShared(controller)
    reactor = _reactor()
    try:
        started = reactor.seconds()
        address = await controller.resolvePublicAddress("interop", shared, coturn.address)
        elapsed = reactor.seconds() - started
        assert address == IPv4Address("UDP", LOOPBACK, port.getHost().port)
        # 0 + rto·(1+2+4+8+16+32) + 16·rto = 79·rto before giving up on the silent server.
        assert elapsed >= 79 * rto * 0.9
        assert elapsed < 79 * rto + 2.0
    finally:
        controller.freeResources()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_resolveAgainstKamailioAsTheEdge(kamailio: RunningPeer) -> None:
    """
    No ``stunServers``: the next hop (Kamailio, RFC 5626 edge) is the STUN server.  Its replies carry no
    FINGERPRINT and a SOFTWARE attribute; they must be accepted.
    """
    from twisted.internet.address import IPv4Address

    from twisted_sipnat import NATSettings, NATTraversalController

    controller = NATTraversalController(NATSettings(), reactor=_reactor())
    shared, port, received = listenShared(controller)
    try:
        address = await controller.resolvePublicAddress("interop", shared, kamailio.address)
        assert address == IPv4Address("UDP", LOOPBACK, port.getHost().port)
    finally:
        controller.freeResources()
        await port.stopListening()


# ------------------------------------------------------------------------------------------- UDP keepalives


@pytest_twisted.ensureDeferred
async def test_udpKeepalivesAnsweredByKamailio(kamailio: RunningPeer) -> None:
    """
    STUN keepalives every 0.4-0.5 s to Kamailio over 3 s: every one answered (by its stun module, no
    FINGERPRINT), no flow failure; ``freeResources`` then stops them.
    """
    from twisted_sipnat import NATSettings, NATTraversalController

    interval = 0.5
    controller = NATTraversalController(NATSettings(udpKeepaliveInterval=interval, rto=0.1), reactor=_reactor())
    shared, port, received = listenShared(controller)
    observer = RecordingObserver()
    try:
        assert controller.refreshNATBinding(shared, observer, kamailio.address) is True
        await sleep(interval * 0.75)
        assert received[kamailio.address] == 0, "the first keepalive goes out 80-100 % of the interval later"
        await sleep(3.0)
        answered = received[kamailio.address]
        assert observer.failures == []
        # 3.375 s at one keepalive per 0.4-0.5 s: 6 to 8 answers.
        assert 6 <= answered <= 9, answered
        controller.freeResources()
        await sleep(interval * 2)
        assert received[kamailio.address] <= answered + 1
        assert observer.failures == []
    finally:
        controller.freeResources()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_udpKeepaliveFailsWithSTUNTimeoutWhenKamailioStops(
    kamailioFactory: Callable[[], RunningPeer],
) -> None:
    """Kamailio answers, then is stopped: the next keepalive's transaction runs out → ``STUNTimeout``, once."""
    from twisted_sipnat import NATSettings, NATTraversalController
    from twisted_sipnat.errors import STUNTimeout

    peer = kamailioFactory()
    interval, rto = 0.5, 0.05
    controller = NATTraversalController(NATSettings(udpKeepaliveInterval=interval, rto=rto), reactor=_reactor())
    shared, port, received = listenShared(controller)
    observer = RecordingObserver()
    reactor = _reactor()
    try:
        assert controller.refreshNATBinding(shared, observer, peer.address) is True
        await sleep(interval * 2.2)
        assert received[peer.address] >= 2
        assert observer.failures == []
        peer.stop()
        stopped = reactor.seconds()
        observer.first.addTimeout(interval + 79 * rto + 3.0, reactor)
        await observer.first
        reason = observer.failures[0]
        assert reason.check(STUNTimeout), reason
        # No earlier than one full transaction budget after the last answer, no later than interval + budget.
        assert reactor.seconds() - stopped <= interval + 79 * rto + 1.0
        await sleep(interval * 2)
        assert len(observer.failures) == 1, "a flow failure is reported once and the keepalives stop"
    finally:
        controller.freeResources()
        await port.stopListening()


# ------------------------------------------------------------------------------------------- TCP keepalives


async def connectShared(controller: Any, address: Tuple[str, int]) -> Tuple[Any, Any, Counter[str]]:
    """
    Connect through ``SharedStreamFactory``; returns ``(sharedStreamProtocol, sipProtocol, counts)`` where
    counts has ``pings`` written and ``pongs`` received on the wire (wrapping the instances' methods).
    """
    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.internet.protocol import ClientFactory, Protocol

    from twisted_sipnat import SharedStreamFactory

    sipProtocols: List[Any] = []

    class Recorder(Protocol):
        def __init__(self) -> None:
            self.received = b""
            sipProtocols.append(self)

        def dataReceived(self, data: bytes) -> None:
            self.received += data

    factory = SharedStreamFactory(ClientFactory.forProtocol(Recorder), controller=controller)
    stream = await TCP4ClientEndpoint(_reactor(), address[0], address[1], timeout=5).connect(factory)
    counts: Counter[str] = Counter()
    write = stream.transport.write
    receive = stream.dataReceived

    def countingWrite(data: bytes) -> Any:
        if data == b"\r\n\r\n":
            counts["pings"] += 1
        counts["txBytes"] += len(data)
        return write(data)

    def countingReceive(data: bytes) -> Any:
        counts["pongs"] += data.count(b"\r\n") if data.strip(b"\r\n") == b"" else 0
        counts["rxBytes"] += len(data)
        return receive(data)

    stream.transport.write = countingWrite
    stream.dataReceived = countingReceive
    assert sipProtocols, "SharedStreamFactory must build the wrapped SIP protocol"
    return stream, sipProtocols[0], counts


OPTIONS = (
    "OPTIONS sip:{host}:{port} SIP/2.0\r\n"
    "Via: SIP/2.0/TCP {local};branch=z9hG4bK-sipnat-{n};rport\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:probe@{host}>;tag=sipnat{n}\r\n"
    "To: <sip:{host}>\r\n"
    "Call-ID: sipnat-interop-{n}@{local}\r\n"
    "CSeq: {n} OPTIONS\r\n"
    "Content-Length: 0\r\n\r\n"
)


@pytest_twisted.ensureDeferred
async def test_tcpPingsAnsweredByKamailioWhileSIPFlows(kamailio: RunningPeer) -> None:
    """
    CRLFCRLF pings every 0.4-0.5 s over 3 s, each answered by Kamailio's CRLF pong within ``pongTimeout``;
    meanwhile the SIP side sends OPTIONS on the same connection and receives Kamailio's 200 whole, with no pong
    bytes mixed in.  No flow failure.
    """
    from twisted_sipnat import NATSettings, NATTraversalController

    interval = 0.5
    controller = NATTraversalController(
        NATSettings(tcpKeepaliveInterval=interval, pongTimeout=1.0), reactor=_reactor()
    )
    observer = RecordingObserver()
    stream, sip, counts = await connectShared(controller, kamailio.address)
    try:
        assert controller.refreshNATBinding(stream, observer, kamailio.address) is True
        local = stream.transport.getHost()
        for n in range(1, 4):
            await sleep(0.9)
            sip.transport.write(
                OPTIONS.format(host=kamailio.address[0], port=kamailio.address[1], local=f"{local.host}:{local.port}", n=n).encode()
            )
        await sleep(0.6)
        assert observer.failures == []
        assert counts["pings"] >= 5, counts
        assert counts["pongs"] >= counts["pings"] - 1, counts
        assert sip.received.count(b"SIP/2.0 200 OK") == 3, sip.received
        assert sip.received.startswith(b"SIP/2.0 200"), "pongs must not reach the SIP protocol"
    finally:
        controller.freeResources()
        stream.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_tcpFlowFailsWhenKamailioStops(kamailioFactory: Callable[[], RunningPeer]) -> None:
    """Pings answered, then Kamailio stopped: ``FlowConnectionLost`` (it closes the connection) or ``PongTimeout``."""
    from twisted_sipnat import NATSettings, NATTraversalController
    from twisted_sipnat.errors import FlowConnectionLost, PongTimeout

    peer = kamailioFactory()
    interval, pongTimeout = 0.5, 1.0
    controller = NATTraversalController(
        NATSettings(tcpKeepaliveInterval=interval, pongTimeout=pongTimeout), reactor=_reactor()
    )
    observer = RecordingObserver()
    reactor = _reactor()
    stream, sip, counts = await connectShared(controller, peer.address)
    try:
        assert controller.refreshNATBinding(stream, observer, peer.address) is True
        await sleep(interval * 2.2)
        assert counts["pongs"] >= 2, counts
        peer.stop()
        stopped = reactor.seconds()
        observer.first.addTimeout(interval + pongTimeout + 3.0, reactor)
        await observer.first
        reason = observer.failures[0]
        assert reason.check(FlowConnectionLost, PongTimeout), reason
        assert reactor.seconds() - stopped <= interval + pongTimeout + 1.0
        await sleep(interval * 2)
        assert len(observer.failures) == 1
    finally:
        controller.freeResources()
        if stream.transport.connected:
            stream.transport.loseConnection()


# ------------------------------------------------------------------------------------ the shared UDP socket


@pytest_twisted.ensureDeferred
async def test_sipAndKeepalivesShareOneUDPSocketWithKamailio(kamailio: RunningPeer) -> None:
    """
    A SIP protocol behind ``SharedDatagramProtocol`` sends OPTIONS to Kamailio through its transport while STUN
    keepalives run on the same socket: the SIP protocol receives exactly Kamailio's SIP responses, byte for
    byte as sent, and never a STUN answer; the keepalives are answered.  Calling ``refreshNATBinding`` a second
    time restarts the keepalives rather than doubling them.
    """
    from twisted.internet.protocol import DatagramProtocol

    from twisted_sipnat import NATSettings, NATTraversalController, SharedDatagramProtocol

    class SIPRecorder(DatagramProtocol):
        def __init__(self) -> None:
            self.datagrams: List[Tuple[bytes, Any]] = []

        def datagramReceived(self, datagram: bytes, addr: Any) -> None:
            self.datagrams.append((datagram, addr))

    interval = 0.5
    controller = NATTraversalController(NATSettings(udpKeepaliveInterval=interval, rto=0.1), reactor=_reactor())
    sip = SIPRecorder()
    shared = SharedDatagramProtocol(sipProtocol=sip, controller=controller)
    port = _reactor().listenUDP(0, shared, interface=LOOPBACK)
    wire: List[bytes] = []
    original = shared.datagramReceived

    def tapping(data: bytes, addr: Any) -> None:
        wire.append(data)
        original(data, addr)

    shared.datagramReceived = tapping
    observer = RecordingObserver()
    local = f"{LOOPBACK}:{port.getHost().port}"
    try:
        assert controller.refreshNATBinding(shared, observer, kamailio.address) is True
        assert controller.refreshNATBinding(shared, observer, kamailio.address) is True
        for n in range(1, 5):
            await sleep(0.6)
            request = OPTIONS.format(host=kamailio.address[0], port=kamailio.address[1], local=local, n=n)
            sip.transport.write(request.replace("SIP/2.0/TCP", "SIP/2.0/UDP").encode(), kamailio.address)
        await sleep(0.5)
        stunOnWire = [d for d in wire if d[:1] in (b"\x00", b"\x01")]
        sipOnWire = [d for d in wire if d.startswith(b"SIP/2.0")]
        assert observer.failures == []
        assert len(sipOnWire) == 4 and all(b" 200 OK" in d.split(b"\r\n")[0] for d in sipOnWire), wire
        assert [d for d, _ in sip.datagrams] == sipOnWire
        assert all(addr == kamailio.address for _, addr in sip.datagrams)
        # 2.9 s of keepalives at 0.4-0.5 s: 5 to 7 answers — twice that would mean the second call doubled them.
        assert 5 <= len(stunOnWire) <= 8, len(stunOnWire)
    finally:
        controller.freeResources()
        await port.stopListening()
