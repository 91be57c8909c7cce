"""
The three twistd roles: start, work, stop without leaving ports or timers.

Clock tests run the roles on a simulated loopback network (a ``task.Clock`` that also implements
``listenUDP``, delivering datagrams between in-memory ports); loopback tests use the real reactor and real
sockets (pytest-twisted).
"""

from __future__ import annotations

import socket
from typing import Any, Dict, List, Optional, Tuple

import pytest
import pytest_twisted
from twisted.internet import defer, protocol
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from twisted_sipnat import NATSettings, stun
from twisted_sipnat.errors import InvalidSettingsError
from twisted_sipnat.roles import (
    ClientRole,
    EdgeRole,
    RegisterClient,
    RegistrationError,
    STUNRole,
    parseHostPort,
    parseUDPDescription,
)

HostPort = Tuple[str, int]


# ---- a simulated loopback network on a Clock ---------------------------------------------------------------


class _Port:
    """An ``IUDPTransport`` on the simulated network."""

    def __init__(self, net: NetReactor, host: str, port: int, proto: Any) -> None:
        self.net, self.host, self.port, self.protocol = net, host, port, proto
        self.listening = True

    def write(self, data: bytes, addr: Any = None) -> None:
        assert self.listening, "write on a closed port"
        self.net.sent.append((bytes(data), (self.host, self.port), (addr[0], addr[1])))
        self.net.callLater(0, self.net._deliver, bytes(data), (self.host, self.port), (addr[0], addr[1]))

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", self.host, self.port)

    def stopListening(self) -> None:
        if self.listening:
            self.listening = False
            del self.net.ports[self.port]
            self.protocol.doStop()

    def connect(self, host: str, port: int) -> None:
        raise NotImplementedError

    def setBroadcastAllowed(self, enabled: bool) -> None:
        pass

    def getBroadcastAllowed(self) -> bool:
        return False


class NetReactor(Clock):
    """``Clock`` + ``listenUDP`` on one host; ``drop`` loses every datagram (a dead path)."""

    def __init__(self) -> None:
        super().__init__()
        self.ports: Dict[int, _Port] = {}
        self.sent: List[Tuple[bytes, HostPort, HostPort]] = []
        self.drop = False
        self._next = 40000

    def listenUDP(self, port: int, proto: Any, interface: str = "", maxPacketSize: int = 8192) -> _Port:
        if port == 0:
            self._next += 1
            port = self._next
        if port in self.ports:
            raise OSError(f"port {port} in use")
        p = _Port(self, interface or "127.0.0.1", port, proto)
        self.ports[port] = p
        proto.makeConnection(p)
        return p

    def _deliver(self, data: bytes, source: HostPort, dest: HostPort) -> None:
        target = self.ports.get(dest[1])
        if target is not None and not self.drop:
            target.protocol.datagramReceived(data, source)

    def run(self, seconds: float, step: float = 0.05) -> None:
        for _ in range(int(seconds / step)):
            self.advance(step)


def _clientFor(net: NetReactor, nextHop: Any, **kw: Any) -> ClientRole:
    settings = {"default": NATSettings(udpKeepaliveInterval=kw.pop("interval", 10.0))}
    return ClientRole(net, nextHop, settings, "default", listen=(0, "127.0.0.1"), **kw)


# ---- parsing ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("udp:5060", (5060, "")),
        ("udp:0", (0, "")),
        ("UDP:port=5070", (5070, "")),
        ("udp:5060:interface=127.0.0.1", (5060, "127.0.0.1")),
        ("udp:5060:interface=::1", (5060, "::1")),
        ("udp:5060:interface=[::1]", (5060, "::1")),
    ],
)
def test_parseUDPDescription(text: str, expected: Tuple[int, str]) -> None:
    assert parseUDPDescription(text) == expected


@pytest.mark.parametrize("bad", ["tcp:5060", "udp:", "udp:70000", "udp:5060:interface=example.com", "5060", "udp:x"])
def test_parseUDPDescriptionRefuses(bad: str) -> None:
    with pytest.raises(InvalidSettingsError) as info:
        parseUDPDescription(bad, "listen")
    assert info.value.key == "listen"


def test_parseHostPort() -> None:
    assert parseHostPort("192.0.2.1:5060", "k") == ("192.0.2.1", 5060)
    assert parseHostPort("[2001:DB8::1]:5060", "k") == ("2001:db8::1", 5060)
    assert parseHostPort("2001:db8::1", "k", defaultPort=3478) == ("2001:db8::1", 3478)
    assert parseHostPort("stun.example.com", "k", defaultPort=3478) == ("stun.example.com", 3478)
    for bad in ("192.0.2.1", "192.0.2.1:0", "192.0.2.1:x", ":5060", "[::1", "[::1]x"):
        with pytest.raises(InvalidSettingsError) as info:
            parseHostPort(bad, "next-hop")
        assert info.value.key == "next-hop"


# ---- client + stun on a Clock -------------------------------------------------------------------------------


def test_clientResolvesAndKeepsAliveAgainstStunRole() -> None:
    net = NetReactor()
    server = STUNRole(net, udp=(3478, "127.0.0.1"))
    client = _clientFor(net, ("127.0.0.1", 3478), interval=10.0)
    server.startService()
    client.startService()
    net.run(1)
    assert client.publicAddress == IPv4Address("UDP", "127.0.0.1", client.listener.address()[1])
    assert client.keepalivesStarted == 1
    net.run(35)
    requests = [d for d, src, dst in net.sent if dst == ("127.0.0.1", 3478) and stun.isSTUN(d)]
    assert 1 + 3 <= len(requests) <= 1 + 4, "a resolve and a keepalive every 8-10 s"
    assert client.failures == 0
    client.stopService()
    server.stopService()
    assert net.getDelayedCalls() == []
    assert net.ports == {}


def _runUntilRetry(net: NetReactor, client: ClientRole, limit: float = 300.0) -> float:
    """Advance until the client has scheduled a retry; returns the time it did."""
    for _ in range(int(limit / 0.25)):
        if client._retry is not None and client._retry.active():
            return net.seconds()
        net.advance(0.25)
    raise AssertionError("no retry scheduled")


def test_flowFailureResolvesAgainAfterBackoff() -> None:
    net = NetReactor()
    server = STUNRole(net, udp=(3478, "127.0.0.1"))
    client = _clientFor(net, ("127.0.0.1", 3478), interval=10.0, random=lambda: 0.0)
    server.startService()
    client.startService()
    net.run(1)
    assert client.keepalivesStarted == 1
    net.drop = True  # the path dies: the next keepalive (8-10 s from now) goes unanswered for 39.5 s
    failedAt = _runUntilRetry(net, client)
    assert client.failures == 1
    assert 8 + 39.5 - 0.3 <= failedAt <= 1 + 10 + 39.5 + 0.3, "keepalive at 8-10 s after the resolve, unanswered for 39.5 s"
    assert client._retry.getTime() - failedAt == pytest.approx(30.0, abs=0.25), "50 % of 30 s x 2^1 (random=0)"
    net.drop = False
    net.run(31)
    assert client.keepalivesStarted == 2, "resolved again and resumed"
    assert client.backoff.failures == 0, "a success resets the backoff"
    client.stopService()
    server.stopService()
    assert net.getDelayedCalls() == []


def test_unreachableServerRetriesWithGrowingBackoff() -> None:
    net = NetReactor()
    client = _clientFor(net, ("127.0.0.1", 3478), random=lambda: 0.0)
    client.startService()
    first = _runUntilRetry(net, client)
    assert first == pytest.approx(39.5, abs=0.3), "RFC 8489 gives up at 39.5 s"
    assert client.publicAddress is None
    assert client._retry.getTime() - first == pytest.approx(30.0, abs=0.25), "50 % of 30 s x 2^1"
    net.advance(30.0)
    second = _runUntilRetry(net, client)
    assert client._retry.getTime() - second == pytest.approx(60.0, abs=0.25), "doubled"
    client.stopService()
    assert net.getDelayedCalls() == []
    assert net.ports == {}


def test_stopDuringResolutionLeavesNothing() -> None:
    net = NetReactor()
    client = _clientFor(net, ("127.0.0.1", 3478))
    client.startService()
    net.run(2)
    client.stopService()
    assert net.getDelayedCalls() == []
    assert net.ports == {}


def test_clientRefusesUnknownDomain() -> None:
    with pytest.raises(InvalidSettingsError) as info:
        ClientRole(Clock(), ("127.0.0.1", 5060), {"a": NATSettings()}, "b")
    assert info.value.key == "domain"


# ---- client registering with the edge on a Clock ------------------------------------------------------------


def test_clientRegistersWithEdgeAndUsesFlowTimer() -> None:
    net = NetReactor()
    edge = EdgeRole(net, udp=(5060, "127.0.0.1"), domain="example.com", flowTimer=20)
    client = _clientFor(net, ("127.0.0.1", 5060), interval=90.0, register="alice@example.com")
    edge.startService()
    client.startService()
    net.run(1)
    assert client.flowTimer == 20
    assert "alice" in edge.registry.users
    contact = edge.registry.users["alice"][1]
    assert (contact.host, contact.port) == ("127.0.0.1", client.listener.address()[1])
    sentAt = len(net.sent)
    net.run(41)
    keepalives = [d for d, src, dst in net.sent[sentAt:] if dst == ("127.0.0.1", 5060) and stun.isSTUN(d)]
    assert 2 <= len(keepalives) <= 3, "every 16-20 s (Flow-Timer 20), not every 72-90 s"
    answers = [d for d, src, dst in net.sent[sentAt:] if src == ("127.0.0.1", 5060) and stun.isSTUN(d)]
    assert len(answers) == len(keepalives), "the edge answers STUN on its SIP port"
    assert client.failures == 0
    client.stopService()
    edge.stopService()
    assert net.getDelayedCalls() == [], "no registry expiry timer either"
    assert net.ports == {}


def test_registerRetransmitsThenTimesOut() -> None:
    net = NetReactor()
    ua = RegisterClient(net, "alice@example.com", ("127.0.0.1", 5999))
    port = net.listenUDP(0, ua)
    failures: List[Failure] = []
    ua.register(("127.0.0.1", port.port)).addErrback(failures.append)
    net.run(33, step=0.25)
    writes = [src for d, src, dst in net.sent if dst == ("127.0.0.1", 5999)]
    # RFC 3261 Timer E: 0, 0.5, 1.5, 3.5, 7.5, then every 4 s until Timer F (32 s)
    assert len(writes) == 11
    assert failures and failures[0].check(RegistrationError)
    assert failures[0].value.code is None
    assert net.getDelayedCalls() == []
    port.stopListening()


def test_registerErrorResponse() -> None:
    net = NetReactor()
    edge = EdgeRole(net, udp=(5060, "127.0.0.1"), domain="example.com")
    edge.startService()
    ua = RegisterClient(net, "alice@other.example", ("127.0.0.1", 5060))
    port = net.listenUDP(0, ua)
    results: List[Any] = []
    ua.register(("127.0.0.1", port.port)).addBoth(results.append)
    net.run(1)
    # RegisterProxy answers nothing for a foreign domain (Twisted's registry errback is swallowed), so this is
    # a timeout, never a crash.
    net.run(33, step=0.5)
    assert isinstance(results[0], Failure) and results[0].check(RegistrationError)
    port.stopListening()
    edge.stopService()
    assert net.getDelayedCalls() == []


def test_registerClientIgnoresGarbageAndStrangers() -> None:
    net = NetReactor()
    ua = RegisterClient(net, "sip:alice@example.com", ("127.0.0.1", 5999))
    port = net.listenUDP(0, ua)
    d = ua.register(("127.0.0.1", port.port))
    ua.datagramReceived(b"\xff\x00garbage\r\n\r\n", ("127.0.0.1", 5999))
    ua.datagramReceived(b"SIP/2.0 200 OK\r\nCall-ID: other\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n",
                        ("127.0.0.1", 5999))
    assert not d.called
    ua.datagramReceived(
        f"SIP/2.0 403 Forbidden\r\nCall-ID: {ua.callId}\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n".encode(),
        ("127.0.0.1", 5999))
    net.run(0.1)
    failures: List[Failure] = []
    d.addErrback(failures.append)
    assert failures[0].value.code == 403
    assert net.getDelayedCalls() == []
    port.stopListening()


def test_registerClientNeedsAnAOR() -> None:
    with pytest.raises(InvalidSettingsError) as info:
        RegisterClient(Clock(), "example.com", ("127.0.0.1", 5060))
    assert info.value.key == "register"


def test_edgeRefusesBadFlowTimer() -> None:
    with pytest.raises(InvalidSettingsError):
        EdgeRole(Clock(), udp=(0, "127.0.0.1"), flowTimer=0)


def test_stunRoleAlternateNeedsPrimaryInterface() -> None:
    with pytest.raises(InvalidSettingsError) as info:
        STUNRole(Clock(), udp=(3478, ""), alternate=("127.0.0.2", 3479))
    assert info.value.key == "alternate"


def test_stunRoleRateLimitsPerSource() -> None:
    net = NetReactor()
    server = STUNRole(net, udp=(3478, "127.0.0.1"), rateLimit=(1.0, 2))
    server.startService()
    client = net.listenUDP(0, protocol.DatagramProtocol())
    answers: List[bytes] = []
    client.protocol.datagramReceived = lambda data, addr: answers.append(data)  # type: ignore[method-assign]
    for _ in range(5):
        client.write(stun.Message(stun.BINDING, stun.REQUEST).encode(), ("127.0.0.1", 3478))
    net.run(0.2)
    assert len(answers) == 2, "burst 2, then limited"
    client.stopListening()
    server.stopService()
    assert net.ports == {}


# ---- the edge on real loopback sockets ----------------------------------------------------------------------

REGISTER = (
    "REGISTER sip:example.com SIP/2.0\r\n"
    "Via: SIP/2.0/{transport} 127.0.0.1:{port};branch=z9hG4bK{branch};rport;keep\r\n"
    "To: <sip:bob@example.com>\r\n"
    "From: <sip:bob@example.com>;tag=1\r\n"
    "Call-ID: {branch}@test\r\n"
    "CSeq: 1 REGISTER\r\n"
    "Contact: <sip:bob@127.0.0.1:{port}>\r\n"
    "Content-Length: 0\r\n\r\n"
)


class _Collector(protocol.DatagramProtocol):
    def __init__(self) -> None:
        self.received: defer.DeferredQueue[Tuple[bytes, Any]] = defer.DeferredQueue()

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.received.put((data, addr))


async def _next(queue: defer.DeferredQueue[Any], reactor: Any, timeout: float = 5.0) -> Any:
    d = queue.get()
    d.addTimeout(timeout, reactor)
    return await d


@pytest_twisted.ensureDeferred
async def test_registerProxyAnswersRegisterAndStunOnTheSamePort() -> None:
    from twisted.internet import reactor

    edge = EdgeRole(reactor, udp=(0, "127.0.0.1"), domain="example.com", flowTimer=30)
    edge.startService()
    collector = _Collector()
    port = reactor.listenUDP(0, collector, interface="127.0.0.1")
    try:
        server = edge.udp.address()
        me = port.getHost().port
        port.write(REGISTER.format(transport="UDP", port=me, branch="a1").encode(), server)
        data, source = await _next(collector.received, reactor)
        assert source == server
        assert data.startswith(b"SIP/2.0 200 OK\r\n")
        assert b"Flow-Timer: 30\r\n" in data
        assert b";keep=30" in data, "RFC 6223 offer answered"
        assert "bob" in edge.registry.users
        request = stun.Message(stun.BINDING, stun.REQUEST)
        port.write(request.encode(), server)
        data, source = await _next(collector.received, reactor)
        assert source == server, "same port"
        answer = stun.decode(data)
        assert answer.transactionId == request.transactionId
        assert answer.messageClass == stun.SUCCESS
        assert answer.mappedAddress == ("127.0.0.1", me)
    finally:
        await port.stopListening()
        await edge.stopService()


class _StreamCollector(protocol.Protocol):
    def __init__(self) -> None:
        self.received: defer.DeferredQueue[bytes] = defer.DeferredQueue()

    def dataReceived(self, data: bytes) -> None:
        self.received.put(data)


@pytest_twisted.ensureDeferred
async def test_edgeTcpAnswersPingsAndRegisters() -> None:
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    tcpPort = sock.getsockname()[1]
    sock.close()
    edge = EdgeRole(reactor, udp=(0, "127.0.0.1"), tcp=f"tcp:{tcpPort}:interface=127.0.0.1", domain="example.com",
                    flowTimer=45)
    edge.startService()
    client: Optional[_StreamCollector] = None
    try:
        await _waitFor(lambda: edge.tcp is not None and edge.tcp.port is not None, reactor)
        client = _StreamCollector()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", tcpPort), client)
        client.transport.write(b"\r\n\r\n")
        assert await _next(client.received, reactor) == b"\r\n"
        client.transport.write(REGISTER.format(transport="TCP", port=5999, branch="t1").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += await _next(client.received, reactor)
        assert data.startswith(b"SIP/2.0 200 OK\r\n")
        assert b"Flow-Timer: 45\r\n" in data
        assert b";keep=45" in data
        assert "bob" in edge.registry.users
        client.transport.write(b"OPTIONS sip:example.com SIP/2.0\r\nCall-ID: o\r\nCSeq: 2 OPTIONS\r\nContent-Length: 0\r\n\r\n")
        data = await _next(client.received, reactor)
        assert data.startswith(b"SIP/2.0 200 OK\r\n")
        client.transport.write(b"INVITE sip:x@example.com SIP/2.0\r\nCall-ID: i\r\nCSeq: 3 INVITE\r\nContent-Length: 0\r\n\r\n")
        data = await _next(client.received, reactor)
        assert data.startswith(b"SIP/2.0 501 ")
    finally:
        if client is not None and client.transport is not None:
            client.transport.loseConnection()
        await edge.stopService()


async def _waitFor(condition: Any, reactor: Any, timeout: float = 5.0) -> None:
    from twisted.internet import task

    waited = 0.0
    while not condition():
        await task.deferLater(reactor, 0.01)
        waited += 0.01
        assert waited < timeout, "condition never became true"


@pytest_twisted.ensureDeferred
async def test_stunRoleRfc5780AnswersFromTheAlternateSocket() -> None:
    from twisted.internet import reactor

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    primaryPort = probe.getsockname()[1]
    probe.close()
    alternatePort = primaryPort + 1 if primaryPort < 65000 else primaryPort - 1
    server = STUNRole(reactor, udp=(primaryPort, "127.0.0.1"), alternate=("127.0.0.2", alternatePort))
    server.startService()
    collector = _Collector()
    port = reactor.listenUDP(0, collector, interface="127.0.0.1")
    try:
        assert len(server.sockets) == 4
        plain = stun.Message(stun.BINDING, stun.REQUEST)
        port.write(plain.encode(), ("127.0.0.1", primaryPort))
        data, source = await _next(collector.received, reactor)
        assert source == ("127.0.0.1", primaryPort)
        answer = stun.decode(data)
        assert answer.otherAddress == ("127.0.0.2", alternatePort)
        change = stun.Message(stun.BINDING, stun.REQUEST, attributes=[stun.ChangeRequest(True, True)])
        port.write(change.encode(), ("127.0.0.1", primaryPort))
        data, source = await _next(collector.received, reactor)
        assert source == ("127.0.0.2", alternatePort), "CHANGE-REQUEST honoured from the other socket"
        assert stun.decode(data).transactionId == change.transactionId
    finally:
        await port.stopListening()
        await server.stopService()


@pytest_twisted.ensureDeferred
async def test_clientRoleStopsCleanlyOnTheRealReactor() -> None:
    from twisted.internet import reactor

    before = set(reactor.getDelayedCalls())
    server = STUNRole(reactor, udp=(0, "127.0.0.1"), rateLimit=None)
    server.startService()
    client = ClientRole(reactor, server.address, {"default": NATSettings(udpKeepaliveInterval=0.2)}, "default",
                        listen=(0, "127.0.0.1"))
    client.startService()
    address = await client.ready
    assert address.port == client.listener.address()[1]
    from twisted.internet import task

    await task.deferLater(reactor, 0.5)
    assert client.controller.stats["keepalive.answered"] >= 1
    await client.stopService()
    await server.stopService()
    assert set(reactor.getDelayedCalls()) <= before, "no timer left"


def test_edgeSurvivesGarbageOnItsSIPPort() -> None:
    net = NetReactor()
    edge = EdgeRole(net, udp=(5060, "127.0.0.1"), domain="example.com")
    edge.startService()
    client = net.listenUDP(0, protocol.DatagramProtocol())
    answers: List[bytes] = []
    client.protocol.datagramReceived = lambda data, addr: answers.append(data)  # type: ignore[method-assign]
    for junk in (b"\xff\xfe\x00garbage", b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n", b"\r\n\r\n"):
        client.write(junk, ("127.0.0.1", 5060))
    request = stun.Message(stun.BINDING, stun.REQUEST)
    client.write(request.encode(), ("127.0.0.1", 5060))
    net.run(0.2)
    assert [stun.decode(a).transactionId for a in answers] == [request.transactionId], "still answering"
    client.stopListening()
    edge.stopService()
    assert net.getDelayedCalls() == []


def test_clientRefreshesItsRegistrationBeforeItLapses() -> None:
    net = NetReactor()
    edge = EdgeRole(net, udp=(5060, "127.0.0.1"), domain="example.com", flowTimer=600)
    client = _clientFor(net, ("127.0.0.1", 5060), register="alice@example.com")
    edge.startService()
    client.startService()
    net.run(1)
    assert client.flowTimer == 600
    registers = lambda: [d for d, src, dst in net.sent if d.startswith(b"REGISTER ")]  # noqa: E731
    assert len(registers()) == 1
    # RegisterProxy grants 3600 s: refreshed at 90 % of that.
    net.run(0.9 * 3600 + 1, step=5.0)
    assert len(registers()) == 2
    assert client.failures == 0
    assert client._refresh is not None and client._refresh.active()
    client.stopService()
    edge.stopService()
    assert net.getDelayedCalls() == []


def test_failedRefreshIsAFlowFailure() -> None:
    net = NetReactor()
    edge = EdgeRole(net, udp=(5060, "127.0.0.1"), domain="example.com")
    # Keepalives off (interval 0), so the only thing that can notice the dead registrar is the refresh.
    client = _clientFor(net, ("127.0.0.1", 5060), register="alice@example.com", random=lambda: 0.0, interval=0.0)
    edge.startService()
    client.startService()
    net.run(1)
    assert client.keepalivesStarted == 1 and client.failures == 0
    edge.stopService()  # the registrar goes away
    net.run(0.9 * 3600 + 33, step=1.0)  # the refresh REGISTER times out (Timer F, 32 s)
    assert client.failures == 1
    assert client._retry is not None and client._retry.active()
    client.stopService()
    assert net.getDelayedCalls() == []


# ---- SIP over TCP at the edge: UTF-8 split across reads ----------------------------------------------------


class _Registry:
    def __init__(self) -> None:
        self.registered: List[Any] = []
        self.unregistered: List[str] = []

    def unregisterAddress(self, domainURL: Any, logicalURL: Any, physicalURL: Any) -> Any:
        from twisted.internet import defer

        self.unregistered.append(logicalURL.toString())
        return defer.succeed(None)

    def registerAddress(self, domainURL: Any, logicalURL: Any, physicalURL: Any) -> Any:
        from twisted.internet import defer

        self.registered.append((logicalURL.toString(), physicalURL.toString()))
        return defer.succeed(None)


def _streamEdge() -> Any:
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    from twisted_sipnat.roles import SIPStreamProtocol

    registry = _Registry()
    edge = SIPStreamProtocol(registry, flowTimer=None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.10", 40000))
    edge.makeConnection(transport)
    return edge, transport, registry


_UTF8_REGISTER = (
    "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.10:40000;branch=z9hG4bK1\r\n"
    'From: "Zoë" <sip:zoe@example.com>;tag=1\r\nTo: "Zoë" <sip:zoe@example.com>\r\nCall-ID: u@x\r\n'
    "CSeq: 1 REGISTER\r\nContact: <sip:zoe@192.0.2.10:40000;transport=tcp>\r\nContent-Length: 0\r\n\r\n"
).encode()


def test_edge_stream_waits_for_a_character_split_between_reads() -> None:
    edge, transport, registry = _streamEdge()
    cut = _UTF8_REGISTER.index("ë".encode()) + 1  # inside the two-byte character
    edge.dataReceived(_UTF8_REGISTER[:cut])
    edge.dataReceived(_UTF8_REGISTER[cut:])
    assert transport.value().startswith(b"SIP/2.0 200 OK\r\n")
    assert not transport.disconnecting
    assert len(registry.registered) == 1


def test_edge_stream_closes_on_bytes_that_are_not_utf8() -> None:
    edge, transport, registry = _streamEdge()
    edge.dataReceived(b"REGISTER sip:\xff\xfe SIP/2.0\r\n")
    assert transport.disconnecting and transport.value() == b""


def test_edge_fills_a_bare_rport_behind_a_port_preserving_nat() -> None:
    """RFC 3581 §4: the 200 OK goes to the source port even when it equals the Via port (Twisted left it True)."""
    from twisted.protocols import sip

    from twisted_sipnat.roles import _registrarClasses

    EdgeRegisterProxy, ClockedRegistry = _registrarClasses()
    proxy = EdgeRegisterProxy(host="203.0.113.20", port=5062)
    message = sip.Request("REGISTER", "sip:example.com")
    message.addHeader("via", "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK1;rport")
    proxy._fixupNAT(message, ("203.0.113.1", 5060))
    via = sip.parseViaHeader(message.headers["via"][0])
    assert (via.received, via.rport) == ("203.0.113.1", 5060)


# ---- review findings: registry expiry, TCP unregistration, listener failures, stray refresh -------------------


def _registry(clock: Any) -> Any:
    from twisted_sipnat.roles import _registrarClasses

    _, ClockedRegistry = _registrarClasses()
    return ClockedRegistry("example.com", clock)


def test_edge_registry_expires_registrations_and_takes_them_again() -> None:
    from twisted.internet.task import Clock
    from twisted.protocols import sip

    clock = Clock()
    registry = _registry(clock)
    aor, contact = sip.URL("example.com", "alice"), sip.URL("203.0.113.1", "alice", port=5060)
    registry.registerAddress(sip.URL("example.com"), aor, contact)
    clock.advance(3601)  # Twisted's own expiry raised AlreadyCalled here and kept the user
    assert "alice" not in registry.users
    registry.registerAddress(sip.URL("example.com"), aor, contact)  # and this raised on the dead timer
    assert "alice" in registry.users
    registry.clear()
    assert clock.getDelayedCalls() == []


def test_edge_stream_unregisters_on_expires_zero() -> None:
    edge, transport, registry = _streamEdge()
    edge.dataReceived(_UTF8_REGISTER.replace(b"Content-Length: 0", b"Expires: 0\r\nContent-Length: 0"))
    assert transport.value().startswith(b"SIP/2.0 200 OK\r\n")
    assert registry.registered == [] and registry.unregistered == ["sip:zoe@example.com"]


def test_edge_refuses_a_bad_tcp_description_and_fails_on_a_taken_port() -> None:
    import socket as _socket

    from twisted.internet import reactor as globalReactor

    from twisted_sipnat.errors import InvalidSettingsError
    from twisted_sipnat.roles import _StreamListener

    with pytest.raises(InvalidSettingsError, match="tcp"):
        _StreamListener(globalReactor, "bogus:1", None)
    taken = _socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        from twisted.internet.protocol import Factory, Protocol

        listener = _StreamListener(globalReactor, f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1",
                                   Factory.forProtocol(Protocol))
        with pytest.raises(Exception, match="(?i)address already in use|CannotListen"):
            listener.startService()
        assert not listener.running and listener.port is None
    finally:
        taken.close()


def test_config_is_refused_for_roles_that_do_not_read_it() -> None:
    from twisted_sipnat.errors import InvalidSettingsError
    from twisted_sipnat.tap import Options, buildService

    for role in ("edge", "stun"):
        options = Options()
        options.parseOptions(["--config", "/nonexistent.ini", role])
        with pytest.raises(InvalidSettingsError, match="config"):
            buildService(options, None)
