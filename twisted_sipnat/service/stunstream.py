"""
STUN over TCP (RFC 8489 §6.2.2) for the stun role: the stream framed by the core's
:class:`~twisted_sipnat.core.stun.StreamFramer`, each request answered in order by the role's sans-IO
:class:`~twisted_sipnat.core.responder.BindingResponder`.

Bounds: one message is at most :data:`STUN_STREAM_MAX_MESSAGE` bytes (a Binding request is a 20-byte header
and a few small attributes; a header announcing more closes the connection as soon as its length arrives,
instead of buffering up to 64 KiB for it), and with ``limits`` the factory keeps a connection table
(:mod:`twisted_sipnat.core.connections`): how many connections, per source IP, bytes buffered, idle and
first-message timeouts.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import protocol
from twisted.logger import Logger
from zope.interface import implementer

from ..core.connections import ConnectionLimits
from ..core.stun import StreamFramer, STUNDecodeError
from ..errors import STUNMessageTooLarge
from ..streamlimits import RefusedConnection, StreamLimiter, limiterFor
from .figures import IFigureSource

__all__ = ["STUN_STREAM_MAX_MESSAGE", "STUNStreamFactory", "STUNStreamProtocol"]

log = Logger(namespace="twisted_sipnat.stun")

#: The largest STUN message a connection may send: a Binding request with USERNAME (RFC 8489 §14.3: < 513
#: bytes), MESSAGE-INTEGRITY(-SHA256), SOFTWARE (< 763 bytes), FINGERPRINT and an RFC 5780 §7.6 PADDING of
#: about a path MTU still fits.
STUN_STREAM_MAX_MESSAGE = 4096


class STUNStreamProtocol(protocol.Protocol):
    """
    One STUN-over-TCP connection.  A stream that stops looking like STUN at a message boundary is out of sync
    for good (there is no resynchronising a length-framed stream), so the connection is closed.
    """

    def __init__(self, responder: Any, clock: Any, maxMessageSize: int = STUN_STREAM_MAX_MESSAGE,
                 limiter: Optional[StreamLimiter] = None) -> None:
        self.responder = responder
        self.clock = clock
        self.framer = StreamFramer(maxMessageSize)
        self.limiter = limiter
        self._closing = False

    def dataReceived(self, data: bytes) -> None:
        transport: Any = self.transport
        if self._closing:
            return
        try:
            messages = self.framer.feed(data)
        except STUNDecodeError as e:
            log.info("closing STUN/TCP connection from {peer}: {why}", peer=transport.getPeer(), why=str(e),
                     sipnat_event="stun.stream-error")
            if self.limiter is not None and isinstance(e, STUNMessageTooLarge):
                self.limiter.count("message_too_large")
            self._closing = True
            transport.loseConnection()
            return
        if messages:
            peer, local = transport.getPeer(), transport.getHost()
            for message in messages:
                reply = self.responder.respond(message, (peer.host, peer.port), receivedOn=(local.host, local.port),
                                               now=self.clock.seconds())
                if reply is not None:
                    transport.write(reply.data)
        if self.limiter is not None:
            self.limiter.observe(self, len(messages), False, self.framer.buffered)

    def closeForLimit(self, reason: str) -> None:
        """The connection table closes this connection: aborted, as a stalled peer does not read."""
        self._closing = True
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self._closing = True
        if self.limiter is not None:
            self.limiter.lost(self)


@implementer(IFigureSource)
class STUNStreamFactory(protocol.Factory):
    """
    Builds a :class:`STUNStreamProtocol` per connection, all sharing one responder.  ``limits`` keeps a
    connection table (``None``: none); ``maxMessageSize`` bounds one message (and so one connection's buffer).
    """

    noisy = False

    def __init__(self, responder: Any, clock: Any, limits: Optional[ConnectionLimits] = None, *,
                 maxMessageSize: int = STUN_STREAM_MAX_MESSAGE, transport: str = "tcp") -> None:
        self.responder = responder
        self.clock = clock
        self.maxMessageSize = maxMessageSize
        self.limiter: Optional[StreamLimiter] = limiterFor(limits, clock, transport)

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        p = STUNStreamProtocol(self.responder, self.clock, self.maxMessageSize, self.limiter)
        p.factory = self
        if self.limiter is not None and not self.limiter.admit(p, addr):
            return RefusedConnection()  # aborted at once
        return p

    def stopFactory(self) -> None:
        if self.limiter is not None:
            self.limiter.stop()

    def reportFigures(self, figures: Any) -> None:
        """The connection table's figures (nothing without ``limits``)."""
        if self.limiter is not None:
            self.limiter.reportFigures(figures)
