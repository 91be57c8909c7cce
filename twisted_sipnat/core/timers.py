"""
Many timers, one wake-up: a lazily-invalidated heap of instants, each with the bucket of objects due then
(sans-IO).

A carrier-scale controller keeps tens of thousands of flows alive; a ``LoopingCall`` or ``IDelayedCall`` per flow
costs a reactor heap entry, a closure and a reschedule per keepalive.  Instead every sans-IO object that needs
waking (a transaction, a flow) is scheduled at an instant in one :class:`TimerHeap`, which keeps each object's
current instant itself (the objects carry no timer state), and orders them.  The Twisted shell keeps exactly one ``IDelayedCall`` in step with :meth:`TimerHeap.nextTime` (the aioquic
pattern), so timers fire at their exact instants rather than on a tick grid.

Objects due at the same instant share one bucket, and the heap holds each distinct instant once.  That is the
common case at scale: keepalive instants sit on a 10 ms grid (:data:`twisted_sipnat.core.keepalive.SLOT`) and every
transaction started in one wake-up has the same retransmission instants, so scheduling is a dict lookup and a
list append, and the heap stays as small as the number of distinct instants (a few thousand) instead of the
number of timers (hundreds of thousands), with ``heappush``/``heappop`` cost to match.

Rescheduling adds a new entry and leaves the old one in place; an entry is live only while its instant equals
the object's current instant (:meth:`TimerHeap.dueAt`).  Stale entries are dropped when their bucket surfaces, and everything is
compacted when they outnumber the live ones, so memory stays proportional to the number of live timers.
"""

from __future__ import annotations

import heapq
from typing import Any, Dict, Hashable, Iterator, List, Optional


class TimerHeap:
    """Hashable objects scheduled at instants; see the module docstring."""

    __slots__ = ("_instants", "_buckets", "_due", "_entries")

    def __init__(self) -> None:
        #: A heap of the distinct instants that have a bucket.
        self._instants: List[float] = []
        #: Instant -> the objects scheduled at it, in the order they were scheduled (some may be stale).
        self._buckets: Dict[float, List[Any]] = {}
        #: Object -> its current instant: the only live schedule of each object.
        self._due: Dict[Hashable, float] = {}
        self._entries = 0

    def __len__(self) -> int:
        """The number of scheduled objects."""
        return len(self._due)

    def dueAt(self, item: Hashable) -> Optional[float]:
        """The instant ``item`` is scheduled at, or ``None``."""
        return self._due.get(item)

    @property
    def entryCount(self) -> int:
        """Entries held in the buckets, stale ones included (bounded by about twice the live ones)."""
        return self._entries

    @property
    def instantCount(self) -> int:
        """Distinct instants in the heap (each with one bucket)."""
        return len(self._instants)

    @property
    def bucketCount(self) -> int:
        return len(self._buckets)

    def schedule(self, item: Hashable, when: float) -> None:
        """(Re)schedule ``item`` at ``when``; any earlier schedule of it is void."""
        due = self._due
        if due.get(item) == when:
            # Already there, and that entry is live.  A second entry for the same instant would look live too,
            # so compaction could never drop it: the same item rescheduled in place must not add entries.
            return
        due[item] = when
        bucket = self._buckets.get(when)
        if bucket is None:
            self._buckets[when] = [item]
            heapq.heappush(self._instants, when)
        else:
            bucket.append(item)
        self._entries += 1
        if self._entries > 2 * len(due) + 1024:
            self._compact()

    def unschedule(self, item: Hashable) -> None:
        self._due.pop(item, None)

    def nextTime(self) -> Optional[float]:
        """The earliest live instant, or ``None`` when nothing is scheduled."""
        instants, buckets, due = self._instants, self._buckets, self._due
        while instants:
            when = instants[0]
            bucket = buckets[when]
            for index, item in enumerate(bucket):
                if due.get(item) == when:
                    if index:
                        del bucket[:index]  # stale entries in front: each is dropped once, not scanned again
                        self._entries -= index
                    return when
            heapq.heappop(instants)
            del buckets[when]
            self._entries -= len(bucket)
        return None

    def popDue(self, now: float) -> Iterator[Any]:
        """
        Yield, earliest first (and in scheduling order within one instant), every object due at or before
        ``now``, unscheduling each before it is yielded (so the consumer may schedule it again, even at or before
        ``now``: it will come out in this same pass).
        """
        instants, buckets, due = self._instants, self._buckets, self._due
        while instants and instants[0] <= now:
            when = heapq.heappop(instants)
            bucket = buckets.pop(when)
            self._entries -= len(bucket)
            taken = 0
            try:
                for item in bucket:
                    taken += 1
                    if due.get(item) == when:
                        del due[item]
                        yield item
            finally:
                # A consumer that stops early (an exception through its loop) leaves the rest scheduled.
                for item in bucket[taken:]:
                    if due.get(item) == when:
                        del due[item]
                        self.schedule(item, when)

    def clear(self) -> None:
        self._instants.clear()
        self._buckets.clear()
        self._due.clear()
        self._entries = 0

    def _compact(self) -> None:
        # In place: a popDue pass in progress (its consumer scheduling) keeps reading these same objects.
        due = self._due
        live: Dict[float, List[Any]] = {}
        for when, bucket in self._buckets.items():
            kept = [item for item in bucket if due.get(item) == when]
            if kept:
                live[when] = kept
        self._buckets.clear()
        self._buckets.update(live)
        self._instants[:] = live
        heapq.heapify(self._instants)
        self._entries = sum(len(bucket) for bucket in live.values())
