"""
The edge role: the server side of RFC 5626, a SIP registrar that answers its clients' keepalives on its SIP ports.

``twisted.protocols.sip`` imports the global reactor when it loads, and this module needs it (through
:mod:`.registrar` and :mod:`.sipstream`): import it once the reactor is chosen.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, cast

from twisted.application import service
from twisted.logger import Logger

from ..errors import InvalidSettingsError
from ..protocols import SharedDatagramProtocol, SharedStreamFactory
from .figures import FigureSources, IFigureSource
from .limits import connectionLimits as buildConnectionLimits
from .listeners import StreamListener, UDPListener
from .registrar import ClockedRegistry, EdgeRegisterProxy
from .sipstream import SIPStreamFactory

__all__ = ["EdgeRole"]

log = Logger(namespace="twisted_sipnat.edge")


class EdgeRole(FigureSources, service.MultiService):
    """
    An RFC 5626 edge registrar: :class:`~.registrar.EdgeRegisterProxy` + :class:`~.registrar.ClockedRegistry`, on
    UDP behind ``SharedDatagramProtocol(stunResponder=True)`` (so STUN keepalives on the SIP port are answered,
    RFC 5626 §8.2) and, when ``tcp`` is an endpoint description, SIP over TCP behind
    ``SharedStreamFactory(pongResponder=True)`` (so CRLFCRLF pings get a CRLF pong, RFC 5626 §4.4.1).
    ``flowTimer`` adds ``Flow-Timer: N`` to REGISTER 200s (RFC 5626 §5.4).  ``host`` is what the proxy writes in
    its Via (default: the UDP interface, else 127.0.0.1).  ``reusePort`` binds the UDP socket with
    ``SO_REUSEPORT`` (``--workers``).  ``connectionLimits`` overrides the SIP-over-TCP connection table's
    bounds (``ConnectionLimits`` field names; defaults: :func:`~.limits.connectionLimits`, with the idle timeout
    from ``flowTimer``): see ``docs/roles/edge.rst``, "Connection limits".
    """

    def __init__(
        self,
        reactor: Any,
        udp: Tuple[int, str] = (5060, ""),
        tcp: Optional[str] = None,
        domain: str = "localhost",
        host: Optional[str] = None,
        flowTimer: Optional[int] = None,
        reusePort: bool = False,
        connectionLimits: Optional[Dict[str, Any]] = None,
    ) -> None:
        service.MultiService.__init__(self)
        if flowTimer is not None and flowTimer <= 0:
            raise InvalidSettingsError("flow-timer", flowTimer, "must be a positive number of seconds")
        self.reactor = reactor
        self.registry = ClockedRegistry(domain, reactor)
        self.proxy = EdgeRegisterProxy(host=host or udp[1] or "127.0.0.1", port=udp[0])
        self.proxy.flowTimer = flowTimer
        self.proxy.registry = self.registry
        self.proxy.locator = self.registry
        self.shared = SharedDatagramProtocol(sipProtocol=self.proxy, stunResponder=True, clock=reactor)
        self.udp = UDPListener(reactor, udp[0], self.shared, udp[1], reusePort=reusePort)
        self.udp.setServiceParent(self)
        self.tcp: Optional[StreamListener] = None
        if tcp:
            self.connectionLimits = buildConnectionLimits(connectionLimits, flowTimer)
            factory = SharedStreamFactory(SIPStreamFactory(self.registry, flowTimer), pongResponder=True,
                                          limits=self.connectionLimits, clock=reactor, transport=_transportOf(tcp))
            # The library's factory reports figures without depending on the service layer's interface.
            self.addFigureSource(cast(IFigureSource, factory))
            self.tcp = StreamListener(reactor, tcp, factory)
            self.tcp.setServiceParent(self)

    def startService(self) -> None:
        service.MultiService.startService(self)
        if self.proxy.port == 0:
            self.proxy.port = self.udp.address()[1]
        host, port = self.udp.address()
        log.info("edge registrar for {domain} on UDP {host}:{port}", domain=self.registry.domain, host=host, port=port)

    def stopService(self) -> Any:
        self.registry.clear()
        return service.MultiService.stopService(self)


def _transportOf(description: str) -> str:
    """The metric label of a stream endpoint description: ``tls`` for ``ssl:``/``tls:``, else ``tcp``."""
    return "tls" if description.split(":", 1)[0].lower() in ("ssl", "tls") else "tcp"
