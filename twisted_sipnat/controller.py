"""
:class:`NATTraversalController`: the SIP NAT Traversal Controller API on Twisted, an adapter over the sans-IO
:class:`~twisted_sipnat.core.engine.Engine`, which holds every protocol rule.

After each input -- an API call, a datagram, a name look-up's result, its one ``IDelayedCall`` -- the
controller feeds the engine, then (:meth:`NATTraversalController._flush`) in this order: writes what the
engine hands out through each socket's arbitration, re-arms its one delayed call to ``Engine.getTimer()``,
and drains the engine's events into Deferreds, observers and log lines.  A callback that calls back into the
controller therefore always finds the engine's state finished.
"""

from __future__ import annotations

import random
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from .core import events as ev
from .core import stun
from .core.addresses import isIPLiteral
from .core.engine import Engine, SocketRecord, checkNextHop
from .core.keepalive import PONG_BYTES
from .core.timers import TimerHeap
from .core.transaction import DEFAULT_RC
from .errors import MappedAddressChanged, NATTraversalError, UnknownDomainError
from .interfaces import ISharedSocket
from .names import NameLookups
from .settings import NATSettings, ServerSpec, settingsTable
from .sockets import BareSocket, SocketState, canonicalSocket, looksLikeStream, publicAddress

HostPort = Tuple[str, int]
PublicAddress = Union[IPv4Address, IPv6Address]

_log = Logger(namespace="twisted_sipnat")


class NATTraversalController:
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
    """

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
        self.reactor = reactor
        self.rng = rng if rng is not None else random.SystemRandom()
        self._engine = Engine(rng=self.rng, maxFlows=maxFlows, maxTransactions=maxTransactions,
                              maxOutstandingPerServer=maxOutstandingPerServer, keepaliveEvents=keepaliveEvents,
                              timers=timers)
        #: Counters: keepalives sent/answered, responses dropped by reason, and so on.
        self.stats = self._engine.stats
        self._names = NameLookups(reactor, dnsResolver)
        self._call: Optional[IDelayedCall] = None
        self._sockets: Dict[int, SocketState] = {}
        self._deferreds: Dict[Any, defer.Deferred[Any]] = {}
        self._lookups: Dict[Any, defer.Deferred[Any]] = {}

    @property
    def maxFlows(self) -> int:
        return self._engine.flows.maxFlows

    @property
    def maxTransactions(self) -> int:
        return self._engine.table.maxTransactions

    @property
    def keepaliveEvents(self) -> bool:
        return self._engine.flows.keepaliveEvents

    @keepaliveEvents.setter
    def keepaliveEvents(self, value: bool) -> None:
        self._engine.flows.keepaliveEvents = value

    def settingsFor(self, domain: Optional[str]) -> NATSettings:
        """The settings of ``domain``; :class:`~twisted_sipnat.errors.UnknownDomainError` if it has none."""
        if self._settings is not None:
            return self._settings
        if domain is not None and domain in self._domainSettings:
            return self._domainSettings[domain]
        raise UnknownDomainError(str(domain))

    # -- the adapter loop -------------------------------------------------------------------------------------

    def _now(self) -> float:
        return float(self.reactor.seconds())

    def _flush(self) -> None:
        """Send what the engine hands out, re-arm the one timer, then deliver the events (in that order)."""
        engine = self._engine
        if engine.withdrawals:
            for key, writeKey in engine.withdrawalsToMake():
                key.shared.withdrawKeepalive(writeKey)
        for key, writeKey, data, addr in engine.datagramsToSend():
            try:
                if key.shared.sendKeepalive(writeKey, data, addr):
                    continue
            except NATTraversalError as e:
                self.stats["writes.refused"] += 1
                _log.debug("keepalive not written: {why}", why=str(e))
            else:
                self.stats["writes.held"] += 1
            engine.heldBack(writeKey)
        self._reschedule()
        event = engine.nextEvent()
        while event is not None:
            try:
                self._deliver(event)
            except Exception:
                _log.failure("internal error delivering {event}", event=event)
            event = engine.nextEvent()

    def _reschedule(self) -> None:
        nextTime = self._engine.getTimer()
        call = self._call
        if nextTime is None:
            if call is not None and call.active():
                call.cancel()
            self._call = None
            return
        if call is not None and call.active():
            if call.getTime() != nextTime:
                call.reset(max(0.0, nextTime - self._now()))
        else:
            self._call = self.reactor.callLater(max(0.0, nextTime - self._now()), self._wake)

    def _wake(self) -> None:
        call, self._call = self._call, None
        # A reactor may wake us a hair before the instant asked for (float rounding of delay + now); the core
        # compares strictly, so "now" is never earlier than the instant this call was scheduled for.
        now = self._now()
        if call is not None:
            now = max(now, call.getTime())
        self._engine.handleTimer(now)
        self._flush()

    def _deliver(self, event: Any) -> None:
        kind = type(event)
        if kind is ev.Note:
            level = event.level
            if level == "failure":
                _log.failure(event.text, Failure(event.fields["error"]))
            else:
                getattr(_log, level)(event.text, **event.fields)
        elif kind is ev.FlowFailed or kind is ev.MappingChanged:
            error = event.error if kind is ev.FlowFailed else MappedAddressChanged(
                publicAddress(event.old), publicAddress(event.new))
            _log.warn("flow failed: {error}", error=str(error), observer=event.observer,
                      failure_type=type(error).__name__, sipnat_event="flow.failure")
            notify = getattr(event.observer, "flowFailure", None)
            if notify is not None:
                try:
                    notify(Failure(error))
                except Exception:
                    _log.failure("the observer's flowFailure raised")
        elif kind is ev.LookupNeeded:
            self._lookUp(event)
        else:
            d = self._deferreds.pop(event.handle, None)
            self._lookups.pop(event.handle, None)
            if d is None:
                return
            if kind is ev.Resolved:
                d.callback(publicAddress(event.address))
            elif kind is ev.ProbeAnswered:
                d.callback((event.message, event.source))
            else:
                d.errback(Failure(event.error))

    # -- sockets ----------------------------------------------------------------------------------------------

    def _socketState(self, socket: Any) -> SocketState:
        socket = canonicalSocket(socket)
        state = self._sockets.get(id(socket))
        if state is not None and state.socket is socket:
            return state
        shared: Any = socket if ISharedSocket.providedBy(socket) else BareSocket(socket, looksLikeStream(socket),
                                                                                   self.stats)
        state = self._sockets[id(socket)] = SocketState(socket, shared)
        state.record = self._engine.socket(state, bool(shared.isStream))
        return state

    def _record(self, state: SocketState) -> SocketRecord:
        record: SocketRecord = state.record
        if record.ipv6 is None:
            local = state.shared.localAddress()
            if local is not None:
                record.ipv6 = isinstance(local, IPv6Address)
        if self._engine.sockets.get(state) is not record:
            self._engine.sockets[state] = record
        return record

    def _forgetIfUnused(self, state: Any) -> None:
        """Keep no state for a socket with nothing held and nothing riding on it (a stack may report every one)."""
        if state is None or not self._engine.socketUnused(state.record) or state.shared.arbiter.held:
            return
        key = id(state.socket)
        if self._sockets.get(key) is state:
            del self._sockets[key]
        self._engine.forgetSocket(state.record)

    def localAddressOf(self, socket: Any) -> Any:
        """The local ``IAddress`` of a shared socket (``None`` if unknown)."""
        return self._socketState(socket).shared.localAddress()

    # -- name look-ups ----------------------------------------------------------------------------------------

    def _lookUp(self, event: ev.LookupNeeded) -> None:
        owner = getattr(event.handle, "resolution", None)
        d = self._names.answer(event, bool(self._record(event.socketKey).ipv6), self._engine, self._now,
                               self._flush)
        if owner is not None:
            self._lookups[owner] = d
            d.addBoth(lambda result: (self._lookups.pop(owner, None), result)[1])

    def lookupServer(self, host: str, port: Optional[int], socket: Any) -> defer.Deferred[HostPort]:
        """The IP address and port of a STUN server name (``port`` given: A/AAAA only)."""
        record = self._record(self._socketState(socket))
        return self._names.lookupHost(host, 3478 if port is None else port, bool(record.ipv6))

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
        if state.shared.isStream:
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

    def _cancel(self, handle: Any) -> None:
        """A Deferred's canceller: stop retransmitting; ``Deferred.cancel`` then errbacks ``CancelledError``."""
        self._deferreds.pop(handle, None)
        lookup = self._lookups.pop(handle, None)
        self._engine.cancel(handle, self._now())
        if lookup is not None:
            lookup.cancel()
        record = getattr(handle.txn, "sock", None) or getattr(handle, "sock", None)
        self._forgetIfUnused(record.key if record is not None else None)
        self._flush()

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
        """RFC 5780 §4.3/§4.4 behaviour from ``socket`` (a :class:`~.discovery.NATBehaviour`; ``route``: tests)."""
        from .discovery import discover

        return discover(self, socket, server, retransmissions=retransmissions, route=route)

    # -- keepalives -------------------------------------------------------------------------------------------

    def refreshNATBinding(self, socket: Any, observer: Any, nextHop: Any = None, flowTimer: Optional[float] = None,
                          domain: Optional[str] = None) -> bool:
        """
        Keep the NAT binding of ``socket`` alive toward ``nextHop`` (or the one given at resolve), after the
        REGISTER 200 OK (RFC 5626 §4.4).  ``flowTimer`` (the registrar's Flow-Timer or Via ``keep``) replaces
        the configured interval; every keepalive goes out after a fresh 80-100 % of it.  Returns ``True`` when a
        periodic keepalive was started, ``False`` when the transport's configured interval is ``0``.  A second
        call for the same observer restarts its keepalives.
        """
        engine = self._engine
        memory = engine.flows.memory.get(observer)
        if domain is None and memory is not None:
            domain = memory.domain
        settings = self.settingsFor(domain)
        state = self._socketState(socket)
        stream = bool(state.shared.isStream)
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
            hop = state.shared.peerAddress()
        else:
            raise NATTraversalError("refreshNATBinding needs a nextHop (none was given at resolve either)")
        base = float(flowTimer) if flowTimer is not None else configured
        try:
            engine.flows.refresh(self._record(state), observer, settings, base, hop, domain, now,
                                 named=hop is not None and not isIPLiteral(hop[0]))
        finally:
            self._flush()
        return True

    def updateNextHop(self, nextHop: Any, observer: Any) -> None:
        """Move the observer's keepalives (and a transaction in flight) to ``nextHop`` at once; a new baseline."""
        hop = checkNextHop(nextHop)
        self._engine.flows.move(observer, hop, named=not isIPLiteral(hop[0]))
        self._flush()

    # -- incoming ---------------------------------------------------------------------------------------------

    def dataReceived(self, data: bytes, socket: Any, addr: Any = None) -> bool:
        """Unrecognised bytes: ``True`` if consumed (a STUN response/indication, an awaited pong).  Never raises."""
        try:
            if stun.isSTUN(data):
                socket = canonicalSocket(socket)
                state = self._sockets.get(id(socket))
                record = state.record if state is not None and state.socket is socket else None
                return self._engine.receive(record, data, addr, self._now())
            if data == PONG_BYTES:
                return self.pongReceived(socket)
            return False
        except Exception:
            _log.failure("internal error handling {length} bytes from {addr}", length=len(data), addr=addr)
            return False
        finally:
            self._flush()

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
        written = state.shared.sipIdle(bool(idle))
        self.keepalivesWritten(state.shared, written)
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
        :class:`~twisted_sipnat.errors.FlowConnectionLost` and pending resolutions on it fail too.
        """
        socket = canonicalSocket(socket)
        state = self._sockets.pop(id(socket), None)
        if state is None or state.socket is not socket:
            return
        why = reason.getErrorMessage() if reason is not None else "connection lost"
        self._engine.socketClosed(state.record, why, self._now())
        self._flush()

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
        return observer in self._engine.flows.flows

    @property
    def flowCount(self) -> int:
        return len(self._engine.flows)

    @property
    def pendingTransactionCount(self) -> int:
        return len(self._engine.table)

    @property
    def timerArmed(self) -> bool:
        """``True`` while the controller's one ``IDelayedCall`` is pending."""
        return self._call is not None and self._call.active()

    def tableSizes(self) -> Dict[str, int]:
        """The size of every table the controller keeps (for leak and growth tests)."""
        sizes = self._engine.sizes()
        sizes["sockets"] = len(self._sockets)
        sizes["deferreds"] = len(self._deferreds)
        return sizes

    def baselineOf(self, observer: Any) -> Optional[PublicAddress]:
        """The public address the observer's flow judges keepalive answers against (``None``: not yet)."""
        flow = self._engine.flows.flows.get(observer)
        return publicAddress(flow.baseline) if flow is not None and flow.baseline is not None else None
