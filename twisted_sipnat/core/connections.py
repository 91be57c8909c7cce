"""
Who may hold a stream connection (TCP, TLS) to a server role, and for how long: a sans-IO connection table.

Why
===

A server that accepts every connection and keeps it until the peer leaves is at the mercy of the peer: under
the common 1024 open-file limit, about a thousand idle connections make the kernel refuse every later one, and
connections that stall in the middle of a header block ("slowloris") hold their partial message in memory for
ever.  The table decides instead of the kernel, before the file limit is reached:

- **Connections in total** (``maxConnections``) and **per source IP** (``maxConnectionsPerSource``).  Behind a
  carrier-grade NAT many real clients share one address, so the per-source cap is generous and cannot be the
  only defence.
- **Eviction instead of refusal.**  When the table (or the source's share of it) is full, a newcomer evicts
  the *oldest connection that has not completed a message yet* (a SIP message framed, a STUN message): an
  idle or slowloris flood only ever displaces itself, and a real client, which sends its REGISTER as soon as
  it is connected, is never locked out.  Only when every connection has completed a message is the newcomer
  refused (``max_connections`` / ``max_per_source``): those are clients that did real work.
- **Bytes buffered** per connection (the framer bounds one partial message) and in total
  (``maxBufferedBytes``): over the total, the connection holding the most is closed (``buffer_limit``); among
  equal holders one that never completed a message goes first.
- **An idle timeout** (``idleTimeout``): a connection with no complete message or keepalive for that long is
  closed (``idle_timeout``).  RFC 5626 §5.4 lets an edge close a flow that stays silent past what its
  Flow-Timer promised, so the default is a small multiple of the Flow-Timer (:func:`defaultIdleTimeout`).
  Partial bytes do not count as activity, or a slowloris could trickle one byte a minute for ever.
- **A first-message timeout** (``handshakeTimeout``): a connection that has not completed its first message
  within that bound (TLS handshake included) is closed (``handshake_timeout``): slowloris again.

The table never touches a socket.  :meth:`ConnectionTable.admit` says whether a connection may stay and whom
to close for it; :meth:`~ConnectionTable.expire` says who timed out; :meth:`~ConnectionTable.nextWakeup` is
when to call it next, so the shell keeps one timer for all connections.  Time is the caller's ``now``.

Every refusal and closure carries one of the reason labels in :data:`REASONS`, counted in
:attr:`ConnectionTable.refused` for the metrics (``sipnat_connections_refused_total{reason}``).
"""

from __future__ import annotations

import heapq
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Dict, Generic, Hashable, List, Optional, Tuple, TypeVar

from twisted_sipnat.errors import InvalidSettingsError

__all__ = [
    "Admission",
    "Closure",
    "ConnectionLimits",
    "ConnectionTable",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_BUFFERED_BYTES",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_CONNECTIONS_PER_SOURCE",
    "REASONS",
    "defaultIdleTimeout",
]

#: Without a file limit to fit under (see ``service.limits``), this many connections at most.
DEFAULT_MAX_CONNECTIONS = 10000
#: Generous: behind a carrier-grade NAT or an office NAT many real clients share one source address.
DEFAULT_MAX_CONNECTIONS_PER_SOURCE = 1024
#: Partial messages held by all connections together: 128 maximal (64 KiB) SIP header blocks.
DEFAULT_MAX_BUFFERED_BYTES = 8 * 1024 * 1024
#: Without a Flow-Timer: RFC 5626 §4.4.1's default keepalive interval for connection-oriented transports is
#: at most 120 s, so twice that plus a margin (see :func:`defaultIdleTimeout`).
DEFAULT_IDLE_TIMEOUT = 250.0
#: A real client writes its first message right after connecting (and after the TLS handshake).
DEFAULT_HANDSHAKE_TIMEOUT = 10.0

#: The reason labels of refusals and closures.
REASONS = ("max_connections", "max_per_source", "evicted", "idle_timeout", "handshake_timeout", "buffer_limit")

K = TypeVar("K", bound=Hashable)


def defaultIdleTimeout(flowTimer: Optional[float]) -> float:
    """
    The idle timeout for a server that promises ``flowTimer`` (RFC 5626 §5.4: a client keeps its flow alive
    every 80-100 % of it, §4.4.1): two Flow-Timers plus 10 s, so one lost keepalive and a slow one still pass;
    without a Flow-Timer, :data:`DEFAULT_IDLE_TIMEOUT`.
    """
    if flowTimer is None:
        return DEFAULT_IDLE_TIMEOUT
    return 2.0 * float(flowTimer) + 10.0


@dataclass(frozen=True)
class ConnectionLimits:
    """The bounds of a :class:`ConnectionTable`; every value is checked here, one line per bad one."""

    maxConnections: int = DEFAULT_MAX_CONNECTIONS
    maxConnectionsPerSource: int = DEFAULT_MAX_CONNECTIONS_PER_SOURCE
    maxBufferedBytes: int = DEFAULT_MAX_BUFFERED_BYTES
    idleTimeout: float = DEFAULT_IDLE_TIMEOUT
    handshakeTimeout: float = DEFAULT_HANDSHAKE_TIMEOUT

    def __post_init__(self) -> None:
        for key, value in (("max-connections", self.maxConnections),
                           ("max-connections-per-source", self.maxConnectionsPerSource),
                           ("max-buffered-bytes", self.maxBufferedBytes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidSettingsError(key, value, "must be a whole number >= 1")
        for key, seconds in (("idle-timeout", self.idleTimeout), ("handshake-timeout", self.handshakeTimeout)):
            if not isinstance(seconds, (int, float)) or not 0 < seconds < float("inf"):
                raise InvalidSettingsError(key, seconds, "must be a finite number of seconds > 0")


@dataclass(frozen=True)
class Closure(Generic[K]):
    """Close connection ``key`` (at once: abort, a slowloris does not read) for ``reason`` (see :data:`REASONS`)."""

    key: K
    reason: str


@dataclass(frozen=True)
class Admission(Generic[K]):
    """
    The answer to :meth:`ConnectionTable.admit`: ``admitted``, or refused for ``reason``; ``close`` lists the
    connections to close first (an eviction that made room).
    """

    admitted: bool
    reason: Optional[str] = None
    close: Tuple[Closure[K], ...] = ()


@dataclass
class _Entry:
    source: str
    admitted: float
    lastActive: float
    completed: bool = False
    buffered: int = 0
    due: float = 0.0  # the deadline the wake-up heap holds for this entry (never later than the real one)


class ConnectionTable(Generic[K]):
    """
    The open stream connections of one listener, keyed by whatever the shell uses (its protocol objects).

    Invariants (``tests/core/test_connections.py``): never more than ``maxConnections`` entries, never more
    than ``maxConnectionsPerSource`` from one source, :attr:`bufferedBytes` never over ``maxBufferedBytes``
    once :meth:`buffered`'s closures are carried out, a connection that completed a message is never evicted
    to make room, and nothing past its deadline survives :meth:`expire`.
    """

    def __init__(self, limits: Optional[ConnectionLimits] = None) -> None:
        self.limits = limits if limits is not None else ConnectionLimits()
        #: Refusals and closures so far, by reason label.
        self.refused: Counter[str] = Counter()
        self._entries: Dict[K, _Entry] = {}
        #: Connections that have not completed a message, oldest first (admission order), in all and by source.
        self._incomplete: OrderedDict[K, None] = OrderedDict()
        self._incompleteBySource: Dict[str, OrderedDict[K, None]] = {}
        self._bySource: Counter[str] = Counter()
        #: Connections holding partial-message bytes, and how many.
        self._holders: Dict[K, int] = {}
        self._buffered = 0
        #: One (deadline, sequence, key) per live connection, plus stale ones skipped when they come up.
        self._heap: List[Tuple[float, int, K]] = []
        self._seq = 0
        self._latest = float("-inf")  # the latest ``now`` seen: a clock that steps back is caught up with

    # -- reading --------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    @property
    def bufferedBytes(self) -> int:
        """Bytes of partial messages held by all connections, as last reported by :meth:`buffered`."""
        return self._buffered

    def fromSource(self, source: str) -> int:
        """How many connections ``source`` holds."""
        return self._bySource.get(source, 0)

    def isComplete(self, key: K) -> bool:
        """Whether ``key`` has completed a message (and so is never evicted to make room)."""
        entry = self._entries.get(key)
        return entry is not None and entry.completed

    # -- admission --------------------------------------------------------------------------------------------

    def admit(self, key: K, source: str, now: float) -> Admission[K]:
        """
        A new connection ``key`` from IP ``source`` at ``now``.  Room is made, when the table or the source's
        share is full, by evicting the oldest connection that has not completed a message (of the same source
        for the per-source cap); when there is none, the newcomer is refused.  ``key`` is in the table exactly
        when the answer is ``admitted``.
        """
        if key in self._entries:
            raise ValueError(f"{key!r} is already in the table")
        self._follow(now)
        close: List[Closure[K]] = []
        if self._bySource.get(source, 0) >= self.limits.maxConnectionsPerSource:
            victim = self._oldestIncomplete(self._incompleteBySource.get(source))
            if victim is None:
                self.refused["max_per_source"] += 1
                return Admission(False, "max_per_source")
            close.append(self._evict(victim))
        if len(self._entries) >= self.limits.maxConnections:
            victim = self._oldestIncomplete(self._incomplete)
            if victim is None:
                self.refused["max_connections"] += 1
                return Admission(False, "max_connections", tuple(close))
            close.append(self._evict(victim))
        entry = _Entry(source=source, admitted=now, lastActive=now)
        self._entries[key] = entry
        self._incomplete[key] = None
        self._incompleteBySource.setdefault(source, OrderedDict())[key] = None
        self._bySource[source] += 1
        self._push(key, entry, self._deadline(entry))
        return Admission(True, None, tuple(close))

    @staticmethod
    def _oldestIncomplete(order: Optional[OrderedDict[K, None]]) -> Optional[K]:
        if not order:
            return None
        return next(iter(order))

    def _evict(self, key: K) -> Closure[K]:
        self.remove(key)
        self.refused["evicted"] += 1
        return Closure(key, "evicted")

    # -- what the connection did ------------------------------------------------------------------------------

    def active(self, key: K, now: float) -> None:
        """``key`` received a keepalive (or anything else whole that is not a message): it is not idle."""
        self._follow(now)
        entry = self._entries.get(key)
        if entry is not None and now > entry.lastActive:
            entry.lastActive = now

    def completed(self, key: K, now: float) -> None:
        """``key`` completed a message: it is active, and from now on it is never evicted to make room."""
        self._follow(now)
        entry = self._entries.get(key)
        if entry is None:
            return
        if now > entry.lastActive:
            entry.lastActive = now
        if not entry.completed:
            entry.completed = True
            self._dropIncomplete(key, entry.source)

    def buffered(self, key: K, nbytes: int) -> List[Closure[K]]:
        """
        ``key`` now holds ``nbytes`` of a partial message.  Over ``maxBufferedBytes`` in total, the
        connections holding the most are closed (``buffer_limit``) until the total fits; returns them
        (``key`` itself may be one).
        """
        entry = self._entries.get(key)
        if entry is None:
            return []
        nbytes = max(0, int(nbytes))
        self._buffered += nbytes - entry.buffered
        entry.buffered = nbytes
        if nbytes:
            self._holders[key] = nbytes
        else:
            self._holders.pop(key, None)
        closures: List[Closure[K]] = []
        while self._buffered > self.limits.maxBufferedBytes and self._holders:
            victim = max(self._holders, key=self._holdingRank)
            self.remove(victim)
            self.refused["buffer_limit"] += 1
            closures.append(Closure(victim, "buffer_limit"))
        return closures

    def _holdingRank(self, key: K) -> Tuple[int, bool]:
        return (self._holders[key], not self._entries[key].completed)

    def remove(self, key: K) -> None:
        """``key`` is gone (closed by either side, or by one of our closures); unknown keys are ignored."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        if not entry.completed:
            self._dropIncomplete(key, entry.source)
        left = self._bySource[entry.source] - 1
        if left:
            self._bySource[entry.source] = left
        else:
            del self._bySource[entry.source]
        self._buffered -= entry.buffered
        self._holders.pop(key, None)
        # Stale heap entries are skipped when they come up; rebuild before they outnumber the live ones, so
        # a connect/disconnect flood cannot grow the heap past the table's own bound.
        if len(self._heap) > 2 * len(self._entries) + 64:
            self._heap = [(e.due, i, k) for i, (k, e) in enumerate(self._entries.items())]
            heapq.heapify(self._heap)
            self._seq = len(self._heap)

    def _dropIncomplete(self, key: K, source: str) -> None:
        self._incomplete.pop(key, None)
        bySource = self._incompleteBySource.get(source)
        if bySource is not None:
            bySource.pop(key, None)
            if not bySource:
                del self._incompleteBySource[source]

    # -- time -------------------------------------------------------------------------------------------------

    def _follow(self, now: float) -> None:
        """
        A ``now`` earlier than one already seen is a clock stepped back (a wall clock set back): every
        connection's times move back by the step, so the timeouts stay what they were, instead of waiting for
        the clock to catch up.  (A step forward cannot be told from time passing: idle connections then close
        early, and their clients connect again.)
        """
        if now >= self._latest:
            self._latest = now
            return
        step = self._latest - now
        self._latest = now
        for entry in self._entries.values():
            entry.admitted -= step
            entry.lastActive -= step
            entry.due = self._deadline(entry)
        self._heap = [(e.due, i, k) for i, (k, e) in enumerate(self._entries.items())]
        heapq.heapify(self._heap)
        self._seq = len(self._heap)

    def _deadline(self, entry: _Entry) -> float:
        idle = entry.lastActive + self.limits.idleTimeout
        if entry.completed:
            return idle
        return min(idle, entry.admitted + self.limits.handshakeTimeout)

    def _push(self, key: K, entry: _Entry, due: float) -> None:
        entry.due = due
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, key))

    def _live(self, item: Tuple[float, int, K]) -> Optional[_Entry]:
        due, _, key = item
        entry = self._entries.get(key)
        return entry if entry is not None and entry.due == due else None

    def nextWakeup(self) -> Optional[float]:
        """
        When :meth:`expire` may have something to close (``None``: no connection).  It may be early (activity
        moved the deadline since), never late: each connection has one heap entry, and its deadline only ever
        moves later.
        """
        heap = self._heap
        while heap and self._live(heap[0]) is None:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def expire(self, now: float) -> List[Closure[K]]:
        """The connections to close at ``now``: silent for ``idleTimeout``, or no first message in time."""
        self._follow(now)
        closures: List[Closure[K]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            item = heapq.heappop(heap)
            entry = self._live(item)
            if entry is None:
                continue
            key = item[2]
            due = self._deadline(entry)
            if due > now:
                self._push(key, entry, due)
                continue
            firstMessageDue = entry.admitted + self.limits.handshakeTimeout
            reason = "handshake_timeout" if not entry.completed and due == firstMessageDue else "idle_timeout"
            self.remove(key)
            self.refused[reason] += 1
            closures.append(Closure(key, reason))
        return closures
