"""zope.interface declarations: what the controller expects of the SIP stack's observer."""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IBindingObserver(Interface):
    """
    The SIP stack's view of one flow (one registration through one socket).

    Contexts in the controller are keyed by the observer, so one object per flow.
    """

    def flowFailure(reason: object) -> None:
        """
        The flow failed; called once per failure, after which the flow's keepalives have stopped.

        ``reason`` is a :class:`twisted.python.failure.Failure` wrapping a
        :class:`~twisted_sipnat.errors.FlowFailure`: ``STUNTimeout``, ``MappedAddressChanged``, ``PongTimeout``
        or ``FlowConnectionLost``.  RFC 5626 §4.4: the stack re-registers (after the §4.5 backoff) and calls
        ``refreshNATBinding`` again.

        A stop is not a failure: once the controller stopped (the reactor's "before shutdown" event, or
        ``NATTraversalController.stop()``), the sockets that close end their flows without this call.
        """


class ISharedSocket(Interface):
    """
    A socket the SIP stack and the controller share: what the controller needs to write keepalives on it
    without stepping on the SIP stack.  :class:`~twisted_sipnat.protocols.SharedDatagramProtocol` and
    :class:`~twisted_sipnat.protocols.SharedStreamProtocol` provide it; the controller adapts any other
    ``socket`` (a Twisted transport, or a protocol with a ``transport``) to it.
    """

    isStream = Attribute("True for TCP/TLS (CRLF ping/pong), False for UDP (STUN or CRLF datagrams).")
    arbiter = Attribute("The twisted_sipnat.core.arbitration.Arbiter that decides when a keepalive may be written.")

    def sendKeepalive(key: object, data: bytes, addr: object) -> bool:
        """
        Write a keepalive of the controller's now if the socket's arbitration allows it (``True``), else hold
        it under ``key``, at most one per key (``False``).  A held keepalive is written when the socket is free
        again; the socket then tells the controller (``keepalivesWritten``) unless :meth:`sipIdle` returned it.
        Raises :class:`~twisted_sipnat.errors.NATTraversalError` when the arbitration refuses it.
        """

    def withdrawKeepalive(key: object) -> None:
        """Drop the keepalive held under ``key`` (its context stopped)."""

    def sipIdle(idle: bool) -> list:  # type: ignore[type-arg]
        """
        The SIP stack's ``socketIdle(idle)``: with ``True``, write the held keepalives (in order,
        synchronously) and return their keys.
        """

    def writeKeepalive(data: bytes, addr: object) -> None:
        """Write keepalive bytes now, bypassing arbitration."""

    def peerAddress() -> object:
        """For a stream: ``(host, port)`` of the connection's peer; ``None`` for a datagram socket."""

    def localAddress() -> object:
        """The local ``IAddress`` of the socket, or ``None`` if unknown."""
