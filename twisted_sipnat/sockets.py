"""
The controller's view of a socket it is handed: the shared socket behind whatever the caller passed, and an
:class:`~twisted_sipnat.interfaces.ISharedSocket` adapter for a plain Twisted transport (or a protocol with a
``transport``) whose SIP stack reads it itself and calls ``dataReceived``/``socketIdle``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, Optional, Tuple, Union

from twisted.internet.address import IPv4Address, IPv6Address
from zope.interface import implementer

from .core.addresses import hostPortOf
from .core.arbitration import Arbiter
from .interfaces import ISharedSocket
from .protocols import HeldKeepalives, sendDatagram

HostPort = Tuple[str, int]
PublicAddress = Union[IPv4Address, IPv6Address]


def publicAddress(address: HostPort, stream: bool = False) -> PublicAddress:
    """The ``IPv4Address``/``IPv6Address`` of a mapped ``(host, port)``."""
    host, port = address
    cls = IPv6Address if ":" in host else IPv4Address
    return cls("TCP" if stream else "UDP", host, port)


class SocketState:
    """The shell's side of one shared socket: the caller's object, its adapter, and the engine's record."""

    __slots__ = ("socket", "adapter", "record", "__weakref__")

    def __init__(self, socket: Any, adapter: Any) -> None:
        self.socket = socket
        self.adapter = adapter  #: the ISharedSocket provider (or a BareSocket around a plain transport)
        self.record: Any = None  #: the engine's SocketRecord


def canonicalSocket(socket: Any) -> Any:
    """
    The shared socket behind what the caller passed: a SIP protocol whose transport is (or wraps) a shared
    socket, or the transport a :class:`~twisted_sipnat.protocols.SharedDatagramProtocol` gave its SIP protocol,
    all mean that shared socket.
    """
    if ISharedSocket.providedBy(socket):
        return socket
    shared = getattr(socket, "sharedSocket", None)
    if shared is not None and ISharedSocket.providedBy(shared):
        return shared
    transport = getattr(socket, "transport", None)
    if transport is not None:
        if ISharedSocket.providedBy(transport):
            return transport
        shared = getattr(transport, "sharedSocket", None)
        if shared is not None and ISharedSocket.providedBy(shared):
            return shared
    return socket


def looksLikeStream(socket: Any) -> bool:
    from twisted.internet.interfaces import ITCPTransport, IUDPTransport
    from twisted.internet.protocol import DatagramProtocol

    if isinstance(socket, DatagramProtocol) or IUDPTransport.providedBy(socket):
        return False
    transport = getattr(socket, "transport", None)
    if transport is not None and IUDPTransport.providedBy(transport):
        return False
    return bool(ITCPTransport.providedBy(socket) or ITCPTransport.providedBy(transport) or transport is not None)


@implementer(ISharedSocket)
class BareSocket(HeldKeepalives):
    """
    A socket the SIP stack reads itself: a Twisted transport, or a protocol with a ``transport``.  The
    adapter keeps the socket's arbiter, since the SIP stack writes to the transport directly.
    """

    def __init__(self, socket: Any, isStream: bool, stats: Counter[str]) -> None:
        self._socket = socket
        self.isStream = isStream
        self.arbiter = Arbiter(stream=isStream)
        self._stats = stats
        self._heldTo: Dict[Any, Any] = {}

    def _transport(self) -> Any:
        return getattr(self._socket, "transport", None) or self._socket

    def writeKeepalive(self, data: bytes, addr: Any) -> None:
        transport = self._transport()
        if self.isStream:
            transport.write(data)
        else:
            # A write the OS refuses is a lost datagram: the transaction's timers report it (RFC 8489 §6.2.1).
            sendDatagram(transport, data, addr, self._stats, "a keepalive")

    def peerAddress(self) -> Optional[HostPort]:
        if not self.isStream:
            return None
        try:
            return hostPortOf(self._transport().getPeer())
        except Exception:
            return None

    def localAddress(self) -> Any:
        try:
            return self._transport().getHost()
        except Exception:
            return None
