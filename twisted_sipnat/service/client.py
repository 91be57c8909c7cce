"""
The client role: what a SIP user agent behind a NAT does, as a service.

Bind the SIP socket (a :class:`~twisted_sipnat.protocols.SharedDatagramProtocol`), learn the public address with
STUN, optionally REGISTER with the next hop (:mod:`.sipclient`), keep the binding alive toward it, and on a flow
failure start again after the RFC 5626 §4.5 backoff.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Tuple, Union

from twisted.application import service
from twisted.application.service import IService
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..controller import NATTraversalController
from ..core.backoff import Backoff
from ..core.sip.digest import Credentials
from ..errors import InvalidSettingsError, MappedAddressChanged
from ..interfaces import IBindingObserver
from ..protocols import SharedDatagramProtocol
from ..settings import NATSettings
from .figures import FigureSources, IFigureSource
from .flowfigures import ControllerFigures
from .flowtransport import FlowTransport, openRegisterClient
from .listeners import UDPListener
from .sipclient import RegisterClient, registrarKeepalive, routeSource

__all__ = ["ClientRole"]

HostPort = Tuple[str, int]
NextHop = Union[HostPort, Callable[[], HostPort]]

log = Logger(namespace="twisted_sipnat.client")

#: RFC 3261 §10.2.4: refresh a registration at this fraction of the lifetime the registrar granted.
REFRESH_AT = 0.9


@implementer(IBindingObserver)
class _RoleObserver:
    """The client role's observer for its one flow: its controller context is keyed by it."""

    def __init__(self, role: ClientRole) -> None:
        self.role = role

    def flowFailure(self, reason: object) -> None:
        self.role._flowFailed(reason)


@implementer(IFigureSource)
class ClientRole(service.MultiService, FigureSources):
    """
    A SIP UA's NAT traversal as a service: bind, resolve, (register), keep alive, recover.

    ``nextHop`` is an ``(IP, port)`` or a callable returning one (the embedded default asks its STUN role for
    the port it bound).  ``settings`` is a ``{domain: NATSettings}`` mapping as the controller takes it, and
    ``domain`` the key to use.  ``register`` is an AOR (``alice@example.com``) to REGISTER with the next hop
    after the address is known; its 200 OK's Flow-Timer (or Via ``keep``) becomes the keepalive interval.
    ``random`` feeds the RFC 5626 §4.5 backoff; ``backoffBase`` replaces its base-time (30 s).

    Attributes a test or an operator reads: ``publicAddress`` (the last resolved ``IPv4Address``/``IPv6Address``),
    ``flowTimer`` (what the registrar asked for), ``failures`` (flow failures so far), ``keepalivesStarted``,
    ``ready`` (a Deferred fired with the public address once keepalives first started).
    """

    def __init__(
        self,
        reactor: Any,
        nextHop: NextHop,
        settings: Mapping[str, NATSettings],
        domain: str,
        listen: Tuple[int, str] = (5060, ""),
        register: Optional[str] = None,
        random: Optional[Callable[[], float]] = None,
        controller: Any = None,
        backoffBase: Optional[float] = None,
        credentials: Optional[Credentials] = None,
        instance: Optional[str] = None,
        outbound: bool = True,
        transport: Optional[FlowTransport] = None,
    ) -> None:
        service.MultiService.__init__(self)
        if domain not in settings:
            raise InvalidSettingsError("domain", domain, f"no settings for it (have: {', '.join(sorted(settings))})")
        self.reactor = reactor
        self.domain = domain
        self._nextHop = nextHop
        self.controller = controller if controller is not None else NATTraversalController(dict(settings), reactor=reactor)
        self.addFigureSource(ControllerFigures(self.controller))
        self.aor = register
        # The user agent (docs/roles/client.rst, "Authentication", "Outbound"): digest credentials, and RFC 5626
        # outbound with reg-id 1 when an instance ID is given and outbound is not switched off.
        # The flow's transport (docs/roles/client.rst, "Transports"): UDP on the shared socket, or a TCP/TLS
        # connection of the REGISTER client's own, which the keepalives then run on.
        self.flowTransport = transport if transport is not None else FlowTransport()
        if self.flowTransport.stream and register is None:
            raise InvalidSettingsError("transport", self.flowTransport.name, "a TCP or TLS flow is made by --register")
        self.registerClient = openRegisterClient(
            reactor, self.flowTransport, register, nextHop, self.controller, credentials=credentials,
            instance=instance, regId=1 if outbound and instance is not None else None,
        ) if register is not None else None
        if self.registerClient is not None:
            self.addFigureSource(self.registerClient)
        if IService.providedBy(self.registerClient):
            self.registerClient.setServiceParent(self)  # type: ignore[union-attr]
        udpClient = self.registerClient if isinstance(self.registerClient, RegisterClient) else None
        self.shared = SharedDatagramProtocol(sipProtocol=udpClient, controller=self.controller, clock=reactor)
        self.listener = UDPListener(reactor, listen[0], self.shared, listen[1], option="listen")
        self.listener.setServiceParent(self)
        self.observer = _RoleObserver(self)
        self.backoff = Backoff(random, backoffBase)
        self.publicAddress: Union[IPv4Address, IPv6Address, None] = None
        self.flowTimer: Optional[int] = None
        self.failures = 0
        self.keepalivesStarted = 0
        self._retry: Any = None
        self._refresh: Any = None
        self._pending: Optional[defer.Deferred[Any]] = None
        self._registeredContact: Optional[HostPort] = None
        self._reboundAllowed = False
        self.ready: defer.Deferred[Any] = defer.Deferred()

    @property
    def nextHop(self) -> HostPort:
        hop = self._nextHop
        return hop() if callable(hop) else hop

    @property
    def retryAt(self) -> Optional[float]:
        """When the next attempt after a failure is due (reactor seconds), or ``None`` when none is scheduled."""
        if self._retry is not None and self._retry.active():
            return float(self._retry.getTime())
        return None

    @property
    def refreshAt(self) -> Optional[float]:
        """When the registration is next refreshed (reactor seconds), or ``None`` when no refresh is scheduled."""
        if self._refresh is not None and self._refresh.active():
            return float(self._refresh.getTime())
        return None

    def startService(self) -> None:
        service.MultiService.startService(self)
        self._attempt()

    def _attempt(self) -> None:
        self._retry = None
        if not self._mayRetry():
            return
        hop = self.nextHop
        if self.registerClient is not None and (self.registerClient.registration.outbound or self.flowTransport.stream):
            self._registerFirst(hop)  # a stream flow registers first in any case: no STUN inside a SIP stream
            return
        d = self.controller.resolvePublicAddress(self.domain, self.shared, hop, observer=self.observer)
        self._pending = d
        d.addCallback(self._resolved, hop)
        d.addErrback(self._failed)

    def _resolved(self, address: Union[IPv4Address, IPv6Address], hop: HostPort) -> Any:
        self.publicAddress = address
        log.info(
            "public address {host}:{port} (next hop {nhost}:{nport})",
            host=address.host, port=address.port, nhost=hop[0], nport=hop[1],
            sipnat_event="sipnat.client.publicAddress",
        )
        if self.registerClient is None:
            self._keepAlive(hop, None)
            return None
        self._registeredContact = (address.host, address.port)
        d = self.registerClient.register(self._registeredContact)
        self._pending = d
        d.addCallback(self._registered, hop)
        return d

    # -- RFC 5626 outbound: register first, then keep the flow alive (§4.2, §4.4) --

    def _registerFirst(self, hop: HostPort) -> None:
        """
        With outbound the REGISTER goes first (RFC 5626 §4.2): the Contact's address does not matter (the
        instance and reg-id identify the flow, §6), and an edge may answer STUN only on a registered flow
        (ejabberd).  The public address is then the 2xx's Via ``received``/``rport`` (RFC 3581), and the
        keepalives start on the flow the REGISTER made.
        """
        assert self.registerClient is not None
        self._registeredContact = self._localAddress(hop)
        d = self.registerClient.register(self._registeredContact)
        self._pending = d
        d.addCallback(self._registeredFirst, hop)
        d.addErrback(self._failed)

    def _registeredFirst(self, response: Any, hop: HostPort) -> None:
        registered = self.registerClient.registered if self.registerClient is not None else None
        if registered is not None and registered.reflexive is not None:
            host, port = registered.reflexive
            self.publicAddress = (IPv6Address if ":" in host else IPv4Address)("UDP", host, port)
        if registered is not None:
            log.info("outbound {state} by the registrar (Require: outbound {present})",
                     state="honoured" if registered.outbound else "not honoured",
                     present="present" if registered.outbound else "absent",
                     sipnat_event="sipnat.client.outbound")
        self._registered(response, hop)

    def _localAddress(self, hop: HostPort) -> HostPort:
        """The SIP socket's address toward ``hop``: its bound address, or the route's source for a wildcard."""
        local = self.shared.transport.getHost() if self.shared.transport is not None else None
        host = str(getattr(local, "host", "") or "")
        port = int(getattr(local, "port", 0) or 0)
        if host in ("", "0.0.0.0", "::"):
            host = routeSource(hop, "127.0.0.1")
        return (host, port)

    def _bindingAddress(self) -> HostPort:
        """The address a refresh binds: the one the last registration bound."""
        assert self._registeredContact is not None
        return self._registeredContact

    def _granted(self, response: Any) -> int:
        return self.registerClient.grantedExpires(response) if self.registerClient is not None else 3600

    def _registered(self, response: Any, hop: HostPort) -> None:
        interval = registrarKeepalive(response)
        self.flowTimer = interval
        granted = self._granted(response)
        log.info("registered {aor} for {expires} s; registrar keepalive interval {flowTimer}", aor=self.aor,
                 expires=granted, flowTimer=interval, sipnat_event="sipnat.client.registered")
        self._keepAlive(hop, interval)
        self._scheduleRefresh(granted, hop)

    def _scheduleRefresh(self, granted: int, hop: HostPort) -> None:
        """Refresh the registration before it lapses (RFC 3261 §10.2.4); a failed refresh is a failed flow."""
        self._cancelRefresh()
        self._refresh = self.reactor.callLater(max(1.0, REFRESH_AT * granted), self._refreshRegistration, hop)

    def _refreshRegistration(self, hop: HostPort) -> None:
        self._refresh = None
        if self.registerClient is None or self._registeredContact is None or not self._mayRetry():
            return
        d = self.registerClient.register(self._bindingAddress())
        self._pending = d
        d.addCallback(self._refreshed, hop)
        d.addErrback(self._refreshFailed)

    def _refreshed(self, response: Any, hop: HostPort) -> None:
        self._pending = None
        interval = registrarKeepalive(response)
        if interval != self.flowTimer:
            self.flowTimer = interval
            self.controller.refreshNATBinding(self._flowSocket(), self.observer, nextHop=hop, flowTimer=interval)
        self._scheduleRefresh(self._granted(response), hop)

    def _refreshFailed(self, reason: Failure) -> None:
        self._pending = None
        if reason.check(defer.CancelledError) or not self._mayRetry():
            return
        self.controller.freeResources(self.observer)
        self._flowFailed(reason)

    def _keepAlive(self, hop: HostPort, flowTimer: Optional[int]) -> None:
        self._pending = None
        started = self.controller.refreshNATBinding(self._flowSocket(), self.observer, nextHop=hop,
                                                    flowTimer=flowTimer, domain=self.domain)
        self.keepalivesStarted += 1
        self._reboundAllowed = True
        self.backoff.succeeded()
        log.info("keepalives toward {host}:{port}: {state}", host=hop[0], port=hop[1],
                 state="started" if started else "not needed", sipnat_event="sipnat.client.keepalive.started")
        if not self.ready.called:
            self.ready.callback(self.publicAddress)

    def _flowSocket(self) -> Any:
        """What the flow's keepalives run on: the shared UDP socket, or the stream flow's connection."""
        if self.flowTransport.stream and self.registerClient is not None:
            return self.registerClient.socket
        return self.shared

    def _failed(self, reason: Failure) -> None:
        self._pending = None
        if reason.check(defer.CancelledError) or not self._mayRetry():
            return
        log.warn("NAT traversal attempt failed: {why}", why=reason.getErrorMessage(), sipnat_event="sipnat.client.failed")
        self._scheduleRetry()

    def _flowFailed(self, reason: object) -> None:
        self._cancelRefresh()
        # a refresh REGISTER in flight belongs to the failed flow: stop it, or its 200 would revive that flow
        pending, self._pending = self._pending, None
        if pending is not None and not pending.called:
            pending.cancel()
        if self.registerClient is not None:
            self.registerClient.stop()
            self.registerClient.dropFlow()  # a stream flow's connection goes: the next attempt makes a new flow
        self.failures += 1
        why = reason.getErrorMessage() if isinstance(reason, Failure) else str(reason)
        log.warn("flow failure: {why}", why=why, sipnat_event="sipnat.client.flowFailure")
        if self._mayRetry() and self._rebound(reason):
            return
        if self._mayRetry():
            self._scheduleRetry()

    def _rebound(self, reason: object) -> bool:
        """
        The public address really changed (the NAT rebound the flow, RFC 5626 §4.4.2): register the new one at
        once rather than after the backoff, so the registrar's Contact is right within one round trip.  Only
        when the address differs from the one registered, and once per successful registration: a NAT changing
        the mapping again before that waits for the backoff, never a loop.
        """
        error = reason.value if isinstance(reason, Failure) else reason
        if not isinstance(error, MappedAddressChanged) or self.registerClient is None or not self._reboundAllowed:
            return False
        new = getattr(error, "new", None)
        if new is None or (getattr(new, "host", None), getattr(new, "port", None)) == self._registeredContact:
            return False
        self._reboundAllowed = False
        log.info("public address changed to {host}:{port}: registering it now", host=new.host, port=new.port,
                 sipnat_event="sipnat.client.rebound")
        self._retry = self.reactor.callLater(0, self._attempt)
        return True

    def _mayRetry(self) -> bool:
        """
        Whether a failure may be followed by a new attempt: not once the service stopped, nor once the controller
        did (the reactor is shutting down: a REGISTER then would be sent as the process exits).
        """
        return bool(self.running) and not getattr(self.controller, "stopped", False)

    def _scheduleRetry(self) -> None:
        if not self._mayRetry() or (self._retry is not None and self._retry.active()):
            return
        delay = self.backoff.nextDelay(allFlowsFailed=True)
        log.info("trying again in {delay:.1f} s (RFC 5626 §4.5 backoff)", delay=delay, sipnat_event="sipnat.client.retry")
        self._retry = self.reactor.callLater(delay, self._attempt)

    def _cancelRefresh(self) -> None:
        if self._refresh is not None and self._refresh.active():
            self._refresh.cancel()
        self._refresh = None

    def stopService(self) -> Any:
        self._cancelRefresh()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        pending, self._pending = self._pending, None
        if pending is not None and not pending.called:
            pending.cancel()
        if self.registerClient is not None:
            self.registerClient.stop()
        self.controller.freeResources()
        return service.MultiService.stopService(self)
