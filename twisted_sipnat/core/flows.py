"""
The keepalive contexts of one engine (sans-IO): starting, moving and stopping them, sending their keepalives,
and judging what comes back (RFC 5626 §4.4).

Rules held here:

- one context per observer; a second ``refresh`` for it restarts, never duplicates;
- the baseline for ``MappedAddressChanged`` (contract): the first mapped address the next hop returns to a
  keepalive on this flow; the address a resolution found is the baseline only when the next hop was also the
  STUN server (``stunServers=()``), since a NAT that maps per destination legitimately gives two;
- a STUN error response to a keepalive counts as an answer (the path is alive): logged, not a failure;
- an answer with unknown comprehension-required attributes (RFC 8489 §6.3.3) is unusable: the next hop
  answered, so the flow is alive, but its mapped address is not taken;
- a timed-out keepalive transaction is a ``STUNTimeout`` flow failure; a pong not back within
  ``pongTimeout`` is a ``PongTimeout`` (§4.4.1); with ``udpKeepaliveMethod="auto"``, a timeout toward a hop
  that never answered STUN on the flow turns it to CRLF keepalives instead (logged once, no failure);
  while that flow's first transaction still retransmits, a keepalive due meanwhile goes out as a CRLFCRLF
  datagram beside it (the retransmissions' widening gaps could outlast the NAT binding);
- ``networkChanged``: a keepalive out of schedule on every flow that expects an answer, judged as usual, and
  ``FlowConnectionLost`` for a flow whose socket's local address is not the one it started on;
- the answer memo (:class:`~twisted_sipnat.core.keepalive.AnswerMemo`): an answer identical to the last one
  that confirmed the baseline is taken without decoding.

A failure stops the context completely, then queues a :class:`~twisted_sipnat.core.events.FlowFailed` (or
:class:`~twisted_sipnat.core.events.MappingChanged`) event for the shell.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Deque, Dict, List, Mapping, Optional, Tuple, Union

from ..errors import FlowConnectionLost, FlowFailure, PongTimeout, ResourceLimitError, STUNTimeout
from . import keepalive as ka
from . import stun
from .events import FlowFailed, LookupNeeded, MappingChanged, Note
from .histogram import Histogram
from .timers import TimerHeap
from .transactions import TransactionTable, Transmit, Txn

HostPort = Tuple[str, int]

#: The reason a failure counts under in ``stats["flow.failures.REASON"]`` (the operator metric's label); a
#: failure of another type counts under its class name.
FAILURE_REASONS = {STUNTimeout: "stun_timeout", PongTimeout: "pong_timeout", FlowConnectionLost: "connection_lost"}


class ObserverMemory:
    """What ``refresh`` needs from the observer's last resolution: its domain, next hop and result."""

    __slots__ = ("domain", "nextHop", "resolved", "viaNextHop")

    def __init__(self) -> None:
        self.domain: Optional[str] = None
        self.nextHop: Optional[HostPort] = None
        self.resolved: Optional[HostPort] = None
        #: The resolution asked the next hop itself (``stunServers=()``): its result may be the baseline.
        self.viaNextHop = False


class NextHopLookup:
    """A flow's next hop is a name: UDP writes need its address (looked up by the shell)."""

    __slots__ = ("flow", "hop")

    def __init__(self, flow: ka.FlowKeeper, hop: HostPort) -> None:
        self.flow = flow
        self.hop = hop

    def done(self, engine: Any, address: Any, now: float) -> None:
        flow = self.flow
        if not flow.done and flow.nextHop == self.hop:
            flow.nextHop = (address[0], address[1])

    def failed(self, engine: Any, why: str, now: float) -> None:
        flow = self.flow
        if not flow.done and flow.nextHop == self.hop:
            engine.events.append(Note("warn", "cannot resolve next hop {host}: {why}",
                                      {"host": self.hop[0], "why": why}))
            flow.nextHop = None


class FlowTable:
    """Every keepalive context of one engine, keyed by the shell's observer."""

    __slots__ = ("flows", "memory", "table", "timers", "outbox", "withdrawals", "events", "stats", "rng",
                 "maxFlows", "keepaliveEvents", "rtt")

    def __init__(self, table: TransactionTable, timers: TimerHeap, outbox: List[Transmit],
                 withdrawals: List[Tuple[Any, Any]], events: Deque[Any], stats: Counter[str], rng: Any,
                 maxFlows: int, keepaliveEvents: bool) -> None:
        self.flows: Dict[Any, ka.FlowKeeper] = {}
        self.memory: Dict[Any, ObserverMemory] = {}
        self.table = table
        self.timers = timers
        self.outbox = outbox
        self.withdrawals = withdrawals
        self.events = events
        self.stats = stats
        self.rng = rng
        self.maxFlows = maxFlows
        self.keepaliveEvents = keepaliveEvents
        #: Round-trip times of the answered STUN keepalives (first send to answer), for the operator.
        self.rtt = Histogram()

    def remembered(self, observer: Any) -> Optional[ObserverMemory]:
        """What the table remembers of ``observer`` (the domain it resolved with, its next hop), if anything."""
        return self.memory.get(observer)

    def isKeepingAlive(self, observer: Any) -> bool:
        return observer in self.flows

    def baselineOf(self, observer: Any) -> Optional[HostPort]:
        """The public address the next hop first reported to ``observer``'s keepalives (RFC 5626 §4.4.1)."""
        flow = self.flows.get(observer)
        return flow.baseline if flow is not None else None
    def __len__(self) -> int:
        return len(self.flows)

    def streamCount(self) -> int:
        """How many of the contexts keep a stream (TCP/TLS) flow alive with CRLF pings; the rest are UDP."""
        return sum(1 for flow in self.flows.values() if flow.kind == ka.PING)

    def remember(self, observer: Any) -> ObserverMemory:
        memory = self.memory.get(observer)
        if memory is None:
            memory = self.memory[observer] = ObserverMemory()
        return memory

    # -- starting and stopping --------------------------------------------------------------------------------

    def refresh(self, sock: Any, observer: Any, settings: Any, base: float, hop: Optional[HostPort],
                domain: Optional[str], now: float, named: bool, local: Optional[HostPort] = None,
                baseline: Optional[HostPort] = None) -> ka.FlowKeeper:
        """
        Start (or restart) ``observer``'s keepalives; ``named``: ``hop`` is a name to look up first; ``local``:
        the socket's local address now (what :meth:`networkChanged` compares with); ``baseline``: the flow's
        public address as the next hop saw it (the registrar's ``received``/``rport``), else the resolution's
        when the next hop answered it, else the first keepalive answer's.
        """
        memory = self.memory.get(observer)
        method = settings.udpKeepaliveMethod
        kind = ka.PING if sock.stream else (ka.CRLF if method == "crlf" else ka.STUN)
        stunAnswered = False  # a given baseline came from SIP (received/rport): the hop may not answer STUN
        if kind != ka.STUN:
            baseline = None
        elif baseline is None and memory is not None and memory.viaNextHop and memory.nextHop == hop:
            baseline = memory.resolved
            stunAnswered = baseline is not None
        if observer in self.flows:
            self.stop(observer, now)
        elif len(self.flows) >= self.maxFlows:
            raise ResourceLimitError("keepalive contexts", self.maxFlows)
        flow = ka.FlowKeeper(kind, base, now, self.rng, pongTimeout=settings.pongTimeout, baseline=baseline,
                             observer=observer, sock=sock, nextHop=hop, settings=settings, auto=method == "auto",
                             local=local, stunAnswered=stunAnswered)
        self.flows[observer] = flow
        sock.flows[flow] = None
        memory = self.remember(observer)
        memory.domain = domain
        memory.nextHop = hop
        if named and hop is not None:
            self.events.append(LookupNeeded(NextHopLookup(flow, hop), hop[0], hop[1], sock.key))
        self.timers.schedule(flow, flow.nextTime)
        self.events.append(Note("info", "keepalives started toward {nextHop} every {low:.1f}-{high:.1f} s ({kind})", {
            "nextHop": hop, "low": base * ka.JITTER_LOW, "high": base * ka.JITTER_HIGH, "kind": kind,
            "observer": observer, "sipnat_event": "keepalive.started"}))
        return flow

    def stop(self, observer: Any, now: float) -> Optional[ka.FlowKeeper]:
        flow = self.flows.pop(observer, None)
        if flow is None:
            return None
        flow.done = True
        self.timers.unschedule(flow)
        if flow.held:
            flow.held = False
            self.withdrawals.append((flow.sock.key, flow))
        bridge = flow.bridgeKey
        if bridge is not None and bridge.held:
            bridge.held = False
            self.withdrawals.append((flow.sock.key, bridge))
        if flow.txn is not None:
            txn = flow.txn
            flow.keepaliveEnded(txn)
            self.table.end(txn, now)
        flow.sock.flows.pop(flow, None)
        return flow

    def fail(self, flow: ka.FlowKeeper, error: Optional[FlowFailure], now: float,
             change: Optional[Tuple[HostPort, HostPort]] = None) -> None:
        """The flow failed: stop it completely, then queue the event for its observer (told once)."""
        if flow.done:
            return
        self.stop(flow.observer, now)
        self.stats["flow.failures"] += 1
        reason = "mapped_address_changed" if change is not None else FAILURE_REASONS.get(type(error),
                                                                                          type(error).__name__)
        self.stats["flow.failures." + reason] += 1
        if change is not None:
            self.events.append(MappingChanged(flow.observer, change[0], change[1]))
        else:
            assert error is not None
            self.events.append(FlowFailed(flow.observer, error))

    def move(self, observer: Any, hop: HostPort, named: bool) -> None:
        """``updateNextHop``: at once, including a transaction in flight (retransmissions and answer)."""
        memory = self.remember(observer)
        if memory.nextHop != hop:
            memory.viaNextHop = False
        memory.nextHop = hop
        flow = self.flows.get(observer)
        if flow is None or flow.nextHop == hop:
            return
        flow.moveTo(hop)
        txn = flow.txn
        if txn is not None:
            txn.destination = hop
            if txn.held and txn.startedAt is None:
                # Its first send is still held by the socket: offer it again for the new hop (the socket keeps
                # its place in the queue and writes it there when it is released).
                self.outbox.append((flow.sock.key, flow, txn.request, hop))
        if named:
            self.events.append(LookupNeeded(NextHopLookup(flow, hop), hop[0], hop[1], flow.sock.key))
        self.events.append(Note("info", "keepalives moved to {nextHop}", {
            "nextHop": hop, "observer": observer, "sipnat_event": "keepalive.moved"}))

    # -- sending ----------------------------------------------------------------------------------------------

    def due(self, flow: ka.FlowKeeper, now: float) -> None:
        if flow.done:
            return
        action = flow.fire(now)
        if action == ka.PONG_TIMEOUT:
            self.fail(flow, PongTimeout(flow.pongTimeout), now)
            return
        if action == ka.KEEPALIVE:
            self.sendKeepalive(flow, now)
        elif action == ka.BRIDGE:
            # Written like any keepalive, under a key of its own: held by the arbitration, it is written when
            # the socket is free, and nothing waits for it.
            self.outbox.append((flow.sock.key, flow.bridgeKey, ka.PING_BYTES, flow.nextHop))
            self.stats["keepalive.bridge"] += 1
        if not flow.done:
            self.timers.schedule(flow, flow.nextTime)

    def sendKeepalive(self, flow: ka.FlowKeeper, now: float) -> None:
        hop = flow.nextHop
        kind = flow.kind
        if hop is None and kind != ka.PING:
            self.stats["keepalive.skipped.no-next-hop"] += 1
            return
        if kind == ka.STUN:
            assert hop is not None
            try:
                flow.keepaliveStarted(self.table.start(flow.sock, hop, flow.settings, flow, self, now, writeKey=flow))
            except ResourceLimitError:
                self.stats["keepalive.skipped.limit"] += 1
                return
        else:
            self.outbox.append((flow.sock.key, flow, ka.PING_BYTES, hop))
            if kind == ka.PING:
                flow.pingArmed = flow.pingWritten(now)
                if flow.pingArmed:
                    self.timers.schedule(flow, flow.nextTime)
        self.stats["keepalive.sent"] += 1
        if self.keepaliveEvents:
            self.events.append(Note("debug", "keepalive ({kind}) due toward {nextHop}", {
                "kind": kind, "nextHop": hop, "observer": flow.observer, "sipnat_event": "keepalive.sent"}))

    def heldBack(self, flow: Union[ka.FlowKeeper, ka.BridgeKey]) -> None:
        """A keepalive just handed out was held by the socket's arbitration."""
        if isinstance(flow, ka.BridgeKey):
            flow.held = True
            return
        if flow.kind == ka.STUN:
            if flow.txn is not None:
                self.table.heldBack(flow.txn)
            return
        flow.held = True
        if flow.kind == ka.PING:
            flow.pingHeld()
            if not flow.done:
                self.timers.schedule(flow, flow.nextTime)

    def released(self, flow: Union[ka.FlowKeeper, ka.BridgeKey], now: float) -> None:
        """A held keepalive was written at ``now``: its transaction's (or pong's) clock counts from here."""
        if isinstance(flow, ka.BridgeKey):
            flow.held = False
            return
        if flow.kind == ka.STUN:
            txn = flow.txn
            if txn is not None and not flow.done:
                txn.held = False
                self.table.released(txn, now)
            return
        flow.held = False
        if flow.done or flow.kind != ka.PING:
            return
        if flow.pingWritten(now):
            self.timers.schedule(flow, flow.nextTime)

    def pong(self, sock: Any) -> bool:
        """A CRLF pong arrived on ``sock``: every flow waiting for one there is answered."""
        consumed = False
        for flow in list(sock.flows):
            if flow.kind == ka.PING and flow.pongReceived():
                consumed = True
                self.stats["keepalive.pongs"] += 1
                if self.keepaliveEvents:
                    self.events.append(Note("debug", "pong received", {
                        "observer": flow.observer, "sipnat_event": "keepalive.answered"}))
                self.timers.schedule(flow, flow.nextTime)
        return consumed

    # -- the sink of keepalive transactions -------------------------------------------------------------------

    def quick(self, txn: Txn, data: bytes, now: float) -> bool:
        """An answer identical to the last one that confirmed the baseline: taken without decoding."""
        flow: ka.FlowKeeper = txn.owner
        memo = flow.memo
        if memo is None or txn.integrityKey is not None or not memo.matches(data, flow.baseline):
            return False
        self.table.answered(txn, now)
        if self._confirmed(flow, txn, now) and self.keepaliveEvents:
            self._noteAnswered(flow, txn, flow.baseline, now)
        return True

    def _confirmed(self, flow: ka.FlowKeeper, txn: Txn, now: float) -> bool:
        """The next hop answered the flow's keepalive; ``False`` if the flow has been stopped meanwhile."""
        flow.keepaliveEnded(txn)
        if flow.done:
            return False
        flow.hopAnswered = True
        self.stats["keepalive.answered"] += 1
        self.rtt.observe(now - (txn.startedAt if txn.startedAt is not None else now))
        return True

    def _noteAnswered(self, flow: ka.FlowKeeper, txn: Txn, address: HostPort, now: float) -> None:
        self.events.append(Note("debug", "keepalive answered by {server}: public address {host}:{port}", {
            "server": txn.server, "host": address[0], "port": address[1], "observer": flow.observer,
            "rtt": now - (txn.startedAt or now), "sipnat_event": "keepalive.answered"}))

    def answered(self, txn: Txn, message: Any, source: Any, data: bytes, now: float) -> None:
        flow: ka.FlowKeeper = txn.owner
        self.table.answered(txn, now)
        if not self._confirmed(flow, txn, now):
            return
        if message.messageClass != stun.SUCCESS:
            self.stats["keepalive.error"] += 1
            code, reason = message.errorCode or (0, "")
            # Contract: an error response still proves the path is alive; log it, do not fail the flow.
            self.events.append(Note("warn", "keepalive answered with STUN error {code} {reason} by {server}", {
                "code": code, "reason": reason, "server": txn.server, "observer": flow.observer,
                "sipnat_event": "keepalive.error"}))
            return
        mapped = message.mappedAddress
        if mapped is None:
            self.events.append(Note("warn", "keepalive answer from {server} without a mapped address",
                                    {"server": txn.server}))
            return
        baseline = flow.baseline
        first = baseline is None
        change = None if baseline == mapped else flow.judgeMappedAddress(mapped)
        address = flow.baseline if change is None else mapped
        if self.keepaliveEvents:
            self._noteAnswered(flow, txn, address, now)
        if change is None and txn.integrityKey is None:
            fingerprinted = stun.endsWithValidFingerprint(data)
            if fingerprinted or not message.hasFingerprint:
                flow.memo = ka.AnswerMemo(ka.AnswerMemo.shapeOf(data, fingerprinted), fingerprinted, flow.baseline)
        if first:
            self.events.append(Note("info", "public address {host}:{port} on the flow to {server}", {
                "host": address[0], "port": address[1], "server": txn.server, "observer": flow.observer,
                "sipnat_event": "public.address"}))
        if change is not None:
            old, new = change
            self.events.append(Note(
                "warn", "NAT rebinding: public address changed from {old[0]}:{old[1]} to {new[0]}:{new[1]}",
                {"old": old, "new": new, "observer": flow.observer, "sipnat_event": "public.address.changed"}))
            self.fail(flow, None, now, change=(old, new))

    def timedOut(self, txn: Txn, now: float) -> None:
        flow: ka.FlowKeeper = txn.owner
        flow.keepaliveEnded(txn)
        if flow.done:
            return
        if flow.fallsBackOnTimeout():
            self.stats["keepalive.fallback"] += 1
            self.events.append(Note(
                "warn", "{nextHop} never answered a STUN keepalive: keeping the flow alive with CRLF keepalives", {
                    "nextHop": txn.destination, "observer": flow.observer, "sipnat_event": "keepalive.fallback"}))
            return
        elapsed = now - txn.startedAt if txn.startedAt is not None else None
        self.fail(flow, STUNTimeout((txn.destination,), elapsed), now)

    def unusable(self, txn: Txn, why: str, now: float) -> None:
        """RFC 8489 §6.3.3: discarded; the next hop did answer, so the flow is alive, but nothing is judged."""
        self.table.end(txn, now)
        txn.owner.keepaliveEnded(txn)
        txn.owner.hopAnswered = True

    # -- the host's network changed ---------------------------------------------------------------------------

    def networkChanged(self, now: float, localAddresses: Mapping[Any, Optional[HostPort]]) -> None:
        """
        The host's addresses or routes changed: a rebinding must show within one round trip, not one interval
        (RFC 5626 §4.4).  ``localAddresses`` maps a socket key to its local address now (``None``: unbound or
        gone); a flow whose socket is not on the address it started on fails with ``FlowConnectionLost`` (its
        NAT binding, and on a stream its connection, belong to the old address).  Every other flow that expects
        an answer sends one keepalive now -- a STUN Binding, or a ping -- and its schedule restarts from ``now``;
        a STUN flow with a transaction in flight waits for that one's answer, and a CRLF flow (nothing to
        judge) keeps its schedule.
        """
        for flow in list(self.flows.values()):
            if flow.done:
                continue
            key = flow.sock.key
            if flow.local is not None and key in localAddresses:
                current = localAddresses[key]
                if current != flow.local:
                    self.fail(flow, FlowConnectionLost(
                        f"local address changed from {flow.local[0]}:{flow.local[1]} to "
                        + (f"{current[0]}:{current[1]}" if current is not None else "none")), now)
                    continue
            if flow.kind == ka.CRLF or (flow.kind == ka.STUN and flow.stunInFlight):
                continue
            self.stats["keepalive.network-changed"] += 1
            self.sendKeepalive(flow, now)
            if not flow.done:
                flow.restartSchedule(now)
                self.timers.schedule(flow, flow.nextTime)
