"""
Many timers, one wake-up: a lazily-invalidated heap of instants, each with the bucket of objects due then
(sans-IO).

A carrier-scale controller keeps tens of thousands of flows alive; a ``LoopingCall`` or ``IDelayedCall`` per flow
costs a reactor heap entry, a closure and a reschedule per keepalive.  Instead every sans-IO object that needs
waking (a transaction, a flow) is a :class:`Timed` scheduled at an instant in one :class:`TimerHeap`, which
orders them.  A :class:`Timed` carries one slot, ``timerDue``, that belongs to the heap (an intrusive timer node):
only :class:`TimerHeap` reads or writes it.  Keeping the instants in a dict of the heap's own instead was tried
and measured: on a carrier-scale farm the extra hash-table look-ups (scattered over a table as large as the
number of flows) cost a keepalive 5-10 % of its CPU.  The Twisted shell keeps exactly one ``IDelayedCall`` in step with :meth:`TimerHeap.nextTime` (the aioquic
pattern), so timers fire at their exact instants rather than on a tick grid.

Objects due at the same instant share one bucket, and the heap holds each distinct instant once.  That is the
common case at scale: keepalive instants sit on a 10 ms grid (:data:`twisted_sipnat.core.keepalive.SLOT`) and every
transaction started in one wake-up has the same retransmission instants, so scheduling is a dict lookup and a
list append, and the heap stays as small as the number of distinct instants (a few thousand) instead of the
number of timers (hundreds of thousands), with ``heappush``/``heappop`` cost to match.

Rescheduling adds a new entry and leaves the old one in place; an entry is live only while its instant equals
the object's current instant (``timerDue``, :meth:`TimerHeap.dueAt`).  Stale entries are dropped when their bucket surfaces, and everything is
compacted when they outnumber the live ones, so memory stays proportional to the number of live timers.
"""

from __future__ import annotations

import heapq
from typing import Any, Dict, Iterator, List, Optional


class Timed:
    """
    What a :class:`TimerHeap` schedules.  ``timerDue`` is the heap's: the instant the object is scheduled at
    (``None``: not scheduled); subclasses call ``Timed.__init__`` and never touch it otherwise.
    """

    __slots__ = ("timerDue",)

    def __init__(self) -> None:
        self.timerDue: Optional[float] = None


class TimerHeap:
    """:class:`Timed` objects scheduled at instants; see the module docstring."""

    __slots__ = ("_instants", "_buckets", "_live", "_entries")

    def __init__(self) -> None:
        #: A heap of the distinct instants that have a bucket.
        self._instants: List[float] = []
        #: Instant -> the objects scheduled at it, in the order they were scheduled (some may be stale).
        self._buckets: Dict[float, List[Any]] = {}
        self._live = 0
        self._entries = 0

    def __len__(self) -> int:
        """The number of scheduled objects."""
        return self._live

    @staticmethod
    def dueAt(item: Any) -> Optional[float]:
        """The instant ``item`` is scheduled at, or ``None``."""
        due: Optional[float] = item.timerDue
        return due

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

    def schedule(self, item: Any, when: float) -> None:
        """(Re)schedule ``item`` at ``when``; any earlier schedule of it is void."""
        due = item.timerDue
        if due == when:
            # Already there, and that entry is live.  A second entry for the same instant would look live too,
            # so compaction could never drop it: the same item rescheduled in place must not add entries.
            return
        if due is None:
            self._live += 1
        item.timerDue = when
        bucket = self._buckets.get(when)
        if bucket is None:
            self._buckets[when] = [item]
            heapq.heappush(self._instants, when)
        else:
            bucket.append(item)
        self._entries += 1
        if self._entries > 2 * self._live + 1024:
            self._compact()

    def unschedule(self, item: Any) -> None:
        if item.timerDue is not None:
            item.timerDue = None
            self._live -= 1

    def nextTime(self) -> Optional[float]:
        """The earliest live instant, or ``None`` when nothing is scheduled."""
        instants, buckets = self._instants, self._buckets
        while instants:
            when = instants[0]
            bucket = buckets[when]
            for index, item in enumerate(bucket):
                if item.timerDue == when:
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
        instants, buckets = self._instants, self._buckets
        while instants and instants[0] <= now:
            when = heapq.heappop(instants)
            bucket = buckets.pop(when)
            self._entries -= len(bucket)
            taken = 0
            try:
                for item in bucket:
                    taken += 1
                    if item.timerDue == when:
                        item.timerDue = None
                        self._live -= 1
                        yield item
            finally:
                # A consumer that stops early (an exception through its loop) leaves the rest scheduled.
                for item in bucket[taken:]:
                    if item.timerDue == when:
                        item.timerDue = None
                        self._live -= 1
                        self.schedule(item, when)

    def clear(self) -> None:
        for bucket in self._buckets.values():
            for item in bucket:
                item.timerDue = None
        self._instants.clear()
        self._buckets.clear()
        self._live = 0
        self._entries = 0

    def _compact(self) -> None:
        # In place: a popDue pass in progress (its consumer scheduling) keeps reading these same objects.
        live: Dict[float, List[Any]] = {}
        for when, bucket in self._buckets.items():
            kept = [item for item in bucket if item.timerDue == when]
            if kept:
                live[when] = kept
        self._buckets.clear()
        self._buckets.update(live)
        self._instants[:] = live
        heapq.heapify(self._instants)
        self._entries = sum(len(bucket) for bucket in live.values())
