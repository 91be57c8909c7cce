"""
What the service tests share: a simulated loopback network on a ``task.Clock``, and collectors for real sockets.

``NetReactor`` is a ``Clock`` that also implements ``listenUDP``, delivering datagrams between in-memory ports
on one host, so whole roles run against each other in simulated time.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from twisted.internet import defer, protocol
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock

from twisted_sipnat import NATSettings
from twisted_sipnat.service.client import ClientRole

HostPort = Tuple[str, int]


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


def clientFor(net: NetReactor, nextHop: Any, **kw: Any) -> ClientRole:
    """A client role on ``net`` listening on a free loopback port, with a keepalive ``interval`` (default 10 s)."""
    settings = {"default": NATSettings(udpKeepaliveInterval=kw.pop("interval", 10.0))}
    return ClientRole(net, nextHop, settings, "default", listen=(0, "127.0.0.1"), **kw)


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


class Collector(protocol.DatagramProtocol):
    """Every datagram received, in a queue."""

    def __init__(self) -> None:
        self.received: defer.DeferredQueue[Tuple[bytes, Any]] = defer.DeferredQueue()

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.received.put((data, addr))


class StreamCollector(protocol.Protocol):
    """Every chunk of a stream received, in a queue."""

    def __init__(self) -> None:
        self.received: defer.DeferredQueue[bytes] = defer.DeferredQueue()

    def dataReceived(self, data: bytes) -> None:
        self.received.put(data)


async def nextItem(queue: defer.DeferredQueue[Any], reactor: Any, timeout: float = 5.0) -> Any:
    d = queue.get()
    d.addTimeout(timeout, reactor)
    return await d


async def waitFor(condition: Any, reactor: Any, timeout: float = 5.0) -> None:
    from twisted.internet import task

    waited = 0.0
    while not condition():
        await task.deferLater(reactor, 0.01)
        waited += 0.01
        assert waited < timeout, "condition never became true"
