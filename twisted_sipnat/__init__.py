"""
twisted_sipnat: SIP NAT traversal for Twisted.

A SIP stack behind a NAT learns its public address with a STUN Binding (RFC 8489) sent from its own SIP socket
(:meth:`NATTraversalController.resolvePublicAddress`) and keeps the NAT binding alive after registering
(:meth:`NATTraversalController.refreshNATBinding`: STUN on UDP, CRLF ping/pong on TCP/TLS, RFC 5626).
:class:`SharedDatagramProtocol` and :class:`SharedStreamFactory` let the SIP stack and the library share one
socket, and answer STUN and pings in the server role.
"""

from typing import TYPE_CHECKING, Any

from ._version import __version__

# The public names, each with the module that defines it.  They are imported on first use (PEP 562), so that
# importing a pure module such as ``twisted_sipnat.core.stun`` or ``twisted_sipnat.errors`` does not pull in
# Twisted: the sans-IO core must import on a Python without it.
_PUBLIC = {
    "NATTraversalController": "controller",
    "FlowConnectionLost": "errors",
    "FlowFailure": "errors",
    "InvalidSettingsError": "errors",
    "MappedAddressChanged": "errors",
    "NATTraversalError": "errors",
    "PongTimeout": "errors",
    "ResourceLimitError": "errors",
    "STUNErrorResponse": "errors",
    "STUNTimeout": "errors",
    "UnknownDomainError": "errors",
    "UnusableSTUNAnswer": "errors",
    "IBindingObserver": "interfaces",
    "ISharedSocket": "interfaces",
    "SharedDatagramProtocol": "protocols",
    "SharedStreamFactory": "protocols",
    "SharedStreamProtocol": "protocols",
    "NATSettings": "settings",
    "STUNDecodeError": "core.stun",
}

if TYPE_CHECKING:
    from . import stun
    from .controller import NATTraversalController
    from .core.stun import STUNDecodeError
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
        UnusableSTUNAnswer,
    )
    from .interfaces import IBindingObserver, ISharedSocket
    from .protocols import SharedDatagramProtocol, SharedStreamFactory, SharedStreamProtocol
    from .settings import NATSettings


def __getattr__(name: str) -> Any:
    from importlib import import_module

    try:
        module = _PUBLIC[name]
    except KeyError:
        # a submodule used as an attribute (``twisted_sipnat.controller.X`` after ``import twisted_sipnat``),
        # as it was when this package imported its modules eagerly
        try:
            return import_module("." + name, __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(import_module("." + module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC, "stun"])


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
    "UnusableSTUNAnswer",
    "__version__",
    "stun",
]
