"""
One STUN client transaction, sans-IO (RFC 8489 §6.2).

Theory of operation
-------------------
A :class:`ClientTransaction` knows *when* its request must be (re)sent and when it has failed; it never touches a
socket or a clock.  The shell asks :attr:`ClientTransaction.nextTime` when to wake it, and at that instant calls
:meth:`ClientTransaction.fire` with ``now``: the answer is :data:`SEND` (write the request again, to
:attr:`~ClientTransaction.destination`) or :data:`TIMEOUT` (the transaction failed; ``nextTime`` is then
``None``).  A response is matched by :class:`~twisted_sipnat.core.transactions.TransactionTable` (transaction ID *and*
source) and reported with
:meth:`~ClientTransaction.answered`, which ends the transaction and yields a round-trip sample when one is valid.

The instants are data, not code (:func:`udpSchedule`): over UDP the request goes out at 0, RTO, 3 RTO, 7 RTO ...
(the RTO doubling each time, Rc = 7 sends) and the transaction fails Rm × RTO after the last send (Rm = 16).
When the RTO comes from the per-server memory (``budgetRTO`` is the configured one), it sets the first
retransmission while the number of requests (Rc = 7) and the failure instant stay the configured ones
(:func:`_budgetedSchedule`), so failure detection never stretches on a slow path and a lossy one still gets
seven tries.
With the default RTO of 500 ms that is 0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s and failure at 39.5 s.  Over TCP (or
TLS) there is one send and failure after Ti = 39.5 s (§6.2.2).  The clock for these instants starts when the
request is first actually written (:meth:`~ClientTransaction.start`), so a request the socket arbitration held
back does not lose its retransmission budget while it waits.

:class:`RTOEstimator` keeps the per-server RTO that §6.2.1 says a client should remember for ten minutes, fed by
round-trip samples per RFC 6298 with Karn's rule (no sample from a retransmitted request).

:class:`OutstandingLimiter` enforces §6's "no more than ten outstanding transactions to the same server": further
transactions wait their turn in FIFO order.
"""

from __future__ import annotations

import os
from collections import deque
from functools import lru_cache
from typing import Deque, Dict, Generic, Hashable, Optional, Tuple, TypeVar

from .timers import Timed

HostPort = Tuple[str, int]

#: :meth:`ClientTransaction.fire` result: write the request (again).
SEND = "send"
#: :meth:`ClientTransaction.fire` result: no answer within the budget; the transaction is over.
TIMEOUT = "timeout"

#: RFC 8489 §6.2.1 defaults.
DEFAULT_RTO = 0.5
DEFAULT_RC = 7
DEFAULT_RM = 16
#: RFC 8489 §6.2.2: reliable transports wait 39.5 s for the one request.
DEFAULT_TI = 39.5
#: RFC 8489 §6.2.1: a cached RTO is stale after ten minutes without a transaction to that server.
RTO_CACHE_LIFETIME = 600.0
#: RFC 8489 §6: absent other means, no more than ten outstanding transactions to one server.
MAX_OUTSTANDING_PER_SERVER = 10
#: An upper bound for a learned RTO (RFC 6298 §2.5 allows a maximum of at least 60 s).
MAX_RTO = 60.0


@lru_cache(maxsize=256)  # a few distinct RTOs serve every transaction: compute each schedule once
def udpSchedule(rto: float = DEFAULT_RTO, rc: int = DEFAULT_RC, rm: int = DEFAULT_RM) -> Tuple[Tuple[float, ...], float]:
    """
    The UDP send offsets and the failure offset for an initial ``rto`` (RFC 8489 §6.2.1).

    >>> udpSchedule(0.5)
    ((0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5), 39.5)
    """
    if rto <= 0 or rc < 1 or rm < 1:
        raise ValueError(f"bad retransmission parameters rto={rto} rc={rc} rm={rm}")
    offsets = tuple(float(((1 << k) - 1) * rto) for k in range(rc))
    return offsets, offsets[-1] + rm * rto


@lru_cache(maxsize=256)
def _budgetedSchedule(rto: float, rc: int, budgetRTO: float) -> Tuple[Tuple[float, ...], float]:
    """
    The schedule of a transaction whose RTO was learned (``rto``, RFC 8489 §6.2.1) while the configured one is
    ``budgetRTO``: still Rc requests, the last one at the instant the configured schedule sends its last, and
    the failure at the configured failure instant (39.5 s by default).

    RFC 8489 spaces the requests by doubling from the RTO; from an RTO above the configured one, doubling
    would push the later requests past the failure instant (a 2.6 s RTO sends at 0, 2.6, 7.8, 18.2 s and then
    the 39.5 s cut comes: four requests instead of seven, so a lossy slow path fails where seven tries would
    have got through).  Here the first retransmission waits the learned RTO (capped at an equal share of the
    time to the last request), and the following gaps grow by one common factor between 1 and 2 chosen so the
    last request goes out when the configured schedule's last does (31.5 s by default).  With the configured
    RTO that factor is 2: exactly :func:`udpSchedule`.
    """
    base, timeout = udpSchedule(budgetRTO, rc)
    if rto <= budgetRTO or rc < 3:
        return tuple(t for t in udpSchedule(rto, rc)[0] if t < timeout), timeout
    last = base[-1]
    gaps = rc - 1
    first = min(rto, last / gaps)

    def span(q: float) -> float:
        return first * gaps if q == 1.0 else first * (q**gaps - 1) / (q - 1)

    low, high = 1.0, 2.0
    if span(low) < last:
        for _ in range(60):
            middle = (low + high) / 2
            if span(middle) < last:
                low = middle
            else:
                high = middle
    factor = low
    offsets = [0.0]
    gap = first
    for _ in range(gaps - 1):
        offsets.append(offsets[-1] + gap)
        gap *= factor
    offsets.append(last)
    return tuple(offsets), timeout


def tcpSchedule(ti: float = DEFAULT_TI) -> Tuple[Tuple[float, ...], float]:
    """One send and failure after ``ti`` seconds (RFC 8489 §6.2.2)."""
    if ti <= 0:
        raise ValueError(f"bad transaction timeout ti={ti}")
    return (0.0,), float(ti)


class ClientTransaction(Timed):
    """
    The timers of one Binding request (RFC 8489 §6.2).

    ``destination`` may be changed while the transaction runs (``updateNextHop``): later retransmissions go to
    the new address and the shell accepts the answer from it.
    """

    __slots__ = (
        "transactionId",
        "request",
        "destination",
        "startedAt",
        "sends",
        "_offsets",
        "_timeoutOffset",
        "nextTime",
        "done",
    )

    def __init__(
        self,
        transactionId: bytes,
        request: bytes,
        destination: HostPort,
        *,
        rto: float = DEFAULT_RTO,
        reliable: bool = False,
        rc: int = DEFAULT_RC,
        budgetRTO: Optional[float] = None,
    ) -> None:
        Timed.__init__(self)
        self.transactionId = transactionId
        self.request = request
        self.destination = destination
        self.startedAt: Optional[float] = None
        self.sends = 0
        if reliable:
            self._offsets, self._timeoutOffset = tcpSchedule()
        elif budgetRTO is not None:
            # A learned RTO sets the first retransmission; the number of requests and the failure instant stay
            # the ones the configured RTO gives (7 requests, failure at 39.5 s by default).
            self._offsets, self._timeoutOffset = _budgetedSchedule(rto, rc, budgetRTO)
        else:
            self._offsets, self._timeoutOffset = udpSchedule(rto, rc)
        #: When :meth:`fire` must be called next; ``None`` before :meth:`start` and after the end.
        self.nextTime: Optional[float] = None
        self.done = False

    @property
    def started(self) -> bool:
        return self.startedAt is not None

    def start(self, now: float) -> None:
        """The request was written for the first time at ``now``: the schedule counts from here."""
        if self.done or self.startedAt is not None:
            return
        self.startedAt = now
        self.sends = 1
        self.nextTime = now + (self._offsets[1] if len(self._offsets) > 1 else self._timeoutOffset)

    def fire(self, now: float) -> Optional[str]:
        """
        Called at (or after) :attr:`nextTime`: :data:`SEND` for a retransmission, :data:`TIMEOUT` at the end of
        the budget, ``None`` if it is not yet time (or the transaction is over).
        """
        if self.done or self.startedAt is None or self.nextTime is None or now < self.nextTime:
            return None
        if self.sends < len(self._offsets):
            self.sends += 1
            self.nextTime = self.startedAt + (
                self._offsets[self.sends] if self.sends < len(self._offsets) else self._timeoutOffset
            )
            return SEND
        self.done = True
        self.nextTime = None
        return TIMEOUT

    def answered(self, now: float) -> Optional[float]:
        """
        A matching response arrived: the transaction ends.  Returns the round-trip sample, or ``None`` when the
        request was retransmitted (Karn's rule: the sample would be ambiguous).
        """
        if self.done:
            return None
        self.done = True
        self.nextTime = None
        if self.startedAt is None or self.sends != 1:
            return None
        return max(0.0, now - self.startedAt)

    def cancel(self) -> None:
        """End the transaction without an outcome (cancellation, ``freeResources``)."""
        self.done = True
        self.nextTime = None

    @property
    def timeoutAt(self) -> Optional[float]:
        """The instant the transaction fails if nothing answers (``None`` before it starts)."""
        return None if self.startedAt is None else self.startedAt + self._timeoutOffset


class _RTOEntry:
    __slots__ = ("srtt", "rttvar", "rto", "updatedAt")

    def __init__(self, srtt: float, rttvar: float, rto: float, updatedAt: float) -> None:
        self.srtt = srtt
        self.rttvar = rttvar
        self.rto = rto
        self.updatedAt = updatedAt


class RTOEstimator:
    """
    Per-server RTO memory (RFC 8489 §6.2.1, computed as RFC 6298 §2 with Karn's rule).

    The configured initial RTO is also the floor: RFC 8489 asks for an RTO "greater than 500 ms" on paths of
    unknown character, and keeping it as a floor keeps fast paths on the exact 39.5 s budget.  Entries expire
    ten minutes after the last transaction to that server, and the table is bounded (oldest evicted).
    """

    __slots__ = ("initial", "lifetime", "maxEntries", "_entries")

    def __init__(self, initial: float = DEFAULT_RTO, lifetime: float = RTO_CACHE_LIFETIME, maxEntries: int = 4096):
        self.initial = initial
        self.lifetime = lifetime
        self.maxEntries = maxEntries
        self._entries: Dict[Hashable, _RTOEntry] = {}

    def rtoFor(self, server: Hashable, now: float, initial: Optional[float] = None) -> float:
        """The RTO to start a transaction to ``server`` with."""
        floor = self.initial if initial is None else initial
        entry = self._entries.get(server)
        if entry is None:
            return floor
        if now - entry.updatedAt > self.lifetime:
            del self._entries[server]
            return floor
        return max(floor, entry.rto)

    def sample(self, server: Hashable, rtt: float, now: float) -> None:
        """Feed one round-trip time measured on a request that was sent once (RFC 6298 §2.2-2.3, K = 4)."""
        entry = self._entries.get(server)
        if entry is None or now - entry.updatedAt > self.lifetime:
            if entry is None and len(self._entries) >= self.maxEntries:
                del self._entries[next(iter(self._entries))]
            srtt, rttvar = rtt, rtt / 2
        else:
            rttvar = 0.75 * entry.rttvar + 0.25 * abs(entry.srtt - rtt)
            srtt = 0.875 * entry.srtt + 0.125 * rtt
        rto = min(MAX_RTO, srtt + 4 * rttvar)
        self._entries.pop(server, None)
        self._entries[server] = _RTOEntry(srtt, rttvar, rto, now)

    def forget(self, server: Hashable) -> None:
        """Drop what is remembered of ``server`` (its transaction timed out): the next one uses the initial RTO."""
        self._entries.pop(server, None)

    def __len__(self) -> int:
        return len(self._entries)


class TransactionIds:
    """
    Fresh 96-bit transaction IDs (RFC 8489 §5: uniformly and randomly chosen, SHOULD be cryptographically
    random), taken from ``os.urandom`` a block at a time: one ``getrandom`` call per 340 IDs instead of one each,
    which at carrier scale (thousands of keepalives a second) is a measurable part of starting a transaction.
    The bytes are the kernel's CSPRNG output either way; only the number of calls changes.
    """

    __slots__ = ("_block", "_offset")

    ID_LENGTH = 12
    BLOCK = 340 * ID_LENGTH

    def __init__(self) -> None:
        self._block = b""
        self._offset = 0

    def next(self) -> bytes:
        offset = self._offset
        if offset >= len(self._block):
            self._block = os.urandom(self.BLOCK)
            offset = 0
        self._offset = offset + self.ID_LENGTH
        return self._block[offset : offset + self.ID_LENGTH]


T = TypeVar("T")


class OutstandingLimiter(Generic[T]):
    """
    At most ``limit`` outstanding transactions per key (the key is ``(socket, server)``), the rest queued in
    FIFO order (RFC 8489 §6).  :meth:`acquire` says whether an item may start now; :meth:`release` frees a slot
    and returns the queued item that may start in its place.
    """

    __slots__ = ("limit", "_active", "_waiting")

    def __init__(self, limit: int = MAX_OUTSTANDING_PER_SERVER) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self._active: Dict[Hashable, int] = {}
        self._waiting: Dict[Hashable, Deque[T]] = {}

    def acquire(self, key: Hashable, item: T) -> bool:
        """``True``: start ``item`` now (a slot is taken).  ``False``: it was queued."""
        active = self._active.get(key, 0)
        if active < self.limit:
            self._active[key] = active + 1
            return True
        self._waiting.setdefault(key, deque()).append(item)
        return False

    def release(self, key: Hashable) -> Optional[T]:
        """An outstanding transaction on ``key`` ended; returns a queued item that now holds its slot."""
        queue = self._waiting.get(key)
        if queue:
            item = queue.popleft()
            if not queue:
                del self._waiting[key]
            return item
        active = self._active.get(key, 0) - 1
        if active > 0:
            self._active[key] = active
        else:
            self._active.pop(key, None)
        return None

    def withdraw(self, key: Hashable, item: T) -> bool:
        """Remove a still-queued ``item`` (cancelled before it started); ``True`` if it was queued."""
        queue = self._waiting.get(key)
        if not queue:
            return False
        try:
            queue.remove(item)
        except ValueError:
            return False
        if not queue:
            del self._waiting[key]
        return True

    def outstanding(self, key: Hashable) -> int:
        return self._active.get(key, 0)

    def waiting(self, key: Hashable) -> int:
        return len(self._waiting.get(key, ()))
