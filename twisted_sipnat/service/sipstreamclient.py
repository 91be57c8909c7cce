"""
The client role's REGISTER client over TCP or TLS: one connection to the next hop at a time, which is the flow
(RFC 5626 §3.2) its registration names and its CRLF keepalives (§4.4.1) run on.

Why its own shell: on a stream the REGISTER is one message among the bytes of a connection the client opens
itself, shares with the controller's pings and pongs, and can lose.  The rules are those of the UDP client
(:class:`~twisted_sipnat.service.sipclient.RegisterTransactions`: the same registration machine, transaction,
Deferred, failure types and figures); what is new here is the connection:

- it is made on the first :meth:`StreamRegisterClient.register` (and again on the first one after it was lost
  or dropped), through an endpoint the caller builds for the next hop (TCP, or TLS around it:
  :mod:`twisted_sipnat.service.flowtransport`), within :attr:`StreamRegisterClient.connectTimeout`;
- it is a :class:`~twisted_sipnat.protocols.SharedStreamProtocol` (client role), which frames the stream
  (:mod:`twisted_sipnat.core.sipframing`): CRLF pongs go to the controller's ``pongReceived``, pings are written
  only between whole SIP messages, and the SIP bytes reach :class:`_SIPStream`, which cuts them into messages
  with the same definition (:class:`~twisted_sipnat.core.messagebuffer.MessageBuffer`, at most
  ``maxMessageSize`` bytes held).  A stream that cannot be framed closes the connection with one log line;
- :attr:`StreamRegisterClient.socket` is what the role hands to ``refreshNATBinding`` once registered, so the
  keepalives run on this very connection and its loss reaches the role as the controller's
  :class:`~twisted_sipnat.errors.FlowConnectionLost`;
- RFC 3261 §17.1.2.2, §18: no retransmission over a reliable transport, Timer F (64 x T1) all the same.

A REGISTER in progress when the connection goes errbacks
:class:`~twisted_sipnat.errors.RegistrationConnectionLost`; a connection that cannot be made,
:class:`~twisted_sipnat.errors.FlowConnectError`, and a TLS certificate the client refuses,
:class:`~twisted_sipnat.errors.TLSVerificationError`: each a :class:`~twisted_sipnat.errors.RegistrationError`
whose message is one line.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..core.addresses import hostPortOf
from ..core.messagebuffer import MessageBuffer
from ..core.ratelimit import RateLimit
from ..core.sip.digest import Credentials
from ..core.sip.message import Request, Response
from ..core.sipframing import DEFAULT_MAX_MESSAGE_SIZE, SIPFramingError
from ..errors import FlowConnectError, RegistrationConnectionLost, RegistrationError, TLSVerificationError
from ..protocols import SharedStreamFactory
from .figures import IFigureSource
from .flowdemux import REQUEST_BURST, REQUEST_RATE, logRequest
from .sipclient import NextHop, RegisterTransactions

__all__ = ["DEFAULT_CONNECT_TIMEOUT", "StreamRegisterClient", "tlsRefusal"]

HostPort = Tuple[str, int]
#: What makes the connection: called with the next hop, returns an ``IStreamClientEndpoint``.
EndpointFor = Callable[[HostPort], Any]

#: Seconds a connection (TLS handshake excluded: the REGISTER's Timer F covers it) may take to be made: Timer F,
#: the time a REGISTER over UDP would have had to be answered.
DEFAULT_CONNECT_TIMEOUT = 32.0
#: Seconds a stop waits for the connection to close (TLS: the peer's close_notify) before it aborts it.
CLOSE_TIMEOUT = 2.0

log = Logger(namespace="twisted_sipnat.client")


def tlsRefusal(reason: Failure) -> Optional[Tuple[bool, str]]:
    """
    Why a TLS connection failed, when it was TLS that failed it: ``(certificate, why)``, ``certificate`` true
    when the peer's certificate was refused (untrusted, expired, or not naming the expected identity, RFC 5922
    §7); ``None`` for a loss that is not TLS's.  One line, from OpenSSL's and service_identity's own words.
    """
    try:
        from OpenSSL import SSL
        from service_identity import VerificationError
    except ImportError:  # pragma: no cover - Twisted[tls] is a dependency
        return None
    if reason.check(VerificationError):
        errors = getattr(reason.value, "errors", ())
        names = ", ".join(_identity(e) for e in errors)
        return True, f"the certificate does not name {names or 'the server'} (RFC 5922 §7.2)"
    if reason.check(SSL.Error):
        args = getattr(reason.value, "args", ())
        parts = [str(item[-1]) for item in (args[0] if args and isinstance(args[0], list) else [])
                 if isinstance(item, tuple) and item]
        why = "; ".join(parts) or str(reason.value) or "TLS error"
        return "certificate" in why, why
    return None


def _identity(mismatch: Any) -> str:
    """The identity a service_identity mismatch names (a DNS name, as bytes or text, or an IP address)."""
    wanted = getattr(mismatch, "mismatched_id", None)
    name = getattr(wanted, "hostname", None) or getattr(wanted, "ip", None) or mismatch
    return name.decode("ascii", "replace") if isinstance(name, bytes) else str(name)


class _SIPStream(protocol.Protocol):
    """
    The SIP side of one connection: its ``transport`` is the :class:`~twisted_sipnat.protocols.SharedStreamProtocol`
    that took the keepalives out of the stream; the SIP bytes are cut into whole messages for the client.
    """

    noisy = False

    def __init__(self, client: StreamRegisterClient, maxMessageSize: int) -> None:
        self.client = client
        self.buffer = MessageBuffer(maxMessageSize)
        self.closing = False

    def connectionMade(self) -> None:
        self.client._connectionMade(self)

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            messages = self.buffer.feed(data)
        except SIPFramingError as e:
            self.buffer.unframed()
            self.client._unframed(self, e.reason)
            return
        for message in messages:
            if self.closing:
                return
            self.client._streamMessage(self, message)

    def close(self, abort: bool = False) -> None:
        """Nothing more is read; the connection goes (``abort``: at once, as after a framing error)."""
        self.closing = True
        transport: Any = self.transport
        if transport is not None:
            inner = getattr(transport, "transport", None)
            if abort and inner is not None and hasattr(inner, "abortConnection"):
                inner.abortConnection()
            else:
                transport.loseConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.closing = True
        self.buffer.unframed()  # a partial message goes now, with the connection
        self.client._connectionLost(self, reason)


class _SIPStreamFactory(protocol.ClientFactory):
    noisy = False

    def __init__(self, client: StreamRegisterClient, maxMessageSize: int) -> None:
        self.client = client
        self.maxMessageSize = maxMessageSize

    def buildProtocol(self, addr: Any) -> _SIPStream:
        p = _SIPStream(self.client, self.maxMessageSize)
        p.factory = self
        return p


@implementer(IFigureSource)
class StreamRegisterClient(RegisterTransactions, service.Service):
    """
    REGISTER over one TCP or TLS connection to the next hop (module docstring), with the interface of the UDP
    :class:`~twisted_sipnat.service.sipclient.RegisterClient`: :meth:`register` returns a Deferred that fires
    with the 2xx or errbacks a :class:`~twisted_sipnat.errors.RegistrationError`.

    ``endpointFor(nextHop)`` returns the endpoint to connect with (``IStreamClientEndpoint``: TCP, or TLS
    around it); ``controller`` is the :class:`~twisted_sipnat.NATTraversalController` that keeps the flow alive
    (it gets the pongs and the connection's loss).  ``transport`` is ``TCP`` or ``TLS``: the Via's, and the
    Contact's form (``;transport=tcp``, ``sips:``).  ``maxMessageSize`` bounds what one connection buffers of an
    incoming message (the framer in front has the same bound).

    As a service it closes its connection when stopped (the stop waits for the close).  :meth:`dropFlow` closes
    it at once, so that the next :meth:`register` makes a new flow (RFC 5626 §4.4.1: after a flow failure, a new
    connection).
    """

    reliable = True

    def __init__(self, reactor: Any, aor: str, nextHop: NextHop, endpointFor: EndpointFor, controller: Any,
                 transport: str = "TCP", expires: int = 3600, dropInterval: float = 10.0,
                 credentials: Optional[Credentials] = None, instance: Optional[str] = None,
                 regId: Optional[int] = None, maxMessageSize: int = DEFAULT_MAX_MESSAGE_SIZE,
                 connectTimeout: float = DEFAULT_CONNECT_TIMEOUT) -> None:
        transport = transport.upper()
        if transport not in ("TCP", "TLS"):
            raise ValueError(f"a stream REGISTER client is TCP or TLS, not {transport!r}")
        RegisterTransactions.__init__(self, reactor, aor, nextHop, expires, dropInterval, credentials, instance,
                                      regId, transport=transport, what="SIP messages")
        self.controller = controller
        self.connectTimeout = connectTimeout
        #: ``endpointFor(nextHop)``: the endpoint each connection is made with.
        self.endpointFor = endpointFor
        self._factory = SharedStreamFactory(_SIPStreamFactory(self, maxMessageSize), controller=controller,
                                            maxMessageSize=maxMessageSize, transport=transport.lower())
        self._stream: Optional[_SIPStream] = None
        self._connecting: Optional[defer.Deferred[Any]] = None
        self._connectBy: Optional[float] = None
        self._closed: list[defer.Deferred[None]] = []
        self._closeTimer: Any = None
        #: Connections made so far (each one a new flow).
        self.connections = 0
        #: ``answer(request)``: the response to a request the next hop sent over the flow (RFC 3261 §8.2: an
        #: OPTIONS, a call for the AOR), written back on the connection, or ``None`` to send nothing; unset,
        #: requests are counted and dropped as on UDP.  At most
        #: :data:`~twisted_sipnat.service.flowdemux.REQUEST_RATE` a second are answered, as on UDP.
        self.answer: Optional[Callable[[Request], Optional[Response]]] = None
        self._requestRate = RateLimit(REQUEST_RATE, REQUEST_BURST, maxSources=1)

    # -- what the role uses --

    @property
    def socket(self) -> Any:
        """The connection for the controller's calls (``refreshNATBinding``), or ``None`` while there is none."""
        stream = self._stream
        return stream.transport if stream is not None and not stream.closing else None

    #: The same, under the name a per-flow role asks a REGISTER client with a connection of its own for.
    keepaliveSocket = socket

    @property
    def connected(self) -> bool:
        return self.socket is not None

    # -- the UDP client's attachment to the shared socket: a stream client reads its own connection --

    def makeConnection(self, transport: Any) -> None:
        """The role's shared UDP socket is up: nothing of it is used by a stream flow."""

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        """A datagram from the next hop on the UDP socket: not this flow's (its responses come on the connection)."""
        self.stats["dropped.datagram"] += 1

    def doStop(self) -> None:
        """The role's SIP socket stopped (the role is stopping): the REGISTER is forgotten, the connection closed."""
        self.stopService()

    def register(self, contact: Optional[HostPort] = None) -> defer.Deferred[Response]:
        """
        Send one REGISTER to the AOR over the connection, making it first if there is none; cancels an earlier
        one.  The Contact is the connection's own local address (with ``;transport=tcp``, or ``sips:``), never
        ``contact``: a stream flow is reached over its connection (RFC 5626 §5.3; without outbound, RFC 3261
        §18.2.2), whose address exists only once it is made.  ``contact`` is accepted for the UDP client's
        signature.
        """
        d = self._begin()
        if self.socket is not None:
            self._sendOnConnection()
        elif self._connecting is None:
            self._connect()
        return d

    def dropFlow(self) -> None:
        """The flow failed: close its connection now, so that the next :meth:`register` opens a new one."""
        stream = self._stream
        if stream is not None and not stream.closing:
            log.info("closing the connection to {host}:{port}: the flow failed", host=self.nextHop[0],
                     port=self.nextHop[1], sipnat_event="sipnat.client.connection.dropped")
            stream.close(abort=True)

    # -- the connection --

    def _connect(self) -> None:
        self._connectBy = self._now() + self.connectTimeout
        try:
            d: defer.Deferred[Any] = self.endpointFor(self.nextHop).connect(self._factory)
        except Exception as e:  # an endpoint that raises instead of errbacking: the same failure
            d = defer.fail(e)
        if not d.called:
            self._connecting = d
        d.addCallbacks(self._connectDone, self._connectFailed)
        self._arm()

    def _connectDone(self, result: Any) -> None:
        self._connecting = None
        self._connectBy = None
        self._arm()

    def _connectFailed(self, reason: Failure) -> None:
        timedOut = self._connectBy is not None and self._now() >= self._connectBy
        self._connecting = None
        self._connectBy = None
        self._arm()
        if self._deferred is None or self._txn is not None:
            return  # nobody waits for this connection (stopped, or a REGISTER went out on another)
        hop = self.nextHop
        why = (f"no connection to {hop[0]}:{hop[1]} within {self.connectTimeout:g} s" if timedOut else
               f"could not connect to {hop[0]}:{hop[1]} over {self.transportName}: {reason.getErrorMessage()}")
        self.stats["connect.failed"] += 1
        self._fail(FlowConnectError(why))

    def _connectionMade(self, stream: _SIPStream) -> None:
        self._stream = stream
        self._connectBy = None
        self.connections += 1
        self.stats["connections"] += 1
        transport: Any = stream.transport
        local, peer = hostPortOf(transport.getHost()), hostPortOf(transport.getPeer())
        log.info("connected to {peer} from {local} over {transport}", peer=_text(peer), local=_text(local),
                 transport=self.transportName, sipnat_event="sipnat.client.connected")
        if self._deferred is not None and self._txn is None:
            self._sendOnConnection()
        else:
            self._arm()

    def _sendOnConnection(self) -> None:
        self._send(self._localAddress())

    def _localAddress(self) -> HostPort:
        stream = self._stream
        local = hostPortOf(stream.transport.getHost()) if stream is not None and stream.transport else None
        return (str(local[0]), int(local[1])) if local is not None else ("0.0.0.0", 0)

    def _sentBy(self, contact: HostPort) -> HostPort:
        """RFC 3261 §18.1.1: the top Via of a request on a connection names the connection's local address."""
        return self._localAddress()

    def _write(self, data: bytes) -> None:
        stream = self._stream
        if stream is not None and stream.transport is not None and not stream.closing:
            stream.transport.write(data)  # through the arbitration: never inside a ping (RFC 5626 §4.4.1)
            self.stats["register.sent"] += 1

    def _streamMessage(self, stream: _SIPStream, data: bytes) -> None:
        if stream is self._stream:
            self._messageReceived(data, self.nextHop, stream=True)

    def _requestReceived(self, request: Request) -> None:
        """
        A request over the flow: only the next hop can send one on this connection (no spoofed source to
        reflect to), so it is answered when :attr:`answer` is set, within the request rate.
        """
        self.stats["requests.received"] += 1
        if self.answer is None:
            RegisterTransactions._requestReceived(self, request)
            return
        if not self._requestRate.allow("next hop", self._now()):
            self.stats["requests.rate_limited"] += 1
            return
        response = self.answer(request)
        logRequest(request, self.nextHop, response)
        stream = self._stream
        if response is None or stream is None or stream.transport is None or stream.closing:
            return
        stream.transport.write(response.toBytes())
        self.stats["requests.answered"] += 1

    def _unframed(self, stream: _SIPStream, why: str) -> None:
        """The SIP bytes of the connection cannot be cut into messages any more: it is of no use, close it."""
        self.stats["dropped.unframed"] += 1
        log.warn("closing the connection to {host}:{port}: {why}", host=self.nextHop[0], port=self.nextHop[1],
                 why=why, sipnat_event="sipnat.client.connection.unframed")
        stream.close(abort=True)

    def _connectionLost(self, stream: _SIPStream, reason: Failure) -> None:
        if stream is self._stream:
            self._stream = None
            self.stats["connections.lost"] += 1
            if self._deferred is not None and self._txn is not None:  # sent on this connection: it failed with it
                self._fail(self._lossError(reason))
            self._sayDrops()
        timer, self._closeTimer = self._closeTimer, None
        if timer is not None and timer.active():
            timer.cancel()
        waiting, self._closed = self._closed, []
        for d in waiting:
            d.callback(None)

    def _lossError(self, reason: Failure) -> RegistrationError:
        hop = self.nextHop
        refusal = tlsRefusal(reason) if self.transportName == "TLS" else None
        if refusal is not None:
            certificate, why = refusal
            self.stats["tls.refused" if certificate else "tls.failed"] += 1
            text = f"TLS with {hop[0]}:{hop[1]} failed: {why}"
            return TLSVerificationError(text) if certificate else FlowConnectError(text)
        return RegistrationConnectionLost(
            f"the {self.transportName} connection to {hop[0]}:{hop[1]} closed: {reason.getErrorMessage()}")

    # -- timers: the transaction's, or the connect deadline while there is none --

    def _arm(self) -> None:
        if self._txn is not None:
            RegisterTransactions._arm(self)
        else:
            self._wakeup.at(self._connectBy if self._connecting is not None else None, self._now())

    def _wake(self, scheduledFor: float) -> None:
        if self._txn is not None:
            RegisterTransactions._wake(self, scheduledFor)
            return
        connecting = self._connecting
        if connecting is not None and self._connectBy is not None and self._now() >= self._connectBy:
            connecting.cancel()  # errbacks: _connectFailed says it was the connect timeout
        else:
            self._arm()

    def _finish(self) -> Optional[defer.Deferred[Response]]:
        """As the UDP client's; a connection being made goes on (the next REGISTER uses it), its deadline too."""
        d = RegisterTransactions._finish(self)
        self._arm()
        return d

    # -- the service --

    def stopService(self) -> defer.Deferred[None]:
        """Forget the REGISTER in progress, close the connection; fires once it is closed (at once if it is)."""
        if self.running:
            service.Service.stopService(self)
        self.stop()
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
        stream = self._stream
        if stream is None or stream.transport is None:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._closed.append(d)
        if self._closeTimer is None:  # not already closing: close, bounded, as a peer may never answer
            stream.close()
            if self._closed:
                self._closeTimer = self.reactor.callLater(CLOSE_TIMEOUT, self._abortClose, stream)
        return d

    def _abortClose(self, stream: _SIPStream) -> None:
        self._closeTimer = None
        stream.close(abort=True)


def _text(address: Optional[HostPort]) -> str:
    if address is None:
        return "?"
    host, port = address
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
