"""
The protocols that own a socket shared by a SIP stack and twisted_sipnat.

:class:`SharedDatagramProtocol` is the one ``DatagramProtocol`` bound to a UDP port: it demultiplexes STUN from SIP
by RFC 7983's first-byte rule (STUN's first byte is 0-3, SIP's an ASCII letter) plus the magic cookie and a
consistent length, hands STUN to the controller (or answers it, in the server role) and every SIP datagram to
the wrapped SIP protocol byte for byte.  The SIP protocol gets a transport that writes to the same socket.

:class:`SharedStreamFactory` wraps a SIP stream factory (the pattern of ``twisted.protocols.haproxy``): each
connection gets a :class:`SharedStreamProtocol`, which frames the byte stream in both directions
(:mod:`~twisted_sipnat.core.sipframing`), so CRLF keepalives (RFC 5626 §3.5.1) are taken out of, and put into, the
stream only between whole SIP messages, and every SIP byte reaches the wrapped protocol in order.

Both provide :class:`~twisted_sipnat.interfaces.ISharedSocket`: the ``socket`` the controller's calls take.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, List, Optional, Set, Tuple

from twisted.internet.error import InvalidAddressError, MessageLengthError
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.udp import Port as UDPPort
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from .core import stun
from .core.arbitration import Arbiter, Keepalive
from .core.connections import ConnectionLimits
from .core.keepalive import PING_BYTES, PONG_BYTES
from .core.responder import DEFAULT_RESPONDER_BURST, DEFAULT_RESPONDER_RATE
from .core.sipframing import DEFAULT_MAX_MESSAGE_SIZE, IncomingSplitter, Ping, Pong, SIPData, SIPFramingError
from .errors import NATTraversalError
from .interfaces import ISharedSocket
from .settings import DEFAULT_SOFTWARE
from .streamlimits import RefusedConnection, StreamLimiter, limiterFor

HostPort = Tuple[str, int]

_log = Logger(namespace="twisted_sipnat")


#: How many keepalive destinations a shared UDP socket remembers as accepted by its port (then it starts over).
MAX_VETTED_DESTINATIONS = 4096


class _PongKey:
    """The arbitration key of the server role's pong: at most one held per connection."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<pong>"


_PONG = _PongKey()


def sendDatagram(transport: Any, data: bytes, addr: Any, stats: Counter[str], what: str) -> bool:
    """
    Write one datagram of ours (a keepalive, or a STUN answer); a write the OS refuses is a lost datagram.

    ``udp.Port.write`` re-raises every ``sendto`` error but EINTR/EMSGSIZE/ECONNREFUSED: ENETUNREACH when the
    interface is down, EHOSTUNREACH, EPERM from a firewall, EINVAL for a destination such as port 0.  UDP gives
    no delivery promise anyway, so the caller's retransmission and timeout rules (RFC 8489 §6.2.1) decide what
    the loss means; raising instead would unwind the controller mid-update (the transaction leaked, the flow's
    timer lost) or log a traceback for input off the wire.  A destination the port refuses outright (a name,
    or an IPv6 literal on an IPv4 port: ``InvalidAddressError``) is counted and logged the same way.
    """
    try:
        transport.write(data, addr)
    except (OSError, MessageLengthError, InvalidAddressError) as e:
        stats["write.errors"] += 1
        _log.warn("could not send {what} to {addr}: {error}", what=what, addr=addr, error=e,
                  sipnat_event="write.error")
        return False
    return True


_stunLog = Logger(namespace="twisted_sipnat.stun")


def sayDrops(line: str) -> None:
    """
    Log a STUN responder's drop summary ("dropped 1,234 rate-limited STUN requests from 17 sources in the last
    10 s"): the responder says one per interval per kind, so a flood is visible without flooding the log.
    """
    _stunLog.warn("{summary}", summary=line, sipnat_event="stun.dropped")


def _isKeepaliveDatagram(data: bytes) -> bool:
    """A datagram of CRLFs only: an RFC 5626 §4.4.1 / RFC 3261 §7.5 keepalive, not a SIP message."""
    return bool(data) and not data.strip(b"\r\n")


class HeldKeepalives:
    """
    The keepalive half of :class:`~twisted_sipnat.interfaces.ISharedSocket` for a socket the SIP stack writes
    to directly (a UDP port, or a bare transport), over its
    :class:`~twisted_sipnat.core.arbitration.Arbiter`: a keepalive is written now when the arbitration lets it,
    else held under its context key with its destination until the SIP stack releases the socket.  The class
    using it provides ``arbiter``, ``writeKeepalive(data, addr)`` and an empty ``_heldTo`` dict.
    """

    arbiter: Arbiter
    _heldTo: Dict[Any, Any]

    def writeKeepalive(self, data: bytes, addr: Any) -> None:
        raise NotImplementedError

    def sendKeepalive(self, key: Any, data: bytes, addr: Any) -> bool:
        """
        Write a keepalive of the controller's now if the arbitration lets it (``True``), else hold it under
        ``key`` (``False``) until :meth:`sipIdle` releases it.  Raises ``NATTraversalError`` when refused.
        """
        if self.arbiter.offer(key, data):
            self.writeKeepalive(data, addr)
            return True
        self._heldTo[key] = addr
        return False

    def withdrawKeepalive(self, key: Any) -> None:
        self.arbiter.withdraw(key)
        self._heldTo.pop(key, None)

    def sipIdle(self, idle: bool) -> List[Any]:
        """The SIP stack's ``socketIdle``: on release, write what was held (in order); returns their keys."""
        written = []
        for key, data in self.arbiter.sipIdle(idle):
            self.writeKeepalive(data, self._heldTo.pop(key, None))
            written.append(key)
        return written


class SharedDatagramTransport:
    """
    The transport the SIP protocol sees: it writes to the shared UDP socket; everything else (``getHost``,
    ``connect``, ``stopListening`` ...) is the real port's.  A datagram is atomic, so a SIP write never waits:
    arbitration on UDP only keeps the controller's keepalives off the socket while the SIP stack holds it.
    """

    def __init__(self, shared: SharedDatagramProtocol) -> None:
        self._shared = shared

    @property
    def sharedSocket(self) -> SharedDatagramProtocol:
        """The shared socket this transport writes to: what the controller's calls take as ``socket``."""
        return self._shared

    def write(self, data: bytes, addr: Any = None) -> Any:
        transport = self._shared.transport
        if transport is None:
            raise RuntimeError("the shared UDP socket is not listening")
        self._shared.stats["sip.datagrams.sent"] += 1
        return transport.write(data, addr)  # a connected port takes addr=None

    def writeSequence(self, seq: List[bytes], addr: Any = None) -> Any:
        return self.write(b"".join(seq), addr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shared.transport, name)


@implementer(ISharedSocket)
class SharedDatagramProtocol(HeldKeepalives, DatagramProtocol):
    """
    The ``DatagramProtocol`` bound to a UDP port that a SIP stack and twisted_sipnat share.

    ``sipProtocol``: any ``DatagramProtocol`` (``twisted.protocols.sip.Proxy`` / ``RegisterProxy`` included);
    it receives every non-STUN datagram unchanged and in arrival order, and writes through this socket.
    ``controller``: the :class:`~twisted_sipnat.controller.NATTraversalController` that gets STUN responses.
    ``stunResponder=True``: the server role: Binding requests no transaction claims are answered (RFC 8489
    §6.3) by a :class:`~twisted_sipnat.core.responder.BindingResponder` rate-limited to 20 answers per second per
    source IP (burst 40); pass ``responder=`` to configure one (another limit, none, RFC 5780 alternates);
    ``alternateSockets`` maps each alternate ``(host, port)`` to the transport that sends from it.

    Every datagram that is not STUN reaches ``sipProtocol`` unchanged, CRLF-only keepalive datagrams (RFC 5626
    §4.4.1 "crlf" method) included, as SIP stacks ignore them (RFC 3261 §7.5); ``dropKeepalives=True`` counts
    and drops them instead.  Malformed input never stops the protocol.
    """

    isStream = False
    noisy = False  # no "Starting protocol" lines: the roles log what they listen on themselves

    def __init__(
        self,
        sipProtocol: Optional[DatagramProtocol] = None,
        controller: Any = None,
        stunResponder: bool = False,
        *,
        responder: Any = None,
        alternateSockets: Optional[Dict[HostPort, Any]] = None,
        dropKeepalives: bool = False,
        clock: Any = None,
    ) -> None:
        self.sipProtocol = sipProtocol
        self.controller = controller
        if responder is None and stunResponder:
            from .core.responder import BindingResponder, RateLimit

            # An internet-facing port answers no source faster than this (issue: not an amplifier); pass a
            # responder of your own to change or drop the limit.
            responder = BindingResponder(
                software=DEFAULT_SOFTWARE, rateLimit=RateLimit(DEFAULT_RESPONDER_RATE, DEFAULT_RESPONDER_BURST)
            )
        self.responder = responder
        if responder is not None and getattr(responder, "say", False) is None:
            responder.say = sayDrops  # the summary lines of what the rate limit and the checks dropped
        #: The timer that says the drops not reported yet (armed only while there are some).
        self._dropSummary: Any = None
        self.alternateSockets: Dict[HostPort, Any] = dict(alternateSockets or {})
        self.dropKeepalives = dropKeepalives
        self.arbiter = Arbiter(stream=False)
        self.stats: Counter[str] = Counter()
        self._clock = clock
        self._local: Optional[HostPort] = None
        #: The bound socket's ``sendto`` (``None`` while not bound): a keepalive to a destination the port
        #: accepted once is written with it, skipping udp.Port.write's address parsing; a failing call falls
        #: back to the port's write and its error rules.  Public so that a test can make it fail.
        self.socketSendto: Any = None
        self._vetted: Set[Any] = set()
        #: Where each held keepalive goes (the arbiter holds keys and bytes only).
        self._heldTo: Dict[Any, Any] = {}

    # -- ISharedSocket ----------------------------------------------------------------------------------------

    def writeKeepalive(self, data: bytes, addr: Any) -> None:
        """
        Write a keepalive (or a retransmission) to ``addr``.

        Twisted's ``udp.Port.write`` checks the destination on every write (it parses the address string three
        times, which costs more than the ``sendto`` itself), but a flow writes to the same next hop every
        interval.  So a destination the port has accepted once is written to with the socket's own ``sendto``;
        if that raises, the datagram was not sent and goes through ``udp.Port.write`` after all, which keeps
        its error handling (EINTR retried, ECONNREFUSED ignored, the rest counted and logged).
        """
        transport = self.transport
        if transport is None:
            return
        if addr in self._vetted:
            try:
                self.socketSendto(data, addr)
                return
            except OSError:
                pass
        if sendDatagram(transport, data, addr, self.stats, "a keepalive") and self.socketSendto is not None:
            if len(self._vetted) >= MAX_VETTED_DESTINATIONS:
                self._vetted.clear()
            self._vetted.add(addr)

    def peerAddress(self) -> None:
        return None

    @property
    def vettedDestinations(self) -> int:
        """How many destinations are written to with the socket's ``sendto`` directly (see writeKeepalive)."""
        return len(self._vetted)

    def localAddress(self) -> Optional[IAddress]:
        return self.transport.getHost() if self.transport is not None else None

    # -- DatagramProtocol -------------------------------------------------------------------------------------

    def startProtocol(self) -> None:
        # Only a real Twisted UDP port has a socket whose sendto does what its write does (see writeKeepalive).
        if type(self.transport) is UDPPort:
            self.socketSendto = self.transport.socket.sendto
        host = self.transport.getHost() if self.transport is not None else None
        if host is not None and getattr(host, "port", None) is not None:
            self._local = (host.host, host.port)
        if self.sipProtocol is not None:
            self.sipProtocol.makeConnection(SharedDatagramTransport(self))  # type: ignore[arg-type]

    def stopProtocol(self) -> None:
        self.socketSendto = None
        self._vetted.clear()
        self._sayDrops()
        if self.sipProtocol is not None:
            self.sipProtocol.doStop()
        if self.controller is not None:
            self.controller.socketClosed(self)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        try:
            if stun.isSTUN(datagram):
                self._stunReceived(datagram, addr)
            elif self.responder is not None and stun.isClassicSTUN(datagram):
                self._answer(datagram, addr)  # an RFC 3489 client (RFC 8489 §12.2): never the controller's
            elif self.dropKeepalives and _isKeepaliveDatagram(datagram):
                self.stats["keepalive.datagrams"] += 1
            elif self.sipProtocol is not None:
                self.stats["sip.datagrams.received"] += 1
                self.sipProtocol.datagramReceived(datagram, addr)
            else:
                self.stats["dropped.not-stun"] += 1
        except Exception:
            _log.failure("error handling a datagram of {length} bytes from {addr}", length=len(datagram), addr=addr,
                         sipnat_event="internal.error")

    def _clockOrReactor(self) -> Any:
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = reactor
        return self._clock

    def _now(self) -> float:
        return float(self._clockOrReactor().seconds())

    def _stunReceived(self, datagram: bytes, addr: Any) -> None:
        if self.controller is not None and self.controller.dataReceived(datagram, self, addr):
            self.stats["stun.to-controller"] += 1
            return
        if self.responder is None:
            self.stats["dropped.stun-unclaimed"] += 1
            return
        self._answer(datagram, addr)

    def _answer(self, datagram: bytes, addr: Any) -> None:
        responder = self.responder
        reply = responder.respond(datagram, (addr[0], addr[1]), receivedOn=self._local, now=self._now())
        if self._dropSummary is None and getattr(responder, "summariesPending", False):
            self._dropSummary = self._clockOrReactor().callLater(
                responder.rateLimitedDrops.interval, self._sayDrops)
        if reply is None:
            self.stats["stun.requests.unanswered"] += 1
            return
        self.stats["stun.requests.answered"] += 1
        # RESPONSE-PORT (RFC 5780 §7.5): the source IP at another port; never another IP.
        to = reply.sendTo if getattr(reply, "sendTo", None) is not None else addr
        if reply.sendFrom is None or reply.sendFrom == self._local:
            if self.transport is not None:
                sendDatagram(self.transport, reply.data, to, self.stats, "a STUN answer")
            return
        other = self.alternateSockets.get(reply.sendFrom)
        if other is None:
            self.stats["dropped.no-alternate-socket"] += 1
            return
        sendDatagram(other, reply.data, to, self.stats, "a STUN answer")

    def _sayDrops(self) -> None:
        """Say what the responder dropped and has not said yet (the timer's call, and at stop)."""
        call, self._dropSummary = self._dropSummary, None
        if call is not None and call.active():
            call.cancel()
        if self.responder is not None and hasattr(self.responder, "flushSummaries"):
            self.responder.flushSummaries(self._now())

    def reportFigures(self, figures: Any) -> None:
        """``sipnat_stun_requests_total{result}`` of this socket's responder (``IFigureSource``)."""
        if self.responder is not None and hasattr(self.responder, "reportFigures"):
            self.responder.reportFigures(figures)


@implementer(ISharedSocket)
class SharedStreamProtocol(ProtocolWrapper):
    """
    One SIP connection (TCP or TLS) shared with twisted_sipnat: the ``socket`` for the controller's calls.

    Incoming: :class:`~twisted_sipnat.core.sipframing.IncomingSplitter` finds message boundaries (header block and
    Content-Length); SIP bytes go to the wrapped protocol in order, CRLF pongs go to the controller, and with
    ``pongResponder`` CRLFCRLF pings are answered with a CRLF pong.  Outgoing: the wrapped protocol's writes go
    through the :class:`~twisted_sipnat.core.arbitration.Arbiter`, which lets a ping (or pong) out only between two
    whole SIP messages, writing held ones inside the write that completes a message.  A message over
    ``maxMessageSize`` or a malformed Content-Length closes the connection with a logged reason.

    With the factory's ``limits``, each read tells the factory's connection table what it completed (whole
    SIP messages, keepalives) and how many bytes of a partial message are held (``IncomingSplitter.partial``:
    the splitter's copy of an unfinished header block, which it hands on only when whole, or what the wrapped
    protocol has of a message whose header block is in); the table may close the connection
    (:meth:`closeForLimit`).
    """

    isStream = True
    factory: SharedStreamFactory

    def __init__(self, factory: SharedStreamFactory, wrappedProtocol: Any) -> None:
        super().__init__(factory, wrappedProtocol)  # type: ignore[arg-type]
        self.controller = factory.controller
        self.pongResponder = factory.pongResponder
        self.arbiter = Arbiter(stream=True, maxMessageSize=factory.maxMessageSize)
        self.splitter = IncomingSplitter(
            role="server" if factory.pongResponder else "client", maxMessageSize=factory.maxMessageSize
        )
        self.stats: Counter[str] = Counter()
        self._closing = False

    # -- ISharedSocket ----------------------------------------------------------------------------------------

    def sendKeepalive(self, key: Any, data: bytes, addr: Any = None) -> bool:
        """A ping now if between two whole SIP messages (``True``), else held for the next boundary (``False``)."""
        if self.arbiter.offer(key, data):
            self.writeKeepalive(data, addr)
            return True
        return False

    def withdrawKeepalive(self, key: Any) -> None:
        self.arbiter.withdraw(key)

    def sipIdle(self, idle: bool) -> List[Any]:
        written = []
        for key, data in self.arbiter.sipIdle(idle):
            self.writeKeepalive(data)
            if key is _PONG:
                self.stats["pongs.sent"] += 1
            else:
                written.append(key)
        return written

    def writeKeepalive(self, data: bytes, addr: Any = None) -> None:
        if self.transport is not None and not self._closing:
            self.transport.write(data)

    def peerAddress(self) -> Optional[HostPort]:
        peer = self.transport.getPeer() if self.transport is not None else None
        host, port = getattr(peer, "host", None), getattr(peer, "port", None)
        return (host, port) if host is not None and port is not None else None

    def localAddress(self) -> Optional[IAddress]:
        return self.transport.getHost() if self.transport is not None else None

    # -- outgoing ---------------------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """A write from the SIP protocol: SIP bytes go out at once, held keepalives between whole messages."""
        if not data:
            return
        try:
            chunks = self.arbiter.sipWrite(data)
        except SIPFramingError as e:
            self._framingError("outgoing", e)
            return
        transport = self.transport
        assert transport is not None, "write before connectionMade"
        released: List[Tuple[Any, bytes]] = []
        for chunk in chunks:
            transport.write(chunk.data)
            if type(chunk) is Keepalive:
                released.append((chunk.key, chunk.data))
        if released:
            self._afterReleased(released)

    def writeSequence(self, data: List[bytes]) -> None:
        self.write(b"".join(data))

    def _afterReleased(self, released: List[Tuple[Any, bytes]]) -> None:
        mine = [key for key, _ in released if key is not _PONG]
        self.stats["pongs.sent"] += len(released) - len(mine)
        if mine and self.controller is not None:
            # Written in place, between two SIP messages: the controller starts their clocks.
            self.controller.keepalivesWritten(self, mine)

    # -- incoming ---------------------------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        limiter = self.factory.limiter
        if limiter is None:
            self._receive(data)
            return
        messages = self.splitter.messages
        keepalives = self.stats["pings.received"] + self.stats["pongs.received"]
        self._receive(data)
        if not self._closing:
            keepalive = self.stats["pings.received"] + self.stats["pongs.received"] != keepalives
            limiter.observe(self, self.splitter.messages - messages, keepalive, self.splitter.partial)

    def _receive(self, data: bytes) -> None:
        try:
            events = self.splitter.feed(data)
        except SIPFramingError as e:
            self._deliver(e.events)
            if self.pongResponder and e.unframed:
                # A SIP server behind us sees the message that broke the framing too, so that it can answer it
                # with a 400 (its own framer, with the same definition, fails on the same bytes) before the
                # connection is closed: a client learns why instead of waiting on a silent connection.
                self.wrappedProtocol.dataReceived(e.unframed)
            self._framingError("incoming", e)
            return
        self._deliver(events)

    def closeForLimit(self, reason: str) -> None:
        """
        The connection table closes this connection (``reason``: idle, evicted, ...): abort it, because a
        client that stalled on purpose does not read, and a polite close would wait on it with the descriptor
        held.  Nothing more reaches the wrapped protocol.
        """
        self._closing = True
        self.stats[f"closed.{reason}"] += 1
        # The splitter's copy of a partial header block goes now, not when the garbage collector finds the
        # cycle this protocol and the wrapped one form: a flood of them would pile up until then.
        self.splitter = IncomingSplitter(role="server" if self.pongResponder else "client",
                                         maxMessageSize=self.factory.maxMessageSize)
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def _framingError(self, direction: str, error: SIPFramingError) -> None:
        _log.warn("closing SIP connection with {peer}: {direction} {reason}", peer=self.peerAddress(),
                  direction=direction, reason=error.reason, sipnat_event="stream.framing-error")
        self.stats["framing.errors"] += 1
        self._closing = True
        if self.transport is not None:
            self.transport.loseConnection()

    def _deliver(self, events: List[Any]) -> None:
        for event in events:
            if type(event) is SIPData:
                self.wrappedProtocol.dataReceived(event.data)
            elif type(event) is Ping:
                self._pingReceived()
            elif type(event) is Pong:
                self.stats["pongs.received"] += 1
                if self.controller is not None:
                    self.controller.pongReceived(self)

    def _pingReceived(self) -> None:
        self.stats["pings.received"] += 1
        if not self.pongResponder:
            return
        try:
            allowed = self.arbiter.offer(_PONG, PONG_BYTES)
        except NATTraversalError:  # the outgoing stream is dead or the held queue full: no pong
            return
        if allowed and self.transport is not None:
            self.transport.write(PONG_BYTES)
            self.stats["pongs.sent"] += 1

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._closing = True
        if self.factory.limiter is not None:
            self.factory.limiter.lost(self)
        super().connectionLost(reason)
        if self.controller is not None:
            self.controller.socketClosed(self, reason)


class SharedStreamFactory(WrappingFactory):
    """
    Wraps a SIP stream factory so that each connection is a :class:`SharedStreamProtocol`; works for
    ``listenTCP``/``listenSSL`` (server role: ``pongResponder=True`` answers pings) and for
    ``connectTCP``/``connectSSL`` (client role: give it the ``controller`` that keeps the flow alive).  The wrapped
    protocol's ``transport`` is the :class:`SharedStreamProtocol`, i.e. the ``socket`` for the controller.

    ``limits`` (a :class:`~twisted_sipnat.core.connections.ConnectionLimits`) bounds a listening factory's
    connections: how many in total and per source IP, the partial header blocks they buffer, how long they may
    stay silent or take for their first message (:mod:`twisted_sipnat.core.connections` says why and how).
    ``None``, the default, keeps no table: what a client's ``connectTCP`` and library users get.  ``clock``
    (default: the reactor) runs the table's one timer; ``transport`` is its metric label (``tcp``, ``tls``).
    """

    protocol = SharedStreamProtocol  # type: ignore[assignment]
    noisy = False  # no "Starting factory" lines

    def __init__(
        self,
        sipFactory: Any,
        controller: Any = None,
        pongResponder: bool = False,
        *,
        maxMessageSize: int = DEFAULT_MAX_MESSAGE_SIZE,
        limits: Optional[ConnectionLimits] = None,
        clock: Any = None,
        transport: str = "tcp",
    ) -> None:
        super().__init__(sipFactory)
        self.controller = controller
        self.pongResponder = pongResponder
        if maxMessageSize < 64:
            raise ValueError("maxMessageSize must be at least 64 bytes")
        self.maxMessageSize = maxMessageSize
        self.limiter: Optional[StreamLimiter] = limiterFor(limits, clock, transport)

    def buildProtocol(self, addr: Any) -> Any:
        """A connection the table refuses gets a ``RefusedConnection``: aborted at once, nothing read."""
        protocol = super().buildProtocol(addr)
        if self.limiter is not None and not self.limiter.admit(protocol, addr):
            return RefusedConnection()
        return protocol

    def doStop(self) -> None:
        super().doStop()
        if self.limiter is not None:
            self.limiter.stop()

    def reportFigures(self, figures: Any) -> None:
        """The connection table's figures (nothing without ``limits``)."""
        if self.limiter is not None:
            self.limiter.reportFigures(figures)


__all__ = [
    "PING_BYTES",
    "PONG_BYTES",
    "SharedDatagramProtocol",
    "SharedDatagramTransport",
    "SharedStreamFactory",
    "SharedStreamProtocol",
]
