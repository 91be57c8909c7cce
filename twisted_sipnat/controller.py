"""
:class:`NATTraversalController`: the SIP NAT Traversal Controller API on Twisted, an adapter over the sans-IO
:class:`~twisted_sipnat.core.engine.Engine`, which holds every protocol rule.  Each method checks its arguments,
feeds the engine one input with ``now`` and flushes (:class:`~twisted_sipnat.driver.EngineDriver`): sends,
re-arms the one timer, then delivers the engine's events, so callbacks always see finished state.
"""

from __future__ import annotations

import random
import weakref
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from .core import stun
from .core.addresses import hostPortOf, isIPLiteral
from .core.engine import Engine, checkNextHop
from .core.histogram import Histogram
from .core.keepalive import PONG_BYTES
from .core.timers import TimerHeap
from .core.transaction import DEFAULT_RC
from .driver import EngineDriver
from .errors import NATTraversalError, UnknownDomainError
from .localaddress import addressAssigned, currentLocal, localHostPort
from .settings import DEFAULT_STUN_PORT, NATSettings, ServerSpec, settingsTable
from .sockets import canonicalSocket, publicAddress

HostPort = Tuple[str, int]
PublicAddress = Union[IPv4Address, IPv6Address]

_log = Logger(namespace="twisted_sipnat")


class NATTraversalController(EngineDriver):
    """
    Finds the public address of a SIP socket and keeps its NAT binding alive, on the SIP stack's own socket.

    ``settings`` is one :class:`~twisted_sipnat.settings.NATSettings` for every domain, or a mapping
    ``{domain: NATSettings}``.  ``reactor`` provides ``IReactorTime`` (a ``twisted.internet.task.Clock`` in
    tests); every timer goes through it.  ``rng`` drives the keepalive jitter and the RFC 2782 choice among SRV
    targets (seed it for repeatable runs).

    Bounds: at most ``maxFlows`` keepalive contexts, ``maxTransactions`` STUN transactions in flight and
    ``maxOutstandingPerServer`` outstanding per socket and server (RFC 8489 §6: ten; the rest wait their
    turn).  Past the first two a call raises :class:`~twisted_sipnat.errors.ResourceLimitError`.

    ``keepaliveEvents=False`` drops the per-keepalive debug events (a third of a keepalive's CPU at scale; the
    :attr:`stats` stay).  ``timers``: the engine's :class:`~twisted_sipnat.core.timers.TimerHeap` (for tests).

    Shutting down is not a failure: when the reactor (if it has ``addSystemEventTrigger``) fires its "before
    shutdown" event, the controller stops (:meth:`stop`), so the sockets that close during shutdown end their flows
    without a ``flowFailure`` (a UA that re-registers on failure would try to as the process exits).
    """

    #: Whether the host still has a bound address (:mod:`~twisted_sipnat.localaddress`); tests replace it.
    addressAssigned: Callable[[str], bool] = staticmethod(addressAssigned)

    def __init__(
        self,
        settings: Union[NATSettings, Mapping[str, NATSettings]],
        reactor: Optional[IReactorTime] = None,
        *,
        rng: Optional[random.Random] = None,
        maxFlows: int = 1_000_000,
        maxTransactions: int = 1_000_000,
        maxOutstandingPerServer: int = 10,
        dnsResolver: Any = None,
        keepaliveEvents: bool = True,
        timers: Optional[TimerHeap] = None,
    ) -> None:
        self._settings, self._domainSettings = settingsTable(settings)
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor  # type: ignore[assignment]
        assert reactor is not None
        self.rng = rng if rng is not None else random.SystemRandom()
        engine = Engine(rng=self.rng, maxFlows=maxFlows, maxTransactions=maxTransactions,
                        maxOutstandingPerServer=maxOutstandingPerServer, keepaliveEvents=keepaliveEvents, timers=timers)
        super().__init__(reactor, engine, dnsResolver)
        #: ``True`` once :meth:`stop` ran (or the reactor began to shut down).
        self.stopped = False
        self._shutdownTrigger: Any = None
        addTrigger: Optional[Callable[..., Any]] = getattr(reactor, "addSystemEventTrigger", None)
        if addTrigger is not None:
            # A weak reference: the reactor's trigger list must not keep every controller ever made alive.
            self._shutdownTrigger = addTrigger("before", "shutdown", _stopOnShutdown, weakref.ref(self))

    @property
    def maxFlows(self) -> int:
        return self._engine.flows.maxFlows

    @property
    def maxTransactions(self) -> int:
        return self._engine.table.maxTransactions

    @property
    def keepaliveEvents(self) -> bool:
        return self._engine.keepaliveEvents

    @keepaliveEvents.setter
    def keepaliveEvents(self, value: bool) -> None:
        self._engine.keepaliveEvents = value

    def settingsFor(self, domain: Optional[str]) -> NATSettings:
        """The settings of ``domain``; :class:`~twisted_sipnat.errors.UnknownDomainError` if it has none."""
        if self._settings is not None:
            return self._settings
        if domain is not None and domain in self._domainSettings:
            return self._domainSettings[domain]
        raise UnknownDomainError(str(domain))

    def localAddressOf(self, socket: Any) -> Any:
        """The local ``IAddress`` of a shared socket (``None`` if unknown)."""
        return self._socketState(socket).adapter.localAddress()

    def lookupServer(self, host: str, port: Optional[int], socket: Any) -> defer.Deferred[HostPort]:
        """The IP address and port of a STUN server name (``port`` given: A/AAAA only)."""
        record = self._record(self._socketState(socket))
        return self._names.lookupHost(host, DEFAULT_STUN_PORT if port is None else port, bool(record.ipv6))

    # -- resolution -------------------------------------------------------------------------------------------

    def resolvePublicAddress(
        self, domain: Optional[str], socket: Any, nextHop: Any, observer: Any = None
    ) -> defer.Deferred[PublicAddress]:
        """
        Learn the public address the NAT gave ``socket`` by a STUN Binding request sent from it (RFC 8489), from
        the domain's ``stunServers`` in order (none: the next hop itself, an RFC 5626 edge).  Fires with an
        ``IPv4Address``/``IPv6Address``; errbacks ``STUNErrorResponse`` (the last, if any server gave one) or
        ``STUNTimeout``; ``cancel()`` errbacks ``CancelledError``.  With an ``observer``, its domain, next hop and
        result are remembered for :meth:`refreshNATBinding` until ``freeResources(observer)``.
        """
        settings = self.settingsFor(domain)
        hop = checkNextHop(nextHop)
        state = self._socketState(socket)
        if state.adapter.isStream:
            # RFC 5626 §4.4.1: a TCP/TLS flow is kept alive with CRLF pings; STUN bytes written into the SIP
            # stream would corrupt it for the registrar.  The public address of a stream flow is in the
            # REGISTER response's Via received/rport.
            raise NATTraversalError("resolvePublicAddress needs a UDP socket: STUN is not sent inside a SIP stream")
        servers: List[ServerSpec] = list(settings.servers) if settings.servers else [hop]
        handle = self._engine.resolve(self._record(state), settings, servers, observer, hop, domain, self._now())
        d: defer.Deferred[PublicAddress] = defer.Deferred(lambda _: self._cancel(handle))
        self._deferreds[handle] = d
        self._flush()
        return d

    def sendBindingRequest(
        self,
        socket: Any,
        server: Any,
        attributes: Sequence[Any] = (),
        *,
        settings: Optional[NATSettings] = None,
        retransmissions: int = DEFAULT_RC,
        anySource: bool = False,
    ) -> defer.Deferred[Tuple[Any, Optional[HostPort]]]:
        """
        One Binding transaction to ``server`` (an IP literal) with extra ``attributes`` (e.g.
        ``stun.ChangeRequest``): fires ``(response, source)``, errbacks ``STUNTimeout`` after ``retransmissions``
        sends or ``CancelledError``.  ``anySource``: the answer may come from any address (RFC 5780).
        """
        target = checkNextHop(server)
        if not isIPLiteral(target[0]):
            raise NATTraversalError(f"sendBindingRequest needs an IP literal, not {target[0]!r}")
        state = self._socketState(socket)
        try:
            handle = self._engine.probe(self._record(state), target, settings or self._settings or NATSettings(),
                                        attributes, self._now(), rc=retransmissions, anySource=anySource)
        finally:
            self._flush()
        d: defer.Deferred[Tuple[Any, Optional[HostPort]]] = defer.Deferred(lambda _: self._cancel(handle))
        self._deferreds[handle] = d
        return d

    def discoverNATBehaviour(self, socket: Any, server: Any, *, retransmissions: int = DEFAULT_RC,
                             route: Any = None) -> Any:
        """RFC 5780 §4.3/§4.4 behaviour from ``socket`` (a :class:`~twisted_sipnat.core.discovery.NATBehaviour`; ``route``: tests)."""
        from .discovery import discover

        return discover(self, socket, server, retransmissions=retransmissions, route=route)

    # -- keepalives -------------------------------------------------------------------------------------------

    def refreshNATBinding(self, socket: Any, observer: Any, nextHop: Any = None, flowTimer: Optional[float] = None,
                          domain: Optional[str] = None, publicAddress: Any = None) -> bool:
        """
        Keep the NAT binding of ``socket`` alive toward ``nextHop`` (or the one given at resolve), after the
        REGISTER 200 OK (RFC 5626 §4.4).  ``flowTimer`` (the registrar's Flow-Timer or Via ``keep``) replaces
        the configured interval; every keepalive goes out after a fresh 80-100 % of it.  Returns ``True`` when a
        periodic keepalive was started, ``False`` when the transport's configured interval is ``0``.  A second
        call for the same observer restarts its keepalives.

        ``publicAddress`` (``(host, port)`` or an ``IAddress``): the flow's public address as the next hop
        already saw it, e.g. the ``received``/``rport`` of the REGISTER 200 (RFC 3581 §4) when a user agent
        registered before any STUN (RFC 5626 outbound).  It is the baseline of the STUN keepalives, so a
        rebinding before the first keepalive answer is a ``MappedAddressChanged`` too; without it the first
        answer is the baseline (the contract's rule).
        """
        engine = self._engine
        memory = engine.flows.remembered(observer)
        if domain is None and memory is not None:
            domain = memory.domain
        settings = self.settingsFor(domain)
        state = self._socketState(socket)
        stream = bool(state.adapter.isStream)
        configured = settings.tcpKeepaliveInterval if stream else settings.udpKeepaliveInterval
        now = self._now()
        if configured == 0:
            engine.flows.stop(observer, now)
            self._flush()
            return False
        if flowTimer is not None:
            if isinstance(flowTimer, bool) or not isinstance(flowTimer, (int, float)) or not flowTimer > 0:
                raise NATTraversalError(f"flowTimer must be a positive number of seconds, not {flowTimer!r}")
        hop: Optional[HostPort]
        if nextHop is not None:
            hop = checkNextHop(nextHop)
        elif memory is not None and memory.nextHop is not None:
            hop = memory.nextHop
        elif stream:
            hop = state.adapter.peerAddress()
        else:
            raise NATTraversalError("refreshNATBinding needs a nextHop (none was given at resolve either)")
        base = float(flowTimer) if flowTimer is not None else configured
        given = hostPortOf(publicAddress)
        if publicAddress is not None and given is None:
            raise NATTraversalError(f"publicAddress must be (host, port) or an IAddress, not {publicAddress!r}")
        known = checkNextHop(given) if given is not None else None
        try:
            engine.flows.refresh(self._record(state), observer, settings, base, hop, domain, now,
                                 named=hop is not None and not isIPLiteral(hop[0]), local=localHostPort(state.adapter),
                                 baseline=known)
        finally:
            self._flush()
        return True

    def updateNextHop(self, nextHop: Any, observer: Any) -> None:
        """Move the observer's keepalives (and a transaction in flight) to ``nextHop`` at once; a new baseline."""
        hop = checkNextHop(nextHop)
        self._engine.flows.move(observer, hop, named=not isIPLiteral(hop[0]))
        self._flush()

    def networkChanged(self) -> None:
        """
        The host's addresses or routes changed: every flow expecting an answer sends a keepalive now, so a
        rebinding shows as ``MappedAddressChanged`` (or ``PongTimeout``) within one round trip; a flow whose
        socket lost its local address fails with ``FlowConnectionLost``.  Resolutions in flight are untouched.
        """
        addresses = {state: currentLocal(state.adapter, self.addressAssigned) for state in list(self._sockets.values())}
        self._engine.networkChanged(self._now(), addresses)
        self._flush()

    # -- incoming ---------------------------------------------------------------------------------------------

    def dataReceived(self, data: bytes, socket: Any, addr: Any = None) -> bool:
        """Unrecognised bytes: ``True`` if consumed (a STUN response/indication, an awaited pong).  Never raises."""
        if data == PONG_BYTES:
            return self.pongReceived(socket)
        if not stun.isSTUN(data):
            return False
        engine = self._engine
        try:
            socket = canonicalSocket(socket)
            state = self._sockets.get(id(socket))
            record = state.record if state is not None and state.socket is socket else None
            return engine.receive(record, data, addr, float(self.reactor.seconds()))
        except Exception:
            _log.failure("internal error handling {length} bytes from {addr}", length=len(data), addr=addr,
                         sipnat_event="controller.internal-error")
            return False
        finally:
            if engine.outbox or engine.withdrawals or engine.events:
                self._flush()
            else:
                self._reschedule()  # an answer (the common case) hands out nothing: only the timer may move

    def pongReceived(self, socket: Any) -> bool:
        """A CRLF pong (RFC 5626 §4.4.1) arrived on ``socket``; ``True`` if a flow there was waiting for it."""
        socket = canonicalSocket(socket)
        state = self._sockets.get(id(socket))
        if state is None or state.socket is not socket:
            return False
        try:
            return self._engine.pong(state.record)
        finally:
            self._flush()

    # -- socket arbitration -----------------------------------------------------------------------------------

    def socketIdle(self, idle: bool, socket: Any) -> None:
        """
        ``False``: the SIP stack is using ``socket``; nothing of the controller's is written to it until
        ``socketIdle(True)``, which writes what was held back, in order, at most one per context --
        synchronously, inside this call.
        """
        state = self._socketState(socket)
        written = state.adapter.sipIdle(bool(idle))
        self.keepalivesWritten(state.adapter, written)
        if idle:
            self._forgetIfUnused(state)

    def keepalivesWritten(self, socket: Any, keys: Sequence[Any]) -> None:
        """The socket wrote held keepalives (their keys as handed out): their clocks start now."""
        if keys:
            now = self._now()
            for key in keys:
                self._engine.released(key, now)
        self._flush()

    def socketClosed(self, socket: Any, reason: Optional[Failure] = None) -> None:
        """
        ``socket`` was closed or its connection lost: every flow on it fails with
        :class:`~twisted_sipnat.errors.FlowConnectionLost` and pending resolutions on it fail too.  Once the
        controller is :attr:`stopped` (the reactor is shutting down) the flows stop without a ``flowFailure``
        and the resolutions errback ``CancelledError``, as after :meth:`freeResources`.
        """
        socket = canonicalSocket(socket)
        state = self._sockets.pop(id(socket), None)
        if state is None or state.socket is not socket:
            return
        if self.stopped:
            handles = self._engine.socketStopped(state.record, self._now())
            self._cancelDeferreds(handles)
            return
        why = reason.getErrorMessage() if reason is not None else "connection lost"
        self._engine.socketClosed(state.record, why, self._now())
        self._flush()

    def stop(self) -> None:
        """
        Stop for good: every flow stops and every resolution is cancelled (:meth:`freeResources`), and a socket
        that closes from now on ends what rides on it the same way, never with a ``flowFailure``.  The reactor's
        "before shutdown" event calls this; call it yourself when you stop the controller with the reactor
        still running.  A controller used again after it keeps these quiet rules for its sockets' closing.
        """
        self.stopped = True
        trigger, self._shutdownTrigger = self._shutdownTrigger, None
        if trigger is not None:
            try:
                self.reactor.removeSystemEventTrigger(trigger)
            except (ValueError, KeyError, TypeError):
                pass  # the trigger is the one running now, or already fired
        self.freeResources()

    # -- cleanup and introspection ----------------------------------------------------------------------------

    def freeResources(self, observer: Any = None) -> None:
        """
        Stop ``observer``'s keepalives and cancel its pending resolutions (their Deferreds errback
        ``CancelledError``); with no argument, every context and every resolution.  No timer of the controller
        is left in the reactor afterwards, but for what the errbacks themselves start.
        """
        engine, now = self._engine, self._now()
        if observer is None:
            handles = engine.freeAll(now)
            self._sockets.clear()
        else:
            handles = engine.resolutionsOf(observer)
            for handle in handles:
                engine.cancel(handle, now)
            flow = engine.freeObserver(observer, now)
            if flow is not None:
                self._forgetIfUnused(flow.sock.key)
        self._cancelDeferreds(handles)

    def _cancelDeferreds(self, handles: Sequence[Any]) -> None:
        """Cancel the look-ups of stopped resolutions, flush, then errback their Deferreds ``CancelledError``."""
        for handle in handles:
            lookup = self._lookups.pop(handle, None)
            if lookup is not None:
                lookup.cancel()
        self._flush()
        # The errbacks run last, on finished state: what they start (a new resolution) runs like any other.
        for handle in handles:
            d = self._deferreds.pop(handle, None)
            if d is not None:
                d.cancel()

    def isKeepingAlive(self, observer: Any) -> bool:
        """``True`` while ``observer`` has a running keepalive context."""
        return self._engine.flows.isKeepingAlive(observer)

    @property
    def flowCount(self) -> int:
        return len(self._engine.flows)

    def flowCountByTransport(self) -> Dict[str, int]:
        """
        The keepalive contexts by transport, ``{"udp": n, "tcp": m}`` (``tcp``: every stream flow, TLS
        included, kept alive with CRLF pings): the operator's ``sipnat_flows`` gauge.
        """
        streams = self._engine.flows.streamCount()
        return {"udp": len(self._engine.flows) - streams, "tcp": streams}

    @property
    def keepaliveRTT(self) -> Histogram:
        """
        Round-trip times of every answered STUN keepalive so far, first send to answer (a live
        :class:`~twisted_sipnat.core.histogram.Histogram`: read it, do not change it).  Pongs are not timed: one
        pong answers every ping outstanding on its connection (RFC 5626 §4.4.1).
        """
        return self._engine.flows.rtt

    @property
    def pendingTransactionCount(self) -> int:
        return len(self._engine.table)

    @property
    def learnedCredentialCount(self) -> int:
        """
        ``(server, username)`` pairs whose long-term realm and nonce are remembered (RFC 8489 §9.2.3.2), at
        most :data:`~twisted_sipnat.core.longterm.DEFAULT_MAX_CREDENTIALS` (the oldest goes first).
        """
        return len(self._engine.table.credentials)

    @property
    def failedDomainCount(self) -> int:
        """
        Failed resolutions remembered for ``NATSettings.stunFailureCacheTime``, at most
        :data:`~twisted_sipnat.core.failurecache.DEFAULT_MAX_FAILURES` (expired ones, then the oldest, go first).
        """
        return len(self._engine.failures)

    def baselineOf(self, observer: Any) -> Optional[PublicAddress]:
        """The public address the observer's flow judges keepalive answers against (``None``: not yet)."""
        baseline = self._engine.flows.baselineOf(observer)
        return publicAddress(baseline) if baseline is not None else None


def _stopOnShutdown(ref: weakref.ReferenceType[NATTraversalController]) -> None:
    """The reactor's "before shutdown" trigger: stop the controller, if it still exists."""
    controller = ref()
    if controller is not None and not controller.stopped:
        controller._shutdownTrigger = None  # this trigger is firing: nothing to remove
        controller.stop()
