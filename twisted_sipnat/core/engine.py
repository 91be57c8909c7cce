"""
The NAT traversal engine: every protocol rule of the controller, sans-IO (the aioquic shape).

The shell (:class:`twisted_sipnat.controller.NATTraversalController`) calls one input method per thing that
happened -- an API call, a datagram (:meth:`Engine.receive`), its one timer (:meth:`Engine.handleTimer`), a
name look-up's result -- always with ``now``.  Then it takes, in this order:

1. :meth:`Engine.withdrawalsToMake` and :meth:`Engine.datagramsToSend`: held sends to drop and
   ``(socketKey, writeKey, data, destination)`` to write through the socket's arbitration; a send the
   arbitration holds back is reported with :meth:`Engine.heldBack`, and its later write with
   :meth:`Engine.released`;
2. :meth:`Engine.getTimer`: the instant to call :meth:`Engine.handleTimer` (``None``: no timer);
3. :meth:`Engine.nextEvent` until ``None``: the :mod:`~twisted_sipnat.core.events` to turn into Deferred
   results, observer calls and log lines.

Sockets are known only by the opaque keys the shell hands in (:meth:`Engine.socket`); the engine never writes,
reads a clock, resolves a name or calls back into the shell.

Where the rules live: transactions (IDs, building, matching, validation, RTO, the per-server limit) in
:mod:`~twisted_sipnat.core.transactions`; keepalive contexts, the baseline and the answer memo in
:mod:`~twisted_sipnat.core.flows`; failover, redirects, the final error and SRV order in
:mod:`~twisted_sipnat.core.resolution`; this module routes between them and owns resolutions and probes.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from typing import Any, Deque, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from ..errors import FlowConnectionLost, NATTraversalError, ResourceLimitError, STUNErrorResponse, STUNTimeout
from ..settings import DEFAULT_STUN_PORT
from . import stun
from .addresses import hostPortOf, isIPLiteral, normalHost
from .events import LookupNeeded, Note, ProbeAnswered, ProbeFailed, ResolutionFailed, Resolved
from .failurecache import FailureCache
from .flows import FlowTable
from .keepalive import FlowKeeper
from .resolution import TRY_ALTERNATE, Resolution, orderSRV
from .timers import TimerHeap
from .transaction import DEFAULT_RC
from .transactions import TransactionTable, Transmit, Txn

HostPort = Tuple[str, int]



def checkNextHop(nextHop: Any) -> HostPort:
    """A next hop as ``(host, port)`` in normal form; :class:`NATTraversalError` for anything else."""
    try:
        host, port = nextHop
    except (TypeError, ValueError):
        raise NATTraversalError(f"nextHop must be (host, port), not {nextHop!r}") from None
    if not isinstance(host, str) or not host or isinstance(port, bool) or not isinstance(port, int) \
            or not 0 < port < 65536:
        raise NATTraversalError(f"nextHop must be (host, port) with a port 1-65535, not {nextHop!r}")
    normal = normalHost(host)
    if normal == host and type(nextHop) is tuple:
        # Already canonical: keep the caller's tuple, so the flows of a farm that share a next hop share
        # one (host, port) instead of a copy each (about 100 bytes a flow).
        return nextHop
    return (normal, port)


class SocketRecord:
    """What the engine knows of one shared socket: the shell's key, its kind, what rides on it."""

    __slots__ = ("key", "stream", "ipv6", "flows", "transactions")

    def __init__(self, key: Any, stream: bool) -> None:
        self.key = key
        self.stream = stream
        #: The bound socket's family, once the shell knows it (it cannot change after binding).
        self.ipv6: Optional[bool] = None
        #: A dict used as an ordered set: the flows of a closed socket fail in the order they started.
        self.flows: Dict[FlowKeeper, None] = {}
        self.transactions = 0


class Probe:
    """One single Binding transaction (``sendBindingRequest``, the RFC 5780 tests)."""

    __slots__ = ("txn", "done", "lookup")

    def __init__(self) -> None:
        self.txn: Optional[Txn] = None
        self.done = False
        self.lookup = None


class Probes:
    """The sink of probe transactions: every outcome is an event for the probe's Deferred."""

    __slots__ = ("table", "events")

    def __init__(self, table: TransactionTable, events: Deque[Any]) -> None:
        self.table = table
        self.events = events

    def start(self, record: SocketRecord, server: HostPort, settings: Any, attributes: Sequence[Any], now: float,
              rc: int, anySource: bool) -> Probe:
        probe = Probe()
        probe.txn = self.table.start(record, server, settings, probe, self, now, extra=tuple(attributes), rc=rc,
                                     anySource=anySource)
        return probe

    def _end(self, probe: Probe, event: Any) -> None:
        if not probe.done:
            probe.done = True
            probe.txn = None
            self.events.append(event)

    def quick(self, txn: Txn, data: bytes, now: float) -> bool:
        return False

    def answered(self, txn: Txn, message: Any, source: Any, data: bytes, now: float) -> None:
        self.table.answered(txn, now)
        self._end(txn.owner, ProbeAnswered(txn.owner, message, source))

    def timedOut(self, txn: Txn, now: float) -> None:
        elapsed = now - txn.startedAt if txn.startedAt is not None else None
        self._end(txn.owner, ProbeFailed(txn.owner, STUNTimeout((txn.destination,), elapsed)))

    def unusable(self, txn: Txn, why: str, now: float) -> None:
        self.table.end(txn, now)
        self._end(txn.owner, ProbeFailed(txn.owner, NATTraversalError(f"{txn.server[0]}:{txn.server[1]} sent a {why}")))


class ServerLookup:
    """A resolution waits for a server name: SRV ``_stun._udp`` (``srv``) or A/AAAA."""

    __slots__ = ("resolution", "host", "port", "srv")

    def __init__(self, resolution: Resolution, host: str, port: Optional[int]) -> None:
        self.resolution = resolution
        self.host = host
        self.port = port
        self.srv = port is None

    def done(self, engine: Engine, result: Any, now: float) -> None:
        resolution = self.resolution
        if resolution.lookup is not self or resolution.done:
            return
        resolution.lookup = None
        if self.srv:
            # RFC 2782: targets by priority, weighted random within one; each is a server of its own, so a
            # target that fails moves on to the next one (failover).  No usable record: the name on 3478.
            records = [(priority, weight, (normalHost(target), port)) for priority, weight, port, target in result
                       if target not in ("", ".")]
            targets = orderSRV(records, engine.rng) or [(self.host, DEFAULT_STUN_PORT)]
            resolution.servers[resolution.index:resolution.index] = targets
            engine.nextServer(resolution, now)
        else:
            engine.startResolutionTransaction(resolution, (normalHost(result[0]), result[1]), now)

    def failed(self, engine: Engine, why: str, now: float) -> None:
        resolution = self.resolution
        if resolution.lookup is not self or resolution.done:
            return
        resolution.lookup = None
        if self.srv:
            resolution.servers.insert(resolution.index, (self.host, DEFAULT_STUN_PORT))
        else:
            engine.events.append(Note("warn", "cannot resolve STUN server {host}: {why}", {
                "host": self.host, "why": why, "sipnat_event": "stun.server.unresolved"}))
        engine.nextServer(resolution, now)


class Engine:
    """See the module docstring.  ``timers`` may be given (a subclass of :class:`TimerHeap`, for tests)."""

    def __init__(self, *, rng: Optional[random.Random] = None, maxFlows: int = 1_000_000,
                 maxTransactions: int = 1_000_000, maxOutstandingPerServer: int = 10, keepaliveEvents: bool = True,
                 timers: Optional[TimerHeap] = None) -> None:
        self.rng = rng if rng is not None else random.SystemRandom()
        self.stats: Counter[str] = Counter()
        self.timers = timers if timers is not None else TimerHeap()
        self.outbox: List[Transmit] = []
        self.withdrawals: List[Tuple[Any, Any]] = []
        self.events: Deque[Any] = deque()
        self.table = TransactionTable(self.timers, self.outbox, self.withdrawals, self.stats, maxTransactions,
                                      maxOutstandingPerServer)
        self.flows = FlowTable(self.table, self.timers, self.outbox, self.withdrawals, self.events, self.stats,
                               self.rng, maxFlows, keepaliveEvents)
        self.probes = Probes(self.table, self.events)
        self.sockets: Dict[Any, SocketRecord] = {}
        self.resolutions: Dict[Resolution, None] = {}
        #: Failed resolutions per domain and server list (NATSettings.stunFailureCacheTime); bounded by
        #: ``failures.maxEntries`` (failurecache.DEFAULT_MAX_FAILURES).
        self.failures = FailureCache()
        #: A timer pass in progress (``handleTimer`` with a ``limit``) and its ``now``.
        self._timerPass: Optional[Iterator[Any]] = None
        self._timerPassAt = 0.0

    # -- what the shell takes after each input ----------------------------------------------------------------

    def datagramsToSend(self) -> List[Transmit]:
        """``(socketKey, writeKey, data, destination)`` to write now, in order (through the arbitration)."""
        outbox = self.outbox
        if not outbox:
            return []
        sends = list(outbox)  # even those of a transaction that ended later in the same input: they were due
        outbox.clear()
        return sends

    def withdrawalsToMake(self) -> List[Tuple[Any, Any]]:
        """``(socketKey, writeKey)`` of held sends that are void now: drop them from the arbitration."""
        if not self.withdrawals:
            return []
        done = list(self.withdrawals)
        self.withdrawals.clear()
        return done

    def getTimer(self) -> Optional[float]:
        return self.timers.nextTime()

    def nextEvent(self) -> Any:
        return self.events.popleft() if self.events else None

    # -- sockets ----------------------------------------------------------------------------------------------

    def socket(self, key: Any, stream: bool) -> SocketRecord:
        """The record of the socket the shell calls ``key`` (made on first use)."""
        record = self.sockets.get(key)
        if record is None:
            record = self.sockets[key] = SocketRecord(key, stream)
        return record

    def keepRecord(self, record: SocketRecord) -> None:
        """Make sure ``record`` is the one known for its socket again (after :meth:`forgetSocket` dropped it)."""
        if self.sockets.get(record.key) is not record:
            self.sockets[record.key] = record

    @property
    def keepaliveEvents(self) -> bool:
        """Whether every keepalive sent and answered is also reported as a debug :class:`Note`."""
        return self.flows.keepaliveEvents

    @keepaliveEvents.setter
    def keepaliveEvents(self, value: bool) -> None:
        self.flows.keepaliveEvents = value

    def socketUnused(self, record: SocketRecord) -> bool:
        return not record.flows and not record.transactions

    def forgetSocket(self, record: SocketRecord) -> None:
        if self.sockets.get(record.key) is record:
            del self.sockets[record.key]

    def heldBack(self, writeKey: Any) -> None:
        """The send just handed out under ``writeKey`` was held back by the socket's arbitration."""
        if type(writeKey) is Txn:
            self.table.heldBack(writeKey)
        else:
            self.flows.heldBack(writeKey)

    def released(self, writeKey: Any, now: float) -> None:
        """A held send was written at ``now`` (``socketIdle(True)``, or between two SIP messages on a stream)."""
        if type(writeKey) is Txn:
            writeKey.held = False
            self.table.released(writeKey, now)
        else:
            self.flows.released(writeKey, now)

    # -- timers -----------------------------------------------------------------------------------------------

    def handleTimer(self, now: float, limit: Optional[int] = None) -> bool:
        """
        Everything due at or before ``now``; one failing item is logged and the others go on.  With ``limit``,
        at most that many items, and ``True`` when the pass is not finished: the shell sends what was handed
        out so far and calls again with the same ``now``.  (Writing while the rest of a 10 ms slot is still
        being worked on lets the first answers queue up meanwhile, so the reactor reads them in one wake-up
        instead of waking for each: measured, three times fewer wake-ups and a third less system time.)
        """
        table, flows = self.table, self.flows
        items = self._timerPass
        if items is None or self._timerPassAt != now:
            items = self._timerPass = self.timers.popDue(now)
            self._timerPassAt = now
        taken = 0
        for item in items:
            taken += 1
            try:
                if type(item) is Txn:
                    if table.fire(item, now):
                        item.sink.timedOut(item, now)
                else:
                    flows.due(item, now)
            except Exception as e:  # noqa: BLE001 - one broken timer must not stop the others
                self.events.append(Note("failure", "internal error in a timer; continuing with the others",
                                        {"error": e}))
            if limit is not None and taken >= limit:
                return True
        self._timerPass = None
        return False

    # -- incoming ---------------------------------------------------------------------------------------------

    def _drop(self, reason: str, addr: Any) -> bool:
        self.stats["stun.dropped." + reason] += 1
        self.events.append(Note("debug", "dropped a STUN response ({reason}) from {addr}", {
            "reason": reason, "addr": addr, "sipnat_event": "stun.dropped"}))
        return True

    def receive(self, record: Optional[SocketRecord], data: bytes, addr: Any, now: float) -> bool:
        """
        A STUN message (it passed ``stun.isSTUN``) read from ``record``'s socket.  ``True`` if consumed: a
        response or indication (one for no pending transaction, from the wrong source or failing its checks
        is dropped and counted).  ``False`` for requests, which a responder may answer.
        """
        messageClass = stun.splitMessageType((data[0] << 8) | data[1])[1]
        if messageClass == stun.REQUEST:
            return False
        if messageClass == stun.INDICATION:
            self.stats["stun.indications"] += 1
            return True
        txn, why = self.table.match(data, record, addr)
        if txn is None:
            return self._drop(why, addr)
        sink = txn.sink
        if sink.quick(txn, data, now):
            return True
        message, why = self.table.check(txn, data)
        if message is None:
            return self._drop(why, addr)
        unknown = message.unknownComprehensionRequired
        if unknown:
            self._drop("unknown-comprehension-required", addr)
            reason = "response with unknown comprehension-required attributes " + ", ".join(
                f"0x{t:04x}" for t in unknown)
            self.events.append(Note("warn", "{server[0]}:{server[1]} sent a {why}", {
                "server": txn.server, "why": reason, "sipnat_event": "stun.response.invalid"}))
            sink.unusable(txn, reason, now)
            return True
        followed, refusal = self.table.challenged(txn, message, now)
        if followed:  # RFC 8489 §9.2.5: retried signed, in the same Txn
            self.events.append(Note("debug", "{server[0]}:{server[1]} sent a {code} challenge: retried signed", {
                "server": txn.server, "code": message.errorCode[0], "sipnat_event": "stun.auth.retry"}))
            return True
        if refusal:
            self.events.append(Note("warn", "{server[0]}:{server[1]} sent a {code} challenge not followed: {why}", {
                "server": txn.server, "code": message.errorCode[0], "why": refusal,
                "sipnat_event": "stun.auth.refused"}))
        sink.answered(txn, message, hostPortOf(addr), data, now)
        return True

    def pong(self, record: SocketRecord) -> bool:
        return self.flows.pong(record)

    def networkChanged(self, now: float, localAddresses: Mapping[Any, Optional[HostPort]]) -> None:
        """The host's network changed (see :meth:`FlowTable.networkChanged`); resolutions are not touched."""
        self.flows.networkChanged(now, localAddresses)

    # -- resolutions (the engine is the sink of their transactions) -------------------------------------------

    def resolve(self, record: SocketRecord, settings: Any, servers: Sequence[Any], observer: Any, hop: HostPort,
                domain: Optional[str], now: float) -> Resolution:
        """Start a resolution; the handle in its events is the returned object."""
        resolution = Resolution(record, settings, servers, observer, hop, domain, now)
        self.resolutions[resolution] = None
        cached = self.failures.recall(resolution.failureKey, now) if settings.stunFailureCacheTime > 0 else None
        if cached is not None:  # NATSettings.stunFailureCacheTime: fail at once, send nothing
            self.stats["stun.failure.cached"] += 1
            self._finish(resolution, ResolutionFailed(resolution, cached))
            return resolution
        if observer is not None:
            memory = self.flows.remember(observer)
            memory.domain = domain
            memory.nextHop = hop
        self.nextServer(resolution, now)
        return resolution

    def nextServer(self, resolution: Resolution, now: float) -> None:
        if resolution.done:
            return
        spec = resolution.nextServer()
        if spec is None:
            error = resolution.finalError(now)
            self.failures.remember(resolution.failureKey, error, resolution.settings.stunFailureCacheTime, now)
            self._finish(resolution, ResolutionFailed(resolution, error))
            return
        host, port = spec
        if isIPLiteral(host):
            self.startResolutionTransaction(resolution, (normalHost(host), DEFAULT_STUN_PORT if port is None else port),
                                            now)
            return
        lookup = resolution.lookup = ServerLookup(resolution, host, port)
        self.events.append(LookupNeeded(lookup, host, port, resolution.sock.key))

    def startResolutionTransaction(self, resolution: Resolution, server: HostPort, now: float) -> None:
        resolution.tried.append(server)
        try:
            resolution.txn = self.table.start(resolution.sock, server, resolution.settings, resolution, self, now)
        except ResourceLimitError as e:
            self._finish(resolution, ResolutionFailed(resolution, e))

    def _finish(self, resolution: Resolution, event: Any) -> None:
        if resolution.done:
            return
        resolution.done = True
        self.resolutions.pop(resolution, None)
        self.events.append(event)

    def quick(self, txn: Txn, data: bytes, now: float) -> bool:
        return False

    def answered(self, txn: Txn, message: Any, source: Any, data: bytes, now: float) -> None:
        self.table.answered(txn, now)
        resolution: Resolution = txn.owner
        resolution.txn = None
        if message.messageClass == stun.SUCCESS:
            mapped = message.mappedAddress
            if mapped is None:
                self.events.append(Note("warn", "Binding success from {server} without a mapped address", {
                    "server": txn.server, "sipnat_event": "stun.response.invalid"}))
                resolution.lastError = STUNErrorResponse(0, "success response without a mapped address", txn.server)
                self.nextServer(resolution, now)
                return
            address = (mapped[0], mapped[1])
            if resolution.observer is not None:
                memory = self.flows.remember(resolution.observer)
                memory.resolved = address
                memory.viaNextHop = not resolution.settings.servers
            rtt = now - resolution.startedAt
            self.events.append(Note(
                "info", "public address {host}:{port} from STUN server {server[0]}:{server[1]} in {rtt:.3f} s",
                {"host": address[0], "port": address[1], "server": txn.server, "rtt": rtt,
                 "sipnat_event": "public.address"}))
            self._finish(resolution, Resolved(resolution, address, txn.server, rtt))
            return
        code, reason = message.errorCode or (0, "error response without ERROR-CODE")
        if code == TRY_ALTERNATE:
            target = resolution.redirect(txn.server, message.alternateServer)
            if target is not None:
                self.events.append(Note("info", "STUN server {server} redirects to {target}", {
                    "server": txn.server, "target": target, "sipnat_event": "stun.redirect"}))
                self.nextServer(resolution, now)
                return
        resolution.lastError = STUNErrorResponse(code, reason, txn.server)
        self.events.append(Note("info", "STUN server {server} answered {code} {reason}", {
            "server": txn.server, "code": code, "reason": reason, "sipnat_event": "stun.error"}))
        self.nextServer(resolution, now)

    def timedOut(self, txn: Txn, now: float) -> None:
        owner = txn.owner
        owner.txn = None
        self.nextServer(owner, now)

    def unusable(self, txn: Txn, why: str, now: float) -> None:
        """RFC 8489 §6.3.3: the answer is discarded and the transaction failed; the error will say why."""
        self.table.end(txn, now)
        owner = txn.owner
        owner.txn = None
        owner.unusable.append((txn.server, why))
        self.nextServer(owner, now)

    # -- probes -----------------------------------------------------------------------------------------------

    def probe(self, record: SocketRecord, server: HostPort, settings: Any, attributes: Sequence[Any], now: float,
              rc: int = DEFAULT_RC, anySource: bool = False) -> Probe:
        """One Binding transaction with extra ``attributes``; its outcome is a ``Probe*`` event."""
        return self.probes.start(record, server, settings, attributes, now, rc, anySource)

    # -- cancelling and cleaning up ---------------------------------------------------------------------------

    def cancel(self, handle: Any, now: float) -> Any:
        """
        Stop a resolution or probe without an event (its Deferred was cancelled).  Returns the pending
        look-up the shell should cancel, if any.
        """
        if handle.done:
            return None
        handle.done = True
        if handle.txn is not None:
            txn, handle.txn = handle.txn, None
            self.table.end(txn, now)
        self.resolutions.pop(handle, None)
        lookup, handle.lookup = handle.lookup, None
        return lookup

    def resolutionsOf(self, observer: Any) -> List[Resolution]:
        return [r for r in self.resolutions if r.observer is observer]

    def socketClosed(self, record: SocketRecord, why: str, now: float) -> None:
        """Every flow and resolution on ``record`` fails with ``FlowConnectionLost``; its transactions end."""
        for resolution in [r for r in self.resolutions if r.sock is record]:
            if resolution.txn is not None:
                txn, resolution.txn = resolution.txn, None
                self.table.end(txn, now)
            self._finish(resolution, ResolutionFailed(resolution, FlowConnectionLost(why)))
        for flow in list(record.flows):
            self.flows.fail(flow, FlowConnectionLost(why), now)
        for txn in [t for t in self.table.pending.values() if t.sock is record]:
            self.table.end(txn, now)
        self.forgetSocket(record)

    def socketStopped(self, record: SocketRecord, now: float) -> List[Resolution]:
        """
        ``record`` closed because the shell is stopping (the reactor shuts down): its flows stop *without* an
        event, its transactions end, and the resolutions on it are cancelled; returns their handles, whose
        Deferreds the shell cancels.  A stop is not a failure: a UA told ``flowFailure`` would re-register.
        """
        handles = [r for r in self.resolutions if r.sock is record]
        for resolution in handles:
            self.cancel(resolution, now)
        for flow in list(record.flows):
            self.flows.stop(flow.observer, now)
        for txn in [t for t in self.table.pending.values() if t.sock is record]:
            self.table.end(txn, now)
        self.forgetSocket(record)
        return handles

    def freeObserver(self, observer: Any, now: float) -> Optional[FlowKeeper]:
        """Stop ``observer``'s keepalives and forget what it resolved; returns the stopped flow, if any."""
        flow = self.flows.stop(observer, now)
        self.flows.memory.pop(observer, None)
        return flow

    def freeAll(self, now: float) -> List[Any]:
        """
        Stop everything there is now; returns the handles of the resolutions stopped (the shell cancels their
        Deferreds afterwards, so whatever their errbacks start runs like any new call).
        """
        handles = list(self.resolutions)
        for resolution in handles:
            self.cancel(resolution, now)
        for observer in list(self.flows.flows):
            self.flows.stop(observer, now)
        for txn in list(self.table.pending.values()):
            owner = txn.owner  # a probe's (resolutions and flows were stopped above)
            owner.done = True
            owner.txn = None
            self.table.end(txn, now)
        self.flows.memory.clear()
        self.sockets.clear()
        return handles

    # -- introspection ----------------------------------------------------------------------------------------

    def sizes(self) -> Dict[str, int]:
        """The size of every table (for tests of growth bounds and leaks)."""
        return {
            "pending": len(self.table),
            "flows": len(self.flows),
            "sockets": len(self.sockets),
            "resolutions": len(self.resolutions),
            "memory": len(self.flows.memory),
            "timers": len(self.timers),
            "failures": len(self.failures),
            "credentials": len(self.table.credentials),
        }
