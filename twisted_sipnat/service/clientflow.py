"""
One flow of the client role (RFC 5626 §3.2, §4.2): a next hop, its own reg-id, REGISTER client, keepalives and
registration refresh, and its own recovery after a failure (§4.5).

Why a class per flow: a user agent with several edges stays reachable through the others while one of them is
down, which needs each flow to fail, back off and come back on its own; only the wait depends on the others (the
backoff's base-time is 30 s when every flow failed, 90 s otherwise: :class:`twisted_sipnat.core.recovery.FlowRecovery`,
kept by the role).

The life of a flow:

1. With outbound (an instance ID and a reg-id) it REGISTERs first (§4.2: the Contact's address does not
   matter, and an edge may answer STUN only on a registered flow); the public address is then the 200's Via
   ``received``/``rport``.  Without, it learns the public address with STUN and registers that (or, with no AOR,
   only keeps the binding alive).
2. Keepalives toward the next hop: STUN or CRLF by the controller, or OPTIONS pings
   (:class:`~twisted_sipnat.service.optionsping.OptionsPinger`), at the registrar's Flow-Timer if it gave one.
3. A refresh REGISTER at 90 % of the granted lifetime (RFC 3261 §10.2.4).
4. A failure (a keepalive unanswered, the mapped address changed, a refresh refused, an OPTIONS ping timed
   out) stops all of it; after the backoff the flow starts again at 1.  A mapped address that really changed
   is registered at once instead, once per successful registration (never a loop).

The REGISTER client is given, not made: anything with :class:`FlowRegisterClient`'s methods will do, so a stream
client (TCP, TLS) drops in beside the UDP one (:class:`~twisted_sipnat.service.sipclient.RegisterClient`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Optional, Protocol, Tuple, Union

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..core.sip.message import Response
from ..core.sip.registration import Registered, Registration
from ..errors import MappedAddressChanged
from ..interfaces import IBindingObserver
from ..protocols import sendDatagram
from .optionsping import OptionsPinger
from .sipclient import registrarKeepalive, routeSource

__all__ = ["REFRESH_AT", "ClientFlow", "FlowOwner", "FlowRegisterClient"]

HostPort = Tuple[str, int]
NextHop = Union[HostPort, Callable[[], HostPort]]
Address = Union[IPv4Address, IPv6Address]

log = Logger(namespace="twisted_sipnat.client")

#: RFC 3261 §10.2.4: refresh a registration at this fraction of the lifetime the registrar granted.
REFRESH_AT = 0.9


class FlowRegisterClient(Protocol):
    """
    What a flow needs of its REGISTER client (the UDP one is
    :class:`~twisted_sipnat.service.sipclient.RegisterClient`): ``register(contact)`` sends one registration
    (its retries included) and fires with the 2xx or errbacks; ``stop()`` forgets the one in progress (its
    Deferred errbacks ``CancelledError``); ``registered`` is what the last 2xx said; ``grantedExpires`` reads a
    2xx's lifetime for this client's binding; ``makeConnection``/``doStop`` attach it to the UDP socket's SIP
    side and detach it; ``datagramReceived`` takes the datagrams the next hop sent.

    A client with a connection of its own (TCP, TLS) also has ``keepaliveSocket``: the socket the controller
    resolves on and keeps alive for the flow (its ``transport.getHost()`` gives the Contact's local address with
    outbound), instead of the role's shared UDP socket; it may ignore ``makeConnection``/``datagramReceived``.
    """

    registration: Registration
    registered: Optional[Registered]

    def register(self, contact: HostPort) -> defer.Deferred[Response]: ...

    def stop(self) -> None: ...

    def grantedExpires(self, response: Response) -> int: ...

    def reportFigures(self, figures: Any) -> None: ...

    def makeConnection(self, transport: Any) -> None: ...

    def doStop(self) -> None: ...

    def datagramReceived(self, data: bytes, addr: Any) -> None: ...


class FlowOwner(Protocol):
    """What a flow needs of its role (:class:`twisted_sipnat.service.client.ClientRole`)."""

    reactor: Any
    controller: Any
    shared: Any
    domain: str
    aor: Optional[str]
    keepalive: str

    def mayRetry(self) -> bool: ...

    def keepaliveInterval(self) -> float: ...

    def flowStarting(self, flow: ClientFlow) -> None: ...

    def flowUp(self, flow: ClientFlow) -> None: ...

    def flowDown(self, flow: ClientFlow, reason: object) -> float: ...


@implementer(IBindingObserver)
class _FlowObserver:
    """The flow's key in the controller: its keepalive context is this observer's."""

    def __init__(self, flow: ClientFlow) -> None:
        self.flow = flow

    def flowFailure(self, reason: object) -> None:
        self.flow.failed(reason)


class ClientFlow:
    """
    One flow (module docstring): ``key`` names it (the reg-id with outbound: 1, 2, ...), ``nextHop`` is an
    ``(IP, port)`` or a callable returning one, ``registerClient`` its REGISTER client or ``None`` with no AOR.

    What a test or an operator reads: ``publicAddress``, ``flowTimer``, ``failures`` (so far),
    ``keepalivesStarted``, ``up``, :attr:`retryAt`, :attr:`refreshAt`, ``pinger`` (with ``--keepalive options``).
    """

    def __init__(self, owner: FlowOwner, key: int, nextHop: NextHop,
                 registerClient: Optional[FlowRegisterClient]) -> None:
        self.owner = owner
        self.key = key
        self._nextHop = nextHop
        self.registerClient = registerClient
        self.observer = _FlowObserver(self)
        self.publicAddress: Optional[Address] = None
        #: The public address the registrar's 200 reported (received/rport) when the flow registered before any
        #: STUN: the keepalives' baseline.  Not a STUN server's answer: toward another server an address-dependent
        #: NAT maps the flow elsewhere (the contract takes that only when the next hop answered it).
        self._registrarSaw: Optional[Tuple[str, int]] = None
        self.flowTimer: Optional[int] = None
        self.failures = 0
        self.keepalivesStarted = 0
        self.up = False
        self.pinger: Optional[OptionsPinger] = None
        self.pingStats: Counter[str] = Counter()
        self._transport: Any = None
        self._retry: Any = None
        self._refresh: Any = None
        self._pending: Optional[defer.Deferred[Any]] = None
        self._registeredContact: Optional[HostPort] = None
        self._reboundAllowed = False

    @property
    def nextHop(self) -> HostPort:
        hop = self._nextHop
        return hop() if callable(hop) else hop

    @property
    def socket(self) -> Any:
        """
        The socket whose NAT binding this flow keeps alive (the controller's ``socket``): the REGISTER client's
        ``keepaliveSocket`` when it has its own (a TCP or TLS connection), else the role's shared UDP socket.
        """
        own = getattr(self.registerClient, "keepaliveSocket", None)
        return own if own is not None else self.owner.shared

    @property
    def retryAt(self) -> Optional[float]:
        """When the next attempt after a failure is due (reactor seconds), or ``None``."""
        return float(self._retry.getTime()) if self._retry is not None and self._retry.active() else None

    @property
    def refreshAt(self) -> Optional[float]:
        """When the registration is next refreshed (reactor seconds), or ``None``."""
        return float(self._refresh.getTime()) if self._refresh is not None and self._refresh.active() else None

    # -- the socket ----------------------------------------------------------------------------------------------

    def attach(self, transport: Any) -> None:
        """The shared socket's SIP side is up: the REGISTER client writes through ``transport``."""
        self._transport = transport
        if self.registerClient is not None:
            self.registerClient.makeConnection(transport)

    def detach(self) -> None:
        self._transport = None
        if self.registerClient is not None:
            self.registerClient.doStop()

    def datagramReceived(self, data: bytes, message: Response, addr: HostPort) -> None:
        """A response from this flow's next hop: the OPTIONS pinger's, else the REGISTER client's."""
        if self.pinger is not None and self.pinger.responseReceived(message):
            return
        if self.registerClient is not None:
            self.registerClient.datagramReceived(data, addr)

    # -- 1. register, or resolve ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._retry = None
        if not self.owner.mayRetry():
            return
        self.owner.flowStarting(self)
        hop = self.nextHop
        # a stream flow (its client has its own reliable connection) registers first in any case: no STUN in a SIP stream
        if self.registerClient is not None and (self.registerClient.registration.outbound
                                                or getattr(self.registerClient, "reliable", False)):
            self._registeredContact = self._localAddress(hop)
            d = self.registerClient.register(self._registeredContact)
            self._pending = d
            d.addCallback(self._registeredFirst, hop)
            d.addErrback(self._attemptFailed)
            return
        resolved = self.owner.controller.resolvePublicAddress(self.owner.domain, self.socket, hop,
                                                              observer=self.observer)
        self._pending = resolved
        resolved.addCallback(self._resolved, hop)
        resolved.addErrback(self._attemptFailed)

    def _resolved(self, address: Address, hop: HostPort) -> Any:
        self.publicAddress = address
        self._registrarSaw = None
        log.info("public address {host}:{port} (next hop {nhost}:{nport})", host=address.host, port=address.port,
                 nhost=hop[0], nport=hop[1], flow=self.key, sipnat_event="sipnat.client.publicAddress")
        if self.registerClient is None:
            self._keepAlive(hop, None)
            return None
        self._registeredContact = (address.host, address.port)
        d = self.registerClient.register(self._registeredContact)
        self._pending = d
        d.addCallback(self._registered, hop)
        return d

    def _registeredFirst(self, response: Response, hop: HostPort) -> None:
        registered = self.registerClient.registered if self.registerClient is not None else None
        self._registrarSaw = None
        if registered is not None and registered.reflexive is not None:
            host, port = registered.reflexive
            self._registrarSaw = (host, port)
            self.publicAddress = (IPv6Address if ":" in host else IPv4Address)("UDP", host, port)
            log.info("public address {host}:{port} (the registrar's received/rport; next hop {nhost}:{nport})",
                     host=host, port=port, nhost=hop[0], nport=hop[1], flow=self.key,
                     sipnat_event="sipnat.client.publicAddress")
        if registered is not None:
            log.info("outbound {state} by the registrar (Require: outbound {present})",
                     state="honoured" if registered.outbound else "not honoured",
                     present="present" if registered.outbound else "absent", flow=self.key,
                     sipnat_event="sipnat.client.outbound")
        self._registered(response, hop)

    def _localAddress(self, hop: HostPort) -> HostPort:
        """The SIP socket's address toward ``hop``: its bound address, or the route's source for a wildcard."""
        transport = getattr(self.socket, "transport", None)
        local = transport.getHost() if transport is not None else None
        host = str(getattr(local, "host", "") or "")
        port = int(getattr(local, "port", 0) or 0)
        if host in ("", "0.0.0.0", "::"):
            host = routeSource(hop, "127.0.0.1")
        return (host, port)

    def _registered(self, response: Response, hop: HostPort) -> None:
        interval = registrarKeepalive(response)
        self.flowTimer = interval
        granted = self._granted(response)
        log.info("flow {flow}: registered {aor} for {expires} s; registrar keepalive interval {flowTimer}", aor=self.owner.aor,
                 expires=granted, flowTimer=interval, flow=self.key, sipnat_event="sipnat.client.registered")
        self._keepAlive(hop, interval)
        self._scheduleRefresh(granted, hop)

    def _granted(self, response: Response) -> int:
        return self.registerClient.grantedExpires(response) if self.registerClient is not None else 3600

    # -- 2. keepalives -------------------------------------------------------------------------------------------

    def _keepAlive(self, hop: HostPort, flowTimer: Optional[int]) -> None:
        self._pending = None
        started = self._startKeepalives(hop, flowTimer)
        self.keepalivesStarted += 1
        self._reboundAllowed = True
        self.up = True
        log.info("flow {flow}: keepalives toward {host}:{port}: {state}", host=hop[0], port=hop[1], flow=self.key,
                 state="started" if started else "not needed", sipnat_event="sipnat.client.keepalive.started")
        self.owner.flowUp(self)

    def _startKeepalives(self, hop: HostPort, flowTimer: Optional[int]) -> bool:
        """
        (Re)start the flow's keepalives at ``flowTimer``: OPTIONS pings, or the controller's.  With outbound the
        200's received/rport is the flow's public address: the controller's baseline, so a rebinding before the
        first answer (or the first after a restart) is seen too.
        """
        if self.owner.keepalive == "options":
            return self._startPings(hop, flowTimer)
        return bool(self.owner.controller.refreshNATBinding(self.socket, self.observer, nextHop=hop,
                                                            flowTimer=flowTimer, domain=self.owner.domain,
                                                            publicAddress=self._registrarSaw))

    def _startPings(self, hop: HostPort, flowTimer: Optional[int]) -> bool:
        self._stopPings()
        interval = float(flowTimer) if flowTimer is not None else self.owner.keepaliveInterval()
        if interval <= 0 or self.registerClient is None:
            return False
        self.pinger = OptionsPinger(self.owner.reactor, self.registerClient.registration.aor, hop, interval,
                                    self._write, lambda: self._localAddress(hop), self._pingFailed,
                                    stats=self.pingStats)
        self.pinger.start()
        return True

    def _write(self, data: bytes, hop: HostPort) -> None:
        if self._transport is not None:
            sendDatagram(self._transport, data, hop, self.pingStats, "an OPTIONS ping")

    def _pingFailed(self, why: str) -> None:
        self.failed(why)

    def _stopPings(self) -> None:
        if self.pinger is not None:
            self.pinger.stop()

    # -- 3. refresh ----------------------------------------------------------------------------------------------

    def _scheduleRefresh(self, granted: int, hop: HostPort) -> None:
        """Refresh the registration before it lapses (RFC 3261 §10.2.4); a failed refresh is a failed flow."""
        self._cancelRefresh()
        self._refresh = self.owner.reactor.callLater(max(1.0, REFRESH_AT * granted), self._refreshRegistration, hop)

    def _refreshRegistration(self, hop: HostPort) -> None:
        self._refresh = None
        if self.registerClient is None or self._registeredContact is None or not self.owner.mayRetry():
            return
        d = self.registerClient.register(self._registeredContact)
        self._pending = d
        d.addCallback(self._refreshed, hop)
        d.addErrback(self._refreshFailed)

    def _refreshed(self, response: Response, hop: HostPort) -> None:
        self._pending = None
        interval = registrarKeepalive(response)
        if interval != self.flowTimer:
            self.flowTimer = interval
            self._startKeepalives(hop, interval)
        self._scheduleRefresh(self._granted(response), hop)

    def _refreshFailed(self, reason: Failure) -> None:
        self._pending = None
        if reason.check(defer.CancelledError) or not self.owner.mayRetry():
            return
        self.failed(reason)

    # -- 4. failure and recovery ---------------------------------------------------------------------------------

    def _attemptFailed(self, reason: Failure) -> None:
        self._pending = None
        if reason.check(defer.CancelledError) or not self.owner.mayRetry():
            return
        log.warn("NAT traversal attempt failed: {why}", why=reason.getErrorMessage(), flow=self.key,
                 sipnat_event="sipnat.client.failed")
        self._scheduleRetry(reason)

    def failed(self, reason: object) -> None:
        """The flow failed (a keepalive, a refresh, a ping): stop it all, then recover (module docstring)."""
        self._halt()
        self.failures += 1
        why = reason.getErrorMessage() if isinstance(reason, Failure) else str(reason)
        log.warn("flow {flow} failure: {why}", why=why, flow=self.key, sipnat_event="sipnat.client.flowFailure")
        if not self.owner.mayRetry():
            return
        if self._rebound(reason):
            return
        self._scheduleRetry(reason)

    def _quiet(self) -> None:
        """Stop the refresh, the pings and the REGISTER in flight (its 200 would revive a stopped flow)."""
        self._cancelRefresh()
        self._stopPings()
        pending, self._pending = self._pending, None
        if pending is not None and not pending.called:
            pending.cancel()
        if self.registerClient is not None:
            self.registerClient.stop()
        self.up = False

    def _halt(self) -> None:
        """A failed flow: quiet, its connection dropped and its keepalives freed."""
        self._quiet()
        dropFlow = getattr(self.registerClient, "dropFlow", None)
        if dropFlow is not None:
            dropFlow()  # a stream flow's connection goes: the next attempt makes a new flow (RFC 5626 §4.4.1)
        self.owner.controller.freeResources(self.observer)

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
                 flow=self.key, sipnat_event="sipnat.client.rebound")
        self._retry = self.owner.reactor.callLater(0, self.start)
        return True

    def _scheduleRetry(self, reason: object) -> None:
        if not self.owner.mayRetry() or (self._retry is not None and self._retry.active()):
            return
        self.up = False
        delay = self.owner.flowDown(self, reason)
        log.info("flow {flow}: trying again in {delay:.1f} s (RFC 5626 §4.5 backoff)", delay=delay, flow=self.key,
                 sipnat_event="sipnat.client.retry")
        self._retry = self.owner.reactor.callLater(delay, self.start)

    def _cancelRefresh(self) -> None:
        if self._refresh is not None and self._refresh.active():
            self._refresh.cancel()
        self._refresh = None

    def stop(self) -> None:
        """The role is stopping: no timer, no transaction, no keepalive of this flow is left."""
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._quiet()
