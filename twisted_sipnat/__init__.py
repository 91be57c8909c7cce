"""
twisted_sipnat: SIP NAT traversal for Twisted.

A SIP stack behind a NAT learns its public address with a STUN Binding (RFC 8489) sent from its own SIP socket
(:meth:`NATTraversalController.resolvePublicAddress`) and keeps the NAT binding alive after registering
(:meth:`NATTraversalController.refreshNATBinding`: STUN on UDP, CRLF ping/pong on TCP/TLS, RFC 5626).
:class:`SharedDatagramProtocol` and :class:`SharedStreamFactory` let the SIP stack and the library share one
socket, and answer STUN and pings in the server role.
"""

from . import stun
from ._version import __version__
from .controller import NATTraversalController
from .errors import (
    FlowConnectionLost,
    FlowFailure,
    InvalidSettingsError,
    MappedAddressChanged,
    NATTraversalError,
    PongTimeout,
    ResourceLimitError,
    STUNErrorResponse,
    STUNTimeout,
    UnknownDomainError,
)
from .interfaces import IBindingObserver, ISharedSocket
from .protocols import SharedDatagramProtocol, SharedStreamFactory, SharedStreamProtocol
from .settings import NATSettings
from .stun import STUNDecodeError

__all__ = [
    "FlowConnectionLost",
    "FlowFailure",
    "IBindingObserver",
    "ISharedSocket",
    "InvalidSettingsError",
    "MappedAddressChanged",
    "NATSettings",
    "NATTraversalController",
    "NATTraversalError",
    "PongTimeout",
    "ResourceLimitError",
    "STUNDecodeError",
    "STUNErrorResponse",
    "STUNTimeout",
    "SharedDatagramProtocol",
    "SharedStreamFactory",
    "SharedStreamProtocol",
    "UnknownDomainError",
    "__version__",
    "stun",
]
