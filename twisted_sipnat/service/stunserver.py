"""
The stun role: a standalone STUN Binding server (RFC 8489 §6.3), with RFC 5780 alternate addresses when asked.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple, cast

from twisted.application import service
from twisted.logger import Logger

from ..core.ratelimit import DEFAULT_RATE_LIMIT_SOURCES
from ..core.responder import DEFAULT_RESPONDER_BURST, DEFAULT_RESPONDER_RATE, BindingResponder, RateLimit
from ..errors import InvalidSettingsError
from ..protocols import SharedDatagramProtocol, sayDrops
from .figures import FigureSources, IFigureSource
from .limits import connectionLimits as buildConnectionLimits
from .listeners import StreamListener, UDPListener
from .stunstream import STUNStreamFactory

__all__ = ["STUNRole"]

HostPort = Tuple[str, int]

log = Logger(namespace="twisted_sipnat.stun")


class STUNRole(FigureSources, service.MultiService):
    """
    A standalone STUN Binding server (RFC 8489 §6.3): UDP on ``udp``, optionally TCP on the endpoint ``tcp``.

    ``alternate`` (``(IP, port)``) enables RFC 5780: the role also listens on the primary IP with the alternate
    port and on the alternate IP with both ports, and the responder adds OTHER-ADDRESS / RESPONSE-ORIGIN and
    honours CHANGE-REQUEST by answering from the socket it asks for.  The alternate IP must be an address of
    this machine, and the primary interface must be given (a wildcard cannot be an OTHER-ADDRESS).
    ``rateLimit`` is ``(perSourceRate, burst)`` or ``None`` to switch it off (on by default, with the
    responder's defaults), so the server cannot be used to amplify floods.  ``reusePort`` binds every UDP socket
    with ``SO_REUSEPORT`` (``--workers``).  ``connectionLimits`` overrides the STUN-over-TCP connection table's
    bounds (``ConnectionLimits`` field names; defaults: :func:`~.limits.connectionLimits`): see
    ``docs/roles/stun.rst``, "Connection limits".
    """

    def __init__(
        self,
        reactor: Any,
        udp: Tuple[int, str] = (3478, ""),
        tcp: Optional[str] = None,
        alternate: Optional[HostPort] = None,
        rateLimit: Optional[Tuple[float, int]] = (DEFAULT_RESPONDER_RATE, DEFAULT_RESPONDER_BURST),
        software: Optional[str] = None,
        reusePort: bool = False,
        connectionLimits: Optional[Mapping[str, Any]] = None,
        rateLimitSources: int = DEFAULT_RATE_LIMIT_SOURCES,
    ) -> None:
        service.MultiService.__init__(self)
        if alternate is not None and not udp[1]:
            raise InvalidSettingsError("alternate", alternate, "RFC 5780 needs the primary interface given (udp:PORT:interface=IP)")
        if alternate is not None and not udp[0]:
            raise InvalidSettingsError("alternate", alternate, "RFC 5780 needs a fixed primary port, not udp:0")
        self.reactor = reactor
        self.reusePort = reusePort
        limit = RateLimit(rateLimit[0], rateLimit[1], rateLimitSources) if rateLimit is not None else None
        primary = (udp[1], udp[0]) if alternate is not None else None
        self.responder = BindingResponder(software=software, primary=primary, alternate=alternate, rateLimit=limit,
                                          say=sayDrops)
        # One responder for every socket and the TCP listener: it reports once, for all of them.
        self.addFigureSource(cast(IFigureSource, self.responder))  # the sans-IO core has no zope declarations
        self.sockets: Dict[HostPort, UDPListener] = {}
        self._shared: Dict[HostPort, SharedDatagramProtocol] = {}
        self.listener = self._listen(udp[0], udp[1])
        if alternate is not None:
            for host, port in ((udp[1], alternate[1]), (alternate[0], udp[0]), (alternate[0], alternate[1])):
                self._listen(port, host)
        self.tcp: Optional[StreamListener] = None
        if tcp:
            streams = STUNStreamFactory(self.responder, reactor, buildConnectionLimits(connectionLimits),
                                        transport="tls" if tcp.split(":", 1)[0].lower() in ("ssl", "tls") else "tcp")
            self.addFigureSource(streams)
            self.tcp = StreamListener(reactor, tcp, streams)
            self.tcp.setServiceParent(self)

    def _listen(self, port: int, interface: str) -> UDPListener:
        shared = SharedDatagramProtocol(stunResponder=True, responder=self.responder, clock=self.reactor)
        listener = UDPListener(self.reactor, port, shared, interface, reusePort=self.reusePort)
        listener.setServiceParent(self)
        self.sockets[(interface, port)] = listener
        self._shared[(interface, port)] = shared
        return listener

    def startService(self) -> None:
        service.MultiService.startService(self)
        # RFC 5780 CHANGE-REQUEST: each socket must be able to answer from any of the others.
        transports = {address: listener.port for address, listener in self.sockets.items()}
        for shared in self._shared.values():
            shared.alternateSockets.update(transports)
        host, port = self.address()
        log.info("STUN server on UDP {host}:{port}{alt}", host=host, port=port,
                 alt=" with RFC 5780 alternates" if len(self.sockets) > 1 else "", sipnat_event="stun.listening")

    def stopService(self) -> Any:
        for shared in self._shared.values():
            shared.alternateSockets.clear()
        self.responder.flushSummaries(self.reactor.seconds())  # nothing dropped goes unsaid at shutdown
        return service.MultiService.stopService(self)

    def address(self) -> HostPort:
        """The primary socket's ``(host, port)`` while running."""
        return self.listener.address()
