"""
STUN over TCP (RFC 8489 §6.2.2) for the stun role: the stream framed by the core's
:class:`~twisted_sipnat.core.stun.StreamFramer`, each request answered in order by the role's sans-IO
:class:`~twisted_sipnat.core.responder.BindingResponder`.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import protocol
from twisted.logger import Logger

from ..core.stun import StreamFramer, STUNDecodeError

__all__ = ["STUNStreamFactory", "STUNStreamProtocol"]

log = Logger(namespace="twisted_sipnat.stun")


class STUNStreamProtocol(protocol.Protocol):
    """
    One STUN-over-TCP connection.  A stream that stops looking like STUN at a message boundary is out of sync
    for good (there is no resynchronising a length-framed stream), so the connection is closed.
    """

    def __init__(self, responder: Any, clock: Any) -> None:
        self.responder = responder
        self.clock = clock
        self.framer = StreamFramer()

    def dataReceived(self, data: bytes) -> None:
        transport: Any = self.transport
        try:
            messages = self.framer.feed(data)
        except STUNDecodeError as e:
            log.info("closing STUN/TCP connection from {peer}: {why}", peer=transport.getPeer(), why=str(e),
                     sipnat_event="stun.stream.closed")
            transport.loseConnection()
            return
        if not messages:
            return
        peer, local = transport.getPeer(), transport.getHost()
        for message in messages:
            # stream=True: RESPONSE-PORT is meaningless on a connection (RFC 5780 §7.5): answered here.
            reply = self.responder.respond(message, (peer.host, peer.port), receivedOn=(local.host, local.port),
                                           now=self.clock.seconds(), stream=True)
            if reply is not None:
                transport.write(reply.data)


class STUNStreamFactory(protocol.Factory):
    """Builds a :class:`STUNStreamProtocol` per connection, all sharing one responder."""

    noisy = False

    def __init__(self, responder: Any, clock: Any) -> None:
        self.responder = responder
        self.clock = clock

    def reportFigures(self, figures: Any) -> None:
        """``sipnat_stun_requests_total{result}`` of the responder (``IFigureSource``; a role that shares the
        responder with its UDP sockets reports the responder once instead)."""
        self.responder.reportFigures(figures)

    def buildProtocol(self, addr: Any) -> STUNStreamProtocol:
        p = STUNStreamProtocol(self.responder, self.clock)
        p.factory = self
        return p
