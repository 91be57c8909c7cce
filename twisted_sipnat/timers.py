"""
Many timers, one wake-up: a lazily-invalidated binary heap (sans-IO).

A carrier-scale controller keeps tens of thousands of flows alive; a ``LoopingCall`` or ``IDelayedCall`` per flow
costs a reactor heap entry, a closure and a reschedule per keepalive.  Instead every sans-IO object that needs
waking (a transaction, a flow) is a :class:`Timed` with a ``dueAt`` instant, and one :class:`TimerHeap` orders
them.  The Twisted shell keeps exactly one ``IDelayedCall`` in step with :meth:`TimerHeap.nextTime` (the aioquic
pattern), so timers fire at their exact instants rather than on a tick grid.

Rescheduling pushes a new entry and leaves the old one in place; an entry is live only while its ``when``
equals the object's current ``dueAt``.  Stale entries are dropped when they surface, and the heap is compacted
when they outnumber the live ones, so memory stays proportional to the number of live timers.
"""

from __future__ import annotations

import heapq
from itertools import count
from typing import Any, Iterator, List, Optional, Protocol, Tuple


class Timed(Protocol):
    """Anything with a ``dueAt`` slot: ``None`` means "not scheduled"."""

    dueAt: Optional[float]


class TimerHeap:
    __slots__ = ("_heap", "_sequence", "_live")

    def __init__(self) -> None:
        self._heap: List[Tuple[float, int, Any]] = []
        self._sequence = count()
        self._live = 0

    def __len__(self) -> int:
        """The number of scheduled objects."""
        return self._live

    def schedule(self, item: Timed, when: float) -> None:
        """(Re)schedule ``item`` at ``when``; any earlier schedule of it is void."""
        if item.dueAt is None:
            self._live += 1
        item.dueAt = when
        heapq.heappush(self._heap, (when, next(self._sequence), item))
        if len(self._heap) > 2 * self._live + 1024:
            self._compact()

    def unschedule(self, item: Timed) -> None:
        if item.dueAt is not None:
            item.dueAt = None
            self._live -= 1

    def nextTime(self) -> Optional[float]:
        """The earliest live instant, or ``None`` when nothing is scheduled."""
        heap = self._heap
        while heap:
            when, _, item = heap[0]
            if item.dueAt == when:
                return when
            heapq.heappop(heap)
        return None

    def popDue(self, now: float) -> Iterator[Any]:
        """
        Yield, earliest first, every object due at or before ``now``, unscheduling each before it is yielded
        (so the consumer may schedule it again, even at or before ``now``: it will come out in this same pass).
        """
        heap = self._heap
        while heap:
            when, _, item = heap[0]
            if when > now:
                return
            heapq.heappop(heap)
            if item.dueAt != when:
                continue
            item.dueAt = None
            self._live -= 1
            yield item

    def clear(self) -> None:
        for _, _, item in self._heap:
            item.dueAt = None
        self._heap.clear()
        self._live = 0

    def _compact(self) -> None:
        self._heap = [entry for entry in self._heap if entry[2].dueAt == entry[0]]
        heapq.heapify(self._heap)
