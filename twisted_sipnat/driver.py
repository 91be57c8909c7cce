"""
The adapter loop between Twisted and the sans-IO :class:`~twisted_sipnat.core.engine.Engine` (the aioquic
shape), the base of :class:`~twisted_sipnat.controller.NATTraversalController`.

After each input -- an API call, a datagram, a name look-up's result, its one ``IDelayedCall`` -- the
controller feeds the engine, then (:meth:`EngineDriver._flush`) in this order: writes what the engine hands
out through each socket's arbitration, re-arms its one delayed call to ``Engine.getTimer()``, and drains the
engine's events into Deferreds, observers and log lines.  A callback that calls back into the controller
therefore always finds the engine's state finished.
"""

from __future__ import annotations

from typing import Any, Dict

from twisted.internet import defer
from twisted.internet.address import IPv6Address
from twisted.logger import Logger
from twisted.python.failure import Failure

from .core import events as ev
from .core.engine import Engine, SocketRecord
from .errors import MappedAddressChanged, NATTraversalError
from .interfaces import ISharedSocket
from .names import NameLookups
from .sockets import BareSocket, SocketState, canonicalSocket, looksLikeStream, publicAddress
from .wakeup import Wakeup

_log = Logger(namespace="twisted_sipnat")

#: Due items the engine handles before the driver writes what they handed out (see ``Engine.handleTimer``).
TIMER_BATCH = 8


class EngineDriver:
    """Drives one engine from one reactor: its sockets, its one delayed call, its Deferreds and observers."""

    def __init__(self, reactor: Any, engine: Engine, dnsResolver: Any = None) -> None:
        self.reactor = reactor
        self._engine = engine
        #: Counters: keepalives sent/answered, responses dropped by reason, and so on.
        self.stats = engine.stats
        self._names = NameLookups(reactor, dnsResolver)
        self._wakeup = Wakeup(reactor, self._wake)
        self._sockets: Dict[int, SocketState] = {}
        self._deferreds: Dict[Any, defer.Deferred[Any]] = {}
        self._lookups: Dict[Any, defer.Deferred[Any]] = {}

    # -- the adapter loop -------------------------------------------------------------------------------------

    def _now(self) -> float:
        return float(self.reactor.seconds())

    def _flush(self) -> None:
        """Send what the engine hands out, re-arm the one timer, then deliver the events (in that order)."""
        engine = self._engine
        self._send()
        self._reschedule()
        if not engine.events:
            return
        event = engine.nextEvent()
        while event is not None:
            try:
                self._deliver(event)
            except Exception:
                _log.failure("internal error delivering {event}", event=event, sipnat_event="internal.error")
            event = engine.nextEvent()

    def _send(self) -> None:
        """Write what the engine handed out, through each socket's arbitration; report what was held back."""
        engine = self._engine
        if engine.withdrawals:
            for key, writeKey in engine.withdrawalsToMake():
                key.adapter.withdrawKeepalive(writeKey)
        # The truthiness checks skip a call each on the common inputs that hand out nothing (an answer).
        for key, writeKey, data, addr in engine.datagramsToSend() if engine.outbox else ():
            try:
                if key.adapter.sendKeepalive(writeKey, data, addr):
                    continue
            except NATTraversalError as e:
                self.stats["writes.refused"] += 1
                _log.debug("keepalive not written: {why}", why=str(e), sipnat_event="keepalive.unwritten")
            else:
                self.stats["writes.held"] += 1
            engine.heldBack(writeKey)

    def _reschedule(self) -> None:
        self._wakeup.at(self._engine.timers.nextTime(), self._now())

    def _wake(self, scheduledFor: float) -> None:
        # The core compares strictly, so "now" is never earlier than the instant the call was scheduled for.
        now = max(float(self.reactor.seconds()), scheduledFor)
        engine = self._engine
        while engine.handleTimer(now, TIMER_BATCH):
            self._send()  # the first of a slot's keepalives leave while the rest are built
        self._flush()

    def _deliver(self, event: Any) -> None:
        kind = type(event)
        if kind is ev.Note:
            level = event.level
            if level == "failure":
                _log.failure(event.text, Failure(event.fields["error"]),
                             sipnat_event=event.fields.get("sipnat_event", "internal.error"))
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
                    _log.failure("the observer's flowFailure raised", sipnat_event="observer.error")
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
            local = state.adapter.localAddress()
            if local is not None:
                record.ipv6 = isinstance(local, IPv6Address)
        self._engine.keepRecord(record)
        return record

    def _forgetIfUnused(self, state: Any) -> None:
        """Keep no state for a socket with nothing held and nothing riding on it (a stack may report every one)."""
        if state is None or not self._engine.socketUnused(state.record) or state.adapter.arbiter.held:
            return
        key = id(state.socket)
        if self._sockets.get(key) is state:
            del self._sockets[key]
        self._engine.forgetSocket(state.record)

    # -- name look-ups ----------------------------------------------------------------------------------------

    def _lookUp(self, event: ev.LookupNeeded) -> None:
        owner = getattr(event.handle, "resolution", None)
        d = self._names.answer(event, bool(self._record(event.socketKey).ipv6), self._engine, self._now,
                               self._flush)
        if owner is not None:
            self._lookups[owner] = d
            d.addBoth(lambda result: (self._lookups.pop(owner, None), result)[1])

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

    @property
    def timerArmed(self) -> bool:
        """``True`` while the controller's one ``IDelayedCall`` is pending."""
        return self._wakeup.pending

    def tableSizes(self) -> Dict[str, int]:
        """The size of every table the controller keeps (for leak and growth tests)."""
        sizes = self._engine.sizes()
        sizes["sockets"] = len(self._sockets)
        sizes["deferreds"] = len(self._deferreds)
        return sizes
