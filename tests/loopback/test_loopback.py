"""
Real sockets on 127.0.0.1 with the real reactor (pytest-twisted): the controller against our own responder roles,
and a ``twisted.protocols.sip`` protocol sharing the socket.
"""

from __future__ import annotations

from typing import Any, List

import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, DatagramProtocol, Factory, Protocol

from twisted_sipnat import (
    NATSettings,
    NATTraversalController,
    SharedDatagramProtocol,
    SharedStreamFactory,
)
from twisted_sipnat.testing import RecordingObserver

pytestmark = pytest.mark.timeout(30)


def reactor() -> Any:
    from twisted.internet import reactor as r

    return r


def sleep(seconds: float) -> Deferred[None]:
    from twisted.internet import task

    return task.deferLater(reactor(), seconds, lambda: None)


Observer = RecordingObserver


class SIPRecorder(DatagramProtocol):
    def __init__(self) -> None:
        self.received: List[bytes] = []

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.received.append(datagram)


@pytest_twisted.inlineCallbacks
def test_resolve_and_keep_alive_against_our_responder_over_udp() -> Any:
    r = reactor()
    server = r.listenUDP(0, SharedDatagramProtocol(stunResponder=True), interface="127.0.0.1")
    controller = NATTraversalController(NATSettings(udpKeepaliveInterval=0.2), reactor=r)
    sip = SIPRecorder()
    client = SharedDatagramProtocol(sipProtocol=sip, controller=controller)
    port = r.listenUDP(0, client, interface="127.0.0.1")
    observer = Observer()
    try:
        hop = ("127.0.0.1", server.getHost().port)
        address = yield controller.resolvePublicAddress(None, client, hop, observer=observer)
        assert address == IPv4Address("UDP", "127.0.0.1", port.getHost().port)
        assert controller.refreshNATBinding(client, observer) is True
        yield sleep(1.2)
        assert controller.stats["keepalive.answered"] >= 4
        assert observer.failures == []
        # the SIP protocol still gets its own datagrams on the shared port
        sender = r.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
        sender.write(b"OPTIONS sip:a@127.0.0.1 SIP/2.0\r\n\r\n", ("127.0.0.1", port.getHost().port))
        yield sleep(0.1)
        yield sender.stopListening()
        assert sip.received == [b"OPTIONS sip:a@127.0.0.1 SIP/2.0\r\n\r\n"]
    finally:
        controller.freeResources()
        yield port.stopListening()
        yield server.stopListening()
    assert [c for c in r.getDelayedCalls() if getattr(c.func, "__self__", None) is controller] == []


@pytest_twisted.inlineCallbacks
def test_twisted_sip_proxy_behind_the_shared_socket_still_gets_sip() -> Any:
    from twisted.protocols import sip as tsip

    r = reactor()
    received: List[Any] = []

    class RecordingProxy(tsip.Proxy):
        def handle_request(self, message: Any, addr: Any) -> None:
            received.append((message.method, message.uri.toString()))

    proxy = RecordingProxy(host="127.0.0.1", port=5060)
    shared = SharedDatagramProtocol(sipProtocol=proxy, stunResponder=True)
    port = r.listenUDP(0, shared, interface="127.0.0.1")
    controller = NATTraversalController(NATSettings(), reactor=r)
    client = SharedDatagramProtocol(controller=controller)
    clientPort = r.listenUDP(0, client, interface="127.0.0.1")
    try:
        target = ("127.0.0.1", port.getHost().port)
        clientPort.write(
            b"OPTIONS sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n"
            b"From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:bob@127.0.0.1>\r\nCall-ID: x@y\r\nCSeq: 1 OPTIONS\r\n"
            b"Content-Length: 0\r\n\r\n",
            target,
        )
        address = yield controller.resolvePublicAddress(None, client, target)  # STUN on the same port
        assert address.port == clientPort.getHost().port
        yield sleep(0.1)
        assert received == [("OPTIONS", "sip:bob@127.0.0.1")]
    finally:
        controller.freeResources()
        yield clientPort.stopListening()
        yield port.stopListening()


class SIPStream(Protocol):
    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


@pytest_twisted.inlineCallbacks
def test_tcp_client_keeps_a_flow_alive_against_our_pong_responder() -> Any:
    r = reactor()
    serverSide: List[Any] = []

    class ServerSIP(SIPStream):
        def connectionMade(self) -> None:
            serverSide.append(self)

    listening = r.listenTCP(0, SharedStreamFactory(Factory.forProtocol(ServerSIP), pongResponder=True),
                            interface="127.0.0.1")
    controller = NATTraversalController(NATSettings(tcpKeepaliveInterval=0.2, pongTimeout=0.5), reactor=r)
    connected: Deferred[Any] = Deferred()

    class ClientSIP(SIPStream):
        def connectionMade(self) -> None:
            connected.callback(self)

    clientFactory = SharedStreamFactory(ClientFactory.forProtocol(ClientSIP), controller=controller)
    connector = r.connectTCP("127.0.0.1", listening.getHost().port, clientFactory)
    observer = Observer()
    try:
        sipClient = yield connected
        shared = sipClient.transport
        assert controller.refreshNATBinding(shared, observer) is True
        message = b"MESSAGE sip:b@x SIP/2.0\r\nContent-Length: 4\r\n\r\n\r\n\r\n"
        for _ in range(5):
            sipClient.transport.write(message)
            yield sleep(0.15)
        assert observer.failures == []
        assert controller.stats["keepalive.pongs"] >= 3
        assert serverSide[0].received == message * 5  # pings never reached the server's SIP protocol
        assert shared.stats["pongs.received"] >= 3
        # the server goes away: the flow fails with a connection loss
        for p in serverSide:
            p.transport.loseConnection()
        yield sleep(0.2)
        assert len(observer.failures) == 1
    finally:
        controller.freeResources()
        connector.disconnect()
        yield listening.stopListening()


@pytest_twisted.inlineCallbacks
def test_keepalive_writes_check_a_destination_once_then_use_the_sockets_sendto() -> Any:
    r = reactor()
    sink = SIPRecorder()
    sinkPort = r.listenUDP(0, sink, interface="127.0.0.1")
    shared = SharedDatagramProtocol()
    port = r.listenUDP(0, shared, interface="127.0.0.1")
    hop = ("127.0.0.1", sinkPort.getHost().port)
    portWrites: List[Any] = []
    realWrite = port.write

    def countingWrite(data: bytes, addr: Any = None) -> Any:
        portWrites.append(addr)
        return realWrite(data, addr)

    port.write = countingWrite  # type: ignore[method-assign]
    try:
        for i in range(3):
            shared.writeKeepalive(b"\x00\x01\x00\x00" + bytes([i]) * 16, hop)
        yield sleep(0.1)
        assert [d[4] for d in sink.received] == [0, 1, 2]  # every datagram arrived, in order
        assert portWrites == [hop]  # only the first went through udp.Port.write's address checks

        # A name is not an address: the port refuses it every time (it is never remembered), and says why.
        shared.writeKeepalive(b"\x00\x01\x00\x00" + b"n" * 16, ("localhost", hop[1]))
        shared.writeKeepalive(b"\x00\x01\x00\x00" + b"n" * 16, ("localhost", hop[1]))
        assert portWrites[1:] == [("localhost", hop[1])] * 2
        assert shared.stats["write.errors"] == 2

        # If the socket's sendto fails, the datagram goes through udp.Port.write after all (its error rules).
        def failing(data: bytes, addr: Any) -> Any:
            raise InterruptedError(4, "Interrupted system call")

        shared.socketSendto = failing
        shared.writeKeepalive(b"\x00\x01\x00\x00" + b"e" * 16, hop)
        yield sleep(0.1)
        assert sink.received[-1][4:5] == b"e" and portWrites[-1] == hop
    finally:
        yield port.stopListening()
        yield sinkPort.stopListening()
    assert shared.vettedDestinations == 0
