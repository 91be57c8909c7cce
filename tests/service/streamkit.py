"""
What the stream REGISTER client's tests share: an endpoint whose connections are ``StringTransport``\\ s the test
accepts, refuses or closes, and the reading of what the client wrote on one.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from twisted_sipnat import NATSettings, NATTraversalController
from twisted_sipnat.core.messagebuffer import MessageBuffer
from twisted_sipnat.core.sip import Request, Response, parse, responseTo
from twisted_sipnat.core.sipframing import IncomingSplitter, Ping, SIPData
from twisted_sipnat.service.sipstreamclient import StreamRegisterClient

REGISTRAR = ("192.0.2.1", 5060)
LOCAL = ("10.0.0.2", 40000)
INSTANCE = "urn:uuid:00000000-0000-4000-8000-000000000001"


class Connection:
    """One connection the client asked for: accept it (a ``StringTransport``), refuse it, or close it."""

    def __init__(self, factory: Any, d: defer.Deferred[Any]) -> None:
        self.factory, self.d = factory, d
        self.protocol: Any = None
        self.transport: Optional[StringTransport] = None
        self._read = 0
        self.buffer = MessageBuffer()
        self.splitter = IncomingSplitter("server")
        #: CRLFCRLF pings read by :meth:`requests` so far.
        self.pings = 0

    def accept(self, local: Tuple[str, int] = LOCAL) -> Connection:
        self.transport = StringTransport(IPv4Address("TCP", *local), IPv4Address("TCP", *REGISTRAR))
        self.protocol = self.factory.buildProtocol(IPv4Address("TCP", *REGISTRAR))
        self.protocol.makeConnection(self.transport)
        self.d.callback(self.protocol)
        return self

    def refuse(self) -> None:
        self.d.errback(Failure(ConnectionRefusedError("refused")))

    def receive(self, data: bytes) -> None:
        assert self.protocol is not None
        self.protocol.dataReceived(data)

    def lose(self, reason: Optional[Failure] = None) -> None:
        assert self.protocol is not None
        self.protocol.connectionLost(reason or Failure(ConnectionDone("closed")))

    def written(self) -> bytes:
        """What the client wrote since the last call."""
        assert self.transport is not None
        data = self.transport.value()
        new, self._read = data[self._read:], len(data)
        return new

    def requests(self) -> List[Request]:
        """The SIP requests the client wrote since the last call (keepalives left out)."""
        messages: List[bytes] = []
        for event in self.splitter.feed(self.written()):
            if isinstance(event, SIPData):
                messages += self.buffer.feed(event.data)
            elif isinstance(event, Ping):
                self.pings += 1
        return [m for m in (parse(message, stream=True) for message in messages) if isinstance(m, Request)]

    @property
    def closed(self) -> bool:
        assert self.transport is not None
        return bool(self.transport.disconnecting)


class Endpoint:
    """An ``IStreamClientEndpoint``: each ``connect`` is a :class:`Connection` waiting for the test."""

    def __init__(self) -> None:
        self.connections: List[Connection] = []

    def __call__(self, hop: Tuple[str, int]) -> Endpoint:
        self.hop = hop
        return self

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.connections.append(Connection(factory, d))
        return d

    @property
    def last(self) -> Connection:
        return self.connections[-1]


def streamClient(clock: Any, transport: str = "TCP", controller: Any = None, **kw: Any,
                 ) -> Tuple[StreamRegisterClient, Endpoint, Any]:
    """A client of alice@example.com toward :data:`REGISTRAR` with a fresh controller on ``clock``."""
    endpoint = Endpoint()
    if controller is None:
        controller = NATTraversalController(NATSettings(), reactor=clock)
    client = StreamRegisterClient(clock, "alice@example.com", REGISTRAR, endpoint, controller, transport=transport,
                                  **kw)
    return client, endpoint, controller


def answer(request: Request, code: int = 200, flowTimer: Optional[int] = None, **headers: str) -> bytes:
    """A registrar's response to ``request`` on a stream (Content-Length included), our Contact echoed."""
    response: Response = responseTo(request, code)
    if code == 200:
        response.headers.add("Contact", f"{request.headers.get('Contact')};expires=600")
    if flowTimer is not None:
        response.headers.add("Flow-Timer", str(flowTimer))
    for name, value in headers.items():
        response.headers.add(name.replace("_", "-"), value)
    data = response.toBytes()
    return data
