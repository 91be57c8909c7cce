"""twisted_sipnat.service.edge: the edge role on a simulated network and on real loopback sockets."""

from __future__ import annotations

import socket
from typing import List, Optional

import pytest
import pytest_twisted
from twisted.internet import protocol
from twisted.internet.task import Clock

from twisted_sipnat import stun
from twisted_sipnat.errors import InvalidSettingsError
from twisted_sipnat.service.edge import EdgeRole

from .support import REGISTER, Collector, NetReactor, StreamCollector, nextItem, waitFor


def test_edgeRefusesBadFlowTimer() -> None:
    with pytest.raises(InvalidSettingsError):
        EdgeRole(Clock(), udp=(0, "127.0.0.1"), flowTimer=0)


@pytest_twisted.ensureDeferred
async def test_registerProxyAnswersRegisterAndStunOnTheSamePort() -> None:
    from twisted.internet import reactor

    edge = EdgeRole(reactor, udp=(0, "127.0.0.1"), domain="example.com", flowTimer=30)
    edge.startService()
    collector = Collector()
    port = reactor.listenUDP(0, collector, interface="127.0.0.1")
    try:
        server = edge.udp.address()
        me = port.getHost().port
        port.write(REGISTER.format(transport="UDP", port=me, branch="a1").encode(), server)
        data, source = await nextItem(collector.received, reactor)
        assert source == server
        assert data.startswith(b"SIP/2.0 200 OK\r\n")
        assert b"Flow-Timer: 30\r\n" in data
        assert b";keep=30" in data, "RFC 6223 offer answered"
        assert edge.registry.lookup("sip:bob@example.com", reactor.seconds())
        request = stun.Message(stun.BINDING, stun.REQUEST)
        port.write(request.encode(), server)
        data, source = await nextItem(collector.received, reactor)
        assert source == server, "same port"
        answer = stun.decode(data)
        assert answer.transactionId == request.transactionId
        assert answer.messageClass == stun.SUCCESS
        assert answer.mappedAddress == ("127.0.0.1", me)
    finally:
        await port.stopListening()
        await edge.stopService()


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
    client: Optional[StreamCollector] = None
    try:
        await waitFor(lambda: edge.tcp is not None and edge.tcp.port is not None, reactor)
        client = StreamCollector()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", tcpPort), client)
        client.transport.write(b"\r\n\r\n")
        assert await nextItem(client.received, reactor) == b"\r\n"
        client.transport.write(REGISTER.format(transport="TCP", port=5999, branch="t1").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += await nextItem(client.received, reactor)
        assert data.startswith(b"SIP/2.0 200 OK\r\n")
        assert b"Flow-Timer: 45\r\n" in data
        assert b";keep=45" in data
        assert edge.registry.lookup("sip:bob@example.com", reactor.seconds())
        dialog = (b"Via: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bKo\r\nFrom: <sip:bob@example.com>;tag=2\r\n"
                  b"To: <sip:example.com>\r\n")
        client.transport.write(b"OPTIONS sip:example.com SIP/2.0\r\n" + dialog
                               + b"Call-ID: o\r\nCSeq: 2 OPTIONS\r\nContent-Length: 0\r\n\r\n")
        data = await nextItem(client.received, reactor)
        assert data.startswith(b"SIP/2.0 200 OK\r\n")
        client.transport.write(b"INVITE sip:x@example.com SIP/2.0\r\n" + dialog
                               + b"Call-ID: i\r\nCSeq: 3 INVITE\r\nContent-Length: 0\r\n\r\n")
        data = await nextItem(client.received, reactor)
        assert data.startswith(b"SIP/2.0 404 "), "x@example.com is not registered"
    finally:
        if client is not None and client.transport is not None:
            client.transport.loseConnection()
        await edge.stopService()


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


def test_edgeReportsTheSTUNKeepalivesItAnswersOnItsSIPPort() -> None:
    from twisted_sipnat.service.figures import Figures

    net = NetReactor()
    edge = EdgeRole(net, udp=(5060, "127.0.0.1"), domain="example.com")
    edge.startService()
    client = net.listenUDP(0, protocol.DatagramProtocol())
    for _ in range(3):
        client.write(stun.Message(stun.BINDING, stun.REQUEST).encode(), ("127.0.0.1", 5060))
    net.run(0.2)
    figures = Figures()
    edge.reportFigures(figures)
    assert figures.get("sipnat_stun_requests_total", result="answered") == 3
    client.stopListening()
    edge.stopService()
