"""
The edge's SIP side in Twisted: a UDP protocol and a stream protocol driving one sans-IO
:class:`~twisted_sipnat.core.proxy.EdgeProxy` (registrar and stateless proxy).

- :class:`SIPEdge` owns the core, the per-source rate limit (:class:`~twisted_sipnat.core.ratelimit.RateLimit`),
  the :class:`~twisted_sipnat.core.ratelimit.DropTally` lines for rate-limited and malformed messages, the open
  connections (so a request can be proxied over the connection its binding came in on, RFC 5626 §5.3), and ONE
  reactor timer, set to the earliest of the registrar's next expiry and the next due tally line: an edge with
  12,000 bindings has one pending call, not 12,000.
- :class:`SIPEdgeDatagramProtocol` is the ``sipProtocol`` behind ``SharedDatagramProtocol(stunResponder=True)``
  (STUN keepalives on the SIP port are answered there, RFC 5626 §8.2).
- :class:`SIPEdgeStreamFactory` is wrapped by ``SharedStreamFactory(pongResponder=True)``, which takes the
  CRLFCRLF pings out of the stream and answers them (RFC 5626 §4.4.1) and hands the SIP bytes on as they come
  (part of a message, or several); :class:`~twisted_sipnat.core.messagebuffer.MessageBuffer` cuts them back
  into whole messages by the same framing rules.  A malformed
  message gets its 400 and the connection is closed: a connection left open but deaf would keep answering
  pings while every SIP request is lost.  A closed connection marks its bindings' flow gone.

Nothing here parses SIP: bytes in, the core's :class:`~twisted_sipnat.core.proxy.Outcome` out.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, List, Optional

from twisted.internet import protocol
from twisted.logger import Logger
from zope.interface import implementer

from ..core.messagebuffer import MessageBuffer
from ..core.proxy import EdgeProxy, Outcome
from ..core.ratelimit import DropTally, RateLimit
from ..core.registrar import Binding, Flow
from ..errors import SIPFramingError
from ..protocols import sendDatagram
from ..wakeup import Wakeup
from .figures import Figures, IFigureSource

__all__ = ["SIPEdge", "SIPEdgeDatagramProtocol", "SIPEdgeStreamFactory", "SIPEdgeStreamProtocol"]

log = Logger(namespace="twisted_sipnat.edge")


class _Tally:
    """A :class:`DropTally` and the log event its lines carry."""

    def __init__(self, what: str, event: str, interval: float) -> None:
        self.tally = DropTally(what, interval=interval)
        self.event = event

    @property
    def due(self) -> Optional[float]:
        return self.tally.dueAt

    def drop(self, host: str, now: float, detail: str = "") -> None:
        line = self.tally.drop(host, now)
        if line is not None:
            log.warn("{line}{detail}", line=line, detail=detail, sipnat_event=self.event)

    def flush(self, now: float) -> None:
        line = self.tally.flush(now)
        if line is not None:
            log.warn("{line}", line=line, sipnat_event=self.event)


@implementer(IFigureSource)
class SIPEdge:
    """
    What the UDP and stream protocols of one edge share (module docstring).  ``rateLimit`` ``None`` answers
    every message; ``tallyInterval`` is the shortest time between two summary lines of one kind.
    """

    def __init__(
        self, reactor: Any, proxy: EdgeProxy, *, rateLimit: Optional[RateLimit] = None, tallyInterval: float = 10.0
    ) -> None:
        self.reactor = reactor
        self.proxy = proxy
        self.registrar = proxy.registrar
        self.rateLimit = rateLimit
        self.rateTally = _Tally("SIP messages over the rate limit", "sipnat.edge.rate-limited", tallyInterval)
        self.malformedTally = _Tally("malformed SIP messages", "sipnat.edge.malformed", tallyInterval)
        self.counts: Counter[str] = Counter()  # answered, rate_limited, malformed, responses, dropped
        self.stats: Counter[str] = Counter()  # for sendDatagram
        self.udpTransport: Any = None
        self.connections: Dict[int, SIPEdgeStreamProtocol] = {}
        self._serial = 0
        self._wakeup = Wakeup(reactor, self._wake)
        self.stopped = False

    # -- the messages -----------------------------------------------------------------------------------------

    def handle(self, data: bytes, flow: Flow, *, stream: bool) -> Optional[Outcome]:
        """One message from ``flow``: rate limit, the core, the sends; the outcome (``None`` when rate-limited)."""
        if self.stopped:  # a datagram the closing port still delivered: no state, no timer after stop()
            return None
        now = self.reactor.seconds()
        if self.rateLimit is not None and not self.rateLimit.allow(flow.host, now):
            self.counts["rate_limited"] += 1
            self.rateTally.drop(flow.host, now)
            self._reschedule(now)
            return None
        outcome = self.proxy.receive(data, flow, now, stream=stream)
        self.counts[outcome.kind] += 1
        for send in outcome.sends:
            self.send(send.data, send.flow)
        if outcome.kind == "malformed":
            closed = "; its connection closed" if outcome.close else ""
            self.malformedTally.drop(flow.host, now, f" (the last: {outcome.reason}{closed})")
        for binding in outcome.registered:
            log.info("registered {aor} at {contact}", aor=binding.aor, contact=str(binding.uri),
                     expires=binding.remaining(now), transport=binding.flow.transport,
                     sipnat_event="sipnat.edge.registered")
        for binding in outcome.removed:
            log.info("removed {aor} at {contact}", aor=binding.aor, contact=str(binding.uri),
                     sipnat_event="sipnat.edge.unregistered")
        self._reschedule(now)
        return outcome

    def send(self, data: bytes, flow: Flow) -> None:
        """Write ``data`` over ``flow``: a datagram to its address, or on its connection if still open."""
        if flow.transport == "udp":
            if self.udpTransport is not None:
                sendDatagram(self.udpTransport, data, (flow.host, flow.port), self.stats, "a SIP message")
            return
        connection = self.connections.get(flow.connection)
        if connection is not None and connection.transport is not None:
            connection.transport.write(data)
        else:
            self.stats["dropped.connection-gone"] += 1

    # -- connections ------------------------------------------------------------------------------------------

    def connectionOpened(self, connection: SIPEdgeStreamProtocol) -> int:
        self._serial += 1
        self.connections[self._serial] = connection
        return self._serial

    def connectionClosed(self, serial: int, flow: Optional[Flow]) -> None:
        self.connections.pop(serial, None)
        if flow is not None:
            self.registrar.flowClosed(flow)

    # -- the one timer ----------------------------------------------------------------------------------------

    def _reschedule(self, now: float) -> None:
        wake = self.registrar.nextWakeup()
        for tally in (self.rateTally, self.malformedTally):
            if tally.due is not None:
                wake = tally.due if wake is None else min(wake, tally.due)
        self._wakeup.at(wake, now)

    def _wake(self, scheduledFor: float) -> None:
        now = self.reactor.seconds()
        expired: List[Binding] = self.registrar.expire(now)
        for binding in expired:
            log.info("registration of {aor} at {contact} expired", aor=binding.aor, contact=str(binding.uri),
                     sipnat_event="sipnat.edge.expired")
        for tally in (self.rateTally, self.malformedTally):
            if tally.due is not None and now >= tally.due:
                tally.flush(now)
        self._reschedule(now)

    def stop(self) -> None:
        """Cancel the timer, say what is pending, forget every binding; later messages are ignored."""
        self.stopped = True
        self._wakeup.cancel()
        now = self.reactor.seconds()
        for tally in (self.rateTally, self.malformedTally):
            tally.flush(now)
        self.registrar.clear()

    @property
    def pendingTimers(self) -> int:
        return 1 if self._wakeup.pending else 0

    # -- figures ----------------------------------------------------------------------------------------------

    def reportFigures(self, figures: Figures) -> None:
        for result in ("answered", "rate_limited", "malformed"):
            figures.count("sipnat_sip_requests_total", self.counts[result], result=result)
        figures.gauge("sipnat_registrations", len(self.registrar))
        if self.rateLimit is not None:
            figures.gauge("sipnat_rate_limit_sources", len(self.rateLimit), protocol="sip")
        flows = self.registrar.flowCounts()
        for transport in ("udp", "tcp", "tls"):
            figures.gauge("sipnat_flows", flows.get(transport, 0), transport=transport)


class SIPEdgeDatagramProtocol(protocol.DatagramProtocol):
    """SIP over UDP at the edge: every datagram (STUN and CRLF keepalives already taken out) to :class:`SIPEdge`."""

    noisy = False

    def __init__(self, edge: SIPEdge) -> None:
        self.edge = edge

    def startProtocol(self) -> None:
        self.edge.udpTransport = self.transport

    def stopProtocol(self) -> None:
        self.edge.udpTransport = None

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.edge.handle(datagram, Flow("udp", addr[0], addr[1]), stream=False)


class SIPEdgeStreamProtocol(protocol.Protocol):
    """One SIP connection at the edge; its ``transport`` is the ``SharedStreamProtocol`` that framed the stream."""

    noisy = False

    def __init__(self, edge: SIPEdge, transport: str = "tcp") -> None:
        self.edge = edge
        #: ``"tcp"`` or ``"tls"``: the Via transport of what the edge sends on it, and its ``sipnat_flows`` label.
        self.transportName = transport
        self.serial = 0
        self.flow: Optional[Flow] = None
        self.closing = False
        self.buffer = MessageBuffer(edge.proxy.maxMessageSize)

    def connectionMade(self) -> None:
        self.serial = self.edge.connectionOpened(self)
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        self.flow = Flow(self.transportName, str(getattr(peer, "host", "")), int(getattr(peer, "port", 0)),
                         self.serial)
        local = getattr(self.transport.getHost(), "port", None)  # type: ignore[union-attr]
        if isinstance(local, int) and local:
            self.edge.proxy.ports.setdefault(self.transportName, local)

    def dataReceived(self, data: bytes) -> None:
        """SIP bytes as the splitter hands them on (any part of the stream): each whole message in turn."""
        if self.flow is None or self.closing:
            return
        try:
            messages = self.buffer.feed(data)
        except SIPFramingError as e:
            # The splitter in front hands on the message it could not frame before it closes the connection;
            # the parser, which frames by the same definition, finds the same fault in it and the proxy
            # answers 400 where the start line and the headers to echo could be read (RFC 3261 §21.4.1).
            outcome = self.edge.handle(self.buffer.unframed(), self.flow, stream=True)
            self._close(f"framing: {e.reason}" if outcome is None else outcome.reason or e.reason)
            return
        for message in messages:
            outcome = self.edge.handle(message, self.flow, stream=True)
            if outcome is not None and outcome.close:
                self._close(outcome.reason or "malformed")
                return

    def _close(self, reason: str) -> None:
        # Said in the malformed tally's line (one per interval, whatever the number of connections).
        log.debug("closing SIP connection with {host}:{port}: {reason}", host=getattr(self.flow, "host", None),
                  port=getattr(self.flow, "port", None), reason=reason, sipnat_event="sipnat.edge.stream-closed")
        self.closing = True  # nothing more from it is read
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        # A partial message goes now, not when the garbage collector finds the cycle this protocol and its
        # wrapper form: a slowloris flood closed by the connection limits would pile its headers up until then.
        self.buffer.unframed()
        self.edge.connectionClosed(self.serial, self.flow)


class SIPEdgeStreamFactory(protocol.Factory):
    """
    Builds a :class:`SIPEdgeStreamProtocol` per connection, all driving one :class:`SIPEdge`; ``transport`` is
    ``"tls"`` behind a TLS endpoint, so that requests proxied to those flows carry ``SIP/2.0/TLS`` in their Via
    (RFC 3261 §18.2.1: the transport the message goes out on) and the flows are counted as such.
    """

    noisy = False

    def __init__(self, edge: SIPEdge, transport: str = "tcp") -> None:
        self.edge = edge
        self.transportName = transport

    def buildProtocol(self, addr: Any) -> SIPEdgeStreamProtocol:
        p = SIPEdgeStreamProtocol(self.edge, self.transportName)
        p.factory = self
        return p
