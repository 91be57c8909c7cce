"""
The client role: what a SIP user agent behind a NAT does, as a service.

Bind the SIP socket (a :class:`~twisted_sipnat.protocols.SharedDatagramProtocol`), and keep one flow per next hop
(:class:`~twisted_sipnat.service.clientflow.ClientFlow`: RFC 5626 §4.2, each with its own reg-id, REGISTER
client, keepalives and refresh, the same ``+sip.instance`` for all).  The next hops are given (``--next-hop``,
more than once for several flows) or read from the domain's SIP SRV records (:mod:`.siphops`).  A failed flow
recovers on its own after the §4.5 backoff (:class:`twisted_sipnat.core.recovery.FlowRecovery`: 30 s base when
every flow failed, 90 s while another keeps the user agent reachable).  Requests reaching the user agent on a
flow are answered (:mod:`.flowdemux`).
"""

from __future__ import annotations

from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, Union, cast

from twisted.application import service
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..controller import NATTraversalController
from ..core.recovery import STATES, FlowRecovery, RecoveryPolicy
from ..core.sip.digest import Credentials
from ..core.sip.uas import answerRequest
from ..errors import InvalidSettingsError
from ..protocols import SharedDatagramProtocol
from ..settings import NATSettings
from .clientflow import REFRESH_AT, ClientFlow, FlowRegisterClient
from .figures import Figures, FigureSources, IFigureSource
from .flowdemux import FlowDemux
from .flowfigures import ControllerFigures
from .flowtransport import FlowTransport, registerClientFactory
from .listeners import UDPListener
from .netwatch import NetworkWatcher
from .resolutionfigures import ResolutionFigures
from .sipclient import RegisterClient

__all__ = ["REFRESH_AT", "ClientRole", "RegisterClientFactory"]

HostPort = Tuple[str, int]
NextHop = Union[HostPort, Callable[[], HostPort]]
#: Makes a flow's REGISTER client: ``(role, key, nextHop, regId)``; ``regId`` is ``None`` without outbound.
RegisterClientFactory = Callable[["ClientRole", int, NextHop, Optional[int]], FlowRegisterClient]

log = Logger(namespace="twisted_sipnat.client")

#: ``--keepalive`` values the role handles itself (the others are the controller's ``udpKeepaliveMethod``).
ROLE_KEEPALIVES = ("options",)


def _hops(nextHop: Union[NextHop, Sequence[NextHop], None]) -> List[NextHop]:
    if nextHop is None:
        return []
    if callable(nextHop) or (isinstance(nextHop, tuple) and len(nextHop) == 2 and isinstance(nextHop[1], int)):
        return [nextHop]  # type: ignore[list-item]
    return list(nextHop)  # type: ignore[arg-type]


@implementer(IFigureSource)
class _FlowStates:
    """``sipnat_client_flows{state}`` and ``sipnat_client_requests_total{result}``, OPTIONS pings as keepalives."""

    def __init__(self, role: ClientRole) -> None:
        self.role = role

    def reportFigures(self, figures: Figures) -> None:
        role = self.role
        for state in STATES:
            figures.gauge("sipnat_client_flows", role.recovery.count(state), state=state)
        for result, count in role.demux.requestFigures():
            figures.count("sipnat_client_requests_total", count, result=result)
        if role.keepalive == "options":
            answered = sum(f.pingStats["options.answered"] for f in role.flows)
            timeouts = sum(f.pingStats["options.timeout"] for f in role.flows)
            figures.count("sipnat_keepalives_total", answered, result="answered")
            figures.count("sipnat_keepalives_total", timeouts, result="timeout")
            figures.count("sipnat_flow_failures_total", timeouts, reason="options_timeout")


@implementer(IFigureSource)
class ClientRole(service.MultiService, FigureSources):
    """
    A SIP UA's NAT traversal as a service: bind, then per flow resolve, (register), keep alive, recover.

    ``nextHop`` is an ``(IP, port)``, a callable returning one (the embedded default asks its STUN role for the
    port it bound), or a list of them: one flow each.  ``srv`` (a :class:`~.siphops.SIPHops`) gives them
    instead, looked up at start.  ``settings`` is a ``{domain: NATSettings}`` mapping as the controller takes
    it, and ``domain`` the key to use.  ``register`` is an AOR (``alice@example.com``) to REGISTER.
    ``random`` feeds the RFC 5626 §4.5 backoff; ``backoffBase`` replaces both its base-times (a lab that cannot
    wait), ``recovery`` gives the three figures one by one.  ``keepalive="options"`` pings with OPTIONS instead
    of the controller's STUN/CRLF keepalives.  ``registerClientFactory`` makes each flow's REGISTER client
    (default: the UDP :class:`~.sipclient.RegisterClient` on the shared socket).

    A ``registerClientFactory`` reads ``reactor``, ``aor``, ``credentials`` and ``instance`` off the role.

    What a test or an operator reads: ``flows`` (the :class:`~.clientflow.ClientFlow` objects), ``recovery``,
    ``ready`` (a Deferred fired with the public address once a flow's keepalives first started); and, for the
    first flow, ``publicAddress``, ``flowTimer``, ``registerClient``, ``observer``, ``retryAt``, ``refreshAt``;
    ``failures`` and ``keepalivesStarted`` summed over the flows.
    """

    def __init__(
        self,
        reactor: Any,
        nextHop: Union[NextHop, Sequence[NextHop], None],
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
        keepalive: Optional[str] = None,
        srv: Any = None,
        recovery: Optional[RecoveryPolicy] = None,
        registerClientFactory: Optional[RegisterClientFactory] = None,
        networkPoll: Optional[float] = None,
        transport: Optional[FlowTransport] = None,
    ) -> None:
        service.MultiService.__init__(self)
        if domain not in settings:
            raise InvalidSettingsError("domain", domain, f"no settings for it (have: {', '.join(sorted(settings))})")
        if keepalive is not None and keepalive not in ROLE_KEEPALIVES:
            raise InvalidSettingsError("keepalive", keepalive, f"the role itself handles {', '.join(ROLE_KEEPALIVES)}")
        if keepalive == "options" and register is None:
            raise InvalidSettingsError("keepalive", keepalive, "OPTIONS pings are sent from the AOR: needs --register")
        hops = _hops(nextHop)
        if not hops and srv is None:
            raise InvalidSettingsError("next-hop", None, "required: HOST:PORT of the next SIP hop (or SRV records)")
        self.reactor = reactor
        self.domain = domain
        self.settings = settings[domain]
        self.keepalive = keepalive or self.settings.udpKeepaliveMethod
        self.controller = controller if controller is not None else NATTraversalController(dict(settings), reactor=reactor)
        self.addFigureSource(ControllerFigures(self.controller))
        self.addFigureSource(ResolutionFigures(self.controller))
        #: The host's addresses, looked at every ``networkPoll`` seconds: a change is ``networkChanged()`` (every
        #: flow sends a keepalive at once, so a rebinding shows within a round trip, not at the next keepalive).
        self.networkWatcher: Optional[NetworkWatcher] = None
        if networkPoll:
            self.networkWatcher = NetworkWatcher(reactor, self.controller.networkChanged, interval=networkPoll)
            self.networkWatcher.setServiceParent(self)
            self.addFigureSource(cast(IFigureSource, self.networkWatcher))  # sipnat_network_changes_total
        self.aor = register
        self.credentials = credentials
        self.instance = instance
        self._outbound = outbound and instance is not None
        # The flows' transport (docs/roles/client.rst, "Transports"): UDP on the shared socket, or a TCP/TLS
        # connection of each flow's REGISTER client, which that flow's keepalives then run on.
        self.flowTransport = transport if transport is not None else FlowTransport()
        if self.flowTransport.stream and register is None:
            raise InvalidSettingsError("transport", self.flowTransport.name, "a TCP or TLS flow is made by --register")
        self._factory = registerClientFactory or (_streamRegisterClient if self.flowTransport.stream
                                                  else _udpRegisterClient)
        self.srv = srv
        if srv is not None and getattr(srv, "reactor", True) is None:
            srv.reactor = reactor  # made by the options, before there was a reactor
        if recovery is None:
            recovery = RecoveryPolicy() if backoffBase is None else RecoveryPolicy(backoffBase, backoffBase,
                                                                                     max(backoffBase, 1800.0))
        self.recovery = FlowRecovery((), recovery, random)
        self.demux = FlowDemux(lambda: float(reactor.seconds()))
        self.shared = SharedDatagramProtocol(sipProtocol=self.demux, controller=self.controller, clock=reactor)
        self.listener = UDPListener(reactor, listen[0], self.shared, listen[1], option="listen")
        self.listener.setServiceParent(self)
        self.addFigureSource(_FlowStates(self))
        self.flows: List[ClientFlow] = []
        for hop in hops:
            self.addFlow(hop)
        self._lookup: Optional[defer.Deferred[Any]] = None
        self._lookupRetry: Any = None
        self._lookupFailures = 0
        self.ready: defer.Deferred[Any] = defer.Deferred()

    def addFlow(self, hop: NextHop) -> ClientFlow:
        """One more flow toward ``hop``, with the next key (and reg-id, with outbound: RFC 5626 §4.2)."""
        key = len(self.flows) + 1
        client = self._factory(self, key, hop, key if self._outbound else None) if self.aor is not None else None
        flow = ClientFlow(self, key, hop, client)
        self.flows.append(flow)
        self.recovery.add(key)
        if client is not None:
            self.addFigureSource(cast(IFigureSource, client))  # sipnat_register_transactions_total, summed
        self.demux.add(flow)
        return flow

    # -- what the flows ask of the role (clientflow.FlowOwner) ------------------------------------------------

    def mayRetry(self) -> bool:
        """
        Whether a failure may be followed by a new attempt: not once the service stopped, nor once the controller
        did (the reactor is shutting down: a REGISTER then would be sent as the process exits).
        """
        return bool(self.running) and not getattr(self.controller, "stopped", False)

    def keepaliveInterval(self) -> float:
        return float(self.settings.udpKeepaliveInterval)

    def flowStarting(self, flow: ClientFlow) -> None:
        self.recovery.registering(flow.key)

    def flowUp(self, flow: ClientFlow) -> None:
        self.recovery.up(flow.key)
        if not self.ready.called:
            self.ready.callback(flow.publicAddress)

    def flowDown(self, flow: ClientFlow, reason: object) -> float:
        """A flow failed: its §4.5 wait, by what the other flows are doing."""
        delay = self.recovery.failed(flow.key)
        if self.recovery.allFailed:
            log.warn("no flow is up: the user agent is unreachable until one recovers",
                     sipnat_event="sipnat.client.unreachable")
        return delay

    # -- the first flow, for callers of the one-flow role -------------------------------------------------------

    @property
    def _first(self) -> Optional[ClientFlow]:
        return self.flows[0] if self.flows else None

    @property
    def nextHop(self) -> Optional[HostPort]:
        return self._first.nextHop if self._first is not None else None

    @property
    def registerClient(self) -> Optional[FlowRegisterClient]:
        return self._first.registerClient if self._first is not None else None

    @property
    def observer(self) -> Any:
        return self._first.observer if self._first is not None else None

    @property
    def publicAddress(self) -> Union[IPv4Address, IPv6Address, None]:
        return self._first.publicAddress if self._first is not None else None

    @property
    def flowTimer(self) -> Optional[int]:
        return self._first.flowTimer if self._first is not None else None

    @property
    def retryAt(self) -> Optional[float]:
        """When the first flow's next attempt after a failure is due (reactor seconds), or ``None``."""
        return self._first.retryAt if self._first is not None else None

    @property
    def refreshAt(self) -> Optional[float]:
        """When the first flow's registration is next refreshed (reactor seconds), or ``None``."""
        return self._first.refreshAt if self._first is not None else None

    @property
    def failures(self) -> int:
        return sum(flow.failures for flow in self.flows)

    @property
    def keepalivesStarted(self) -> int:
        return sum(flow.keepalivesStarted for flow in self.flows)

    # -- the service --------------------------------------------------------------------------------------------

    def startService(self) -> None:
        service.MultiService.startService(self)
        for flow in list(self.flows):
            flow.start()
        if not self.flows and self.srv is not None:
            self._lookUp()  # the flows it finds start as they are added

    def _lookUp(self) -> None:
        """The next hops from SRV (RFC 3263 §4.2); a failed look-up is tried again after the §4.5 backoff."""
        self._lookupRetry = None
        if not self.mayRetry():
            return
        d = self._lookup = self.srv.lookup()
        d.addCallbacks(self._hopsFound, self._lookupFailed)

    def _hopsFound(self, hops: List[HostPort]) -> None:
        self._lookup = None
        log.info("next hops from SRV: {hops}", hops=", ".join(f"{h}:{p}" for h, p in hops),
                 sipnat_event="sipnat.client.srv")
        for hop in hops:
            self.addFlow(hop).start()

    def _lookupFailed(self, reason: Failure) -> None:
        self._lookup = None
        if reason.check(defer.CancelledError) or not self.mayRetry():
            return
        self._lookupFailures += 1
        delay = self.recovery.policy.delay(self._lookupFailures, True, self.recovery.draw())
        log.warn("SRV look-up failed ({why}); trying again in {delay:.1f} s", why=reason.getErrorMessage(),
                 delay=delay, sipnat_event="sipnat.client.srv.failed")
        self._lookupRetry = self.reactor.callLater(delay, self._lookUp)

    def stopService(self) -> Any:
        if self._lookupRetry is not None and self._lookupRetry.active():
            self._lookupRetry.cancel()
        self._lookupRetry = None
        lookup, self._lookup = self._lookup, None
        if lookup is not None and not lookup.called:
            lookup.cancel()
        for flow in self.flows:
            flow.stop()
        self.controller.freeResources()
        return service.MultiService.stopService(self)


def _udpRegisterClient(role: ClientRole, key: int, hop: NextHop, regId: Optional[int]) -> FlowRegisterClient:
    """The default: an RFC 3261 UDP REGISTER client writing through the shared socket (:mod:`.sipclient`)."""
    assert role.aor is not None
    return RegisterClient(role.reactor, role.aor, hop, credentials=role.credentials, instance=role.instance,
                          regId=regId)


def _streamRegisterClient(role: ClientRole, key: int, hop: NextHop, regId: Optional[int]) -> FlowRegisterClient:
    """A TCP or TLS flow's REGISTER client (:mod:`.sipstreamclient`), answering requests over its connection."""
    client = registerClientFactory(role.flowTransport)(role, key, hop, regId)
    client.answer = answerRequest  # type: ignore[union-attr]
    return cast(FlowRegisterClient, client)
