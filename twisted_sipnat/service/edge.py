"""
The edge role: the server side of RFC 5626, a SIP registrar and stateless proxy that answers its clients'
keepalives on its SIP ports.  The SIP side is the project's own (:mod:`twisted_sipnat.core.registrar`,
:mod:`twisted_sipnat.core.proxy`, driven by :mod:`.sipedge`); ``twisted.protocols.sip`` is not used.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, cast

from twisted.application import service
from twisted.logger import Logger

from ..core.proxy import DEFAULT_SIP_BURST, DEFAULT_SIP_RATE, EdgeProxy
from ..core.ratelimit import DEFAULT_RATE_LIMIT_SOURCES, RateLimit
from ..core.registrar import (
    DEFAULT_DEFAULT_EXPIRES,
    DEFAULT_MAX_CONTACTS,
    DEFAULT_MAX_EXPIRES,
    DEFAULT_MAX_REGISTRATIONS,
    DEFAULT_MIN_EXPIRES,
    Registrar,
)
from ..core.responder import DEFAULT_RESPONDER_BURST, DEFAULT_RESPONDER_RATE, BindingResponder
from ..errors import InvalidSettingsError
from ..protocols import SharedDatagramProtocol, SharedStreamFactory
from ..settings import DEFAULT_SOFTWARE
from .figures import FigureSources, IFigureSource
from .limits import connectionLimits as buildConnectionLimits
from .listeners import StreamListener, UDPListener
from .sipedge import SIPEdge, SIPEdgeDatagramProtocol, SIPEdgeStreamFactory

__all__ = ["EdgeRole"]

log = Logger(namespace="twisted_sipnat.edge")


class EdgeRole(FigureSources, service.MultiService):
    """
    An RFC 5626 edge registrar and proxy: :class:`~twisted_sipnat.core.registrar.Registrar` (``registry``) and
    :class:`~twisted_sipnat.core.proxy.EdgeProxy` (``proxy``) driven by :class:`~.sipedge.SIPEdge` (``sip``), on
    UDP behind ``SharedDatagramProtocol(stunResponder=True)`` (so STUN keepalives on the SIP port are answered,
    RFC 5626 §8.2) and, when ``tcp`` is an endpoint description, SIP over TCP behind
    ``SharedStreamFactory(pongResponder=True)`` (so CRLFCRLF pings get a CRLF pong, RFC 5626 §4.4.1).
    ``flowTimer`` adds ``Flow-Timer: N`` to REGISTER 200s (RFC 5626 §5.4).  ``host`` is what the proxy writes in
    its Via (default: the UDP interface, else 127.0.0.1).  ``reusePort`` binds the UDP socket with
    ``SO_REUSEPORT`` (``--workers``).  ``connectionLimits`` overrides the SIP-over-TCP connection table's
    bounds (``ConnectionLimits`` field names; defaults: :func:`~.limits.connectionLimits`, with the idle timeout
    from ``flowTimer``): see ``docs/roles/edge.rst``, "Connection limits".  ``maxRegistrations``,
    ``maxContacts``, ``minExpires``, ``maxExpires`` and ``defaultExpires`` bound the registrar
    (``docs/roles/edge.rst``); ``sipRate`` / ``sipBurst`` are the per-source token bucket on SIP messages
    (``sipRate=None`` switches it off).
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
        *,
        maxRegistrations: int = DEFAULT_MAX_REGISTRATIONS,
        maxContacts: int = DEFAULT_MAX_CONTACTS,
        minExpires: int = DEFAULT_MIN_EXPIRES,
        maxExpires: int = DEFAULT_MAX_EXPIRES,
        defaultExpires: int = DEFAULT_DEFAULT_EXPIRES,
        sipRate: Optional[float] = DEFAULT_SIP_RATE,
        sipBurst: int = DEFAULT_SIP_BURST,
        rateLimitSources: int = DEFAULT_RATE_LIMIT_SOURCES,
    ) -> None:
        service.MultiService.__init__(self)
        if flowTimer is not None and flowTimer <= 0:
            raise InvalidSettingsError("flow-timer", flowTimer, "must be a positive number of seconds")
        self.reactor = reactor
        self.domain = domain
        self.registry = Registrar([domain], maxRegistrations=maxRegistrations, maxContacts=maxContacts,
                                  minExpires=minExpires,
                                  maxExpires=maxExpires, defaultExpires=defaultExpires, flowTimer=flowTimer)
        self.proxy = EdgeProxy(self.registry, host=host or udp[1] or "127.0.0.1", ports={"udp": udp[0]})
        self._guessedHost = host is None and not udp[1]
        rateLimit = None
        if sipRate is not None:
            try:
                rateLimit = RateLimit(sipRate, sipBurst, rateLimitSources)
            except InvalidSettingsError as e:
                raise InvalidSettingsError("sip-rate" if e.key == "perSourceRate" else "sip-burst", e.value,
                                           e.why) from None
        self.sip = SIPEdge(reactor, self.proxy, rateLimit=rateLimit)
        self.addFigureSource(self.sip)
        self.sipProtocol = SIPEdgeDatagramProtocol(self.sip)
        # STUN keepalives on the SIP port (RFC 5626 §8.2), rate-limited per source with the responder's defaults.
        responder = BindingResponder(software=DEFAULT_SOFTWARE, rateLimit=RateLimit(
            DEFAULT_RESPONDER_RATE, DEFAULT_RESPONDER_BURST, rateLimitSources))
        self.shared = SharedDatagramProtocol(sipProtocol=self.sipProtocol, stunResponder=True, responder=responder,
                                             clock=reactor)
        self.addFigureSource(cast(IFigureSource, self.shared))  # the STUN keepalives answered on the SIP port
        self.udp = UDPListener(reactor, udp[0], self.shared, udp[1], reusePort=reusePort)
        self.udp.setServiceParent(self)
        self.tcp: Optional[StreamListener] = None
        if tcp:
            self.connectionLimits = buildConnectionLimits(connectionLimits, flowTimer)
            streamTransport = _transportOf(tcp)
            factory = SharedStreamFactory(SIPEdgeStreamFactory(self.sip, streamTransport), pongResponder=True,
                                          limits=self.connectionLimits, clock=reactor, transport=streamTransport)
            # The library's factory reports figures without depending on the service layer's interface.
            self.addFigureSource(cast(IFigureSource, factory))
            self.tcp = StreamListener(reactor, tcp, factory)
            self.tcp.setServiceParent(self)

    def startService(self) -> None:
        service.MultiService.startService(self)
        host, port = self.udp.address()
        if self.proxy.ports.get("udp") == 0:
            self.proxy.ports["udp"] = port
        log.info("edge registrar for {domain} on UDP {host}:{port}", domain=self.domain, host=host, port=port,
                 sipnat_event="sipnat.edge.started")
        if self._guessedHost:
            # The Via of every proxied request names this host, and user agents answer to it.
            log.warn("no --host given and UDP on every interface: proxied requests name {via} in their Via",
                     via=self.proxy.host, sipnat_event="sipnat.edge.host-guessed")

    def stopService(self) -> Any:
        self.sip.stop()
        return service.MultiService.stopService(self)


def _transportOf(description: str) -> str:
    """The metric label of a stream endpoint description: ``tls`` for ``ssl:``/``tls:``, else ``tcp``."""
    return "tls" if description.split(":", 1)[0].lower() in ("ssl", "tls") else "tcp"
