"""
The sans-IO timing core on its own: transaction schedules (RFC 8489 §6.2), RTO memory, the outstanding limiter,
the timer heap against a model, and the RFC 5626 flow keeper.  No reactor, no Clock: ``now`` is a number.
"""

from __future__ import annotations

import random
from typing import Dict, List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twisted_sipnat.core import keepalive as ka
from twisted_sipnat.core.timers import Timed, TimerHeap
from twisted_sipnat.core.transaction import (
    SEND,
    TIMEOUT,
    ClientTransaction,
    OutstandingLimiter,
    RTOEstimator,
    tcpSchedule,
    udpSchedule,
)


def timeline(txn: ClientTransaction, start: float = 100.0) -> List[tuple]:
    txn.start(start)
    events = []
    while txn.nextTime is not None:
        when = txn.nextTime
        events.append((round(when - start, 6), txn.fire(when)))
    return events


def test_udp_schedule_is_rfc_8489() -> None:
    assert udpSchedule(0.5) == ((0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5), 39.5)
    offsets, timeout = udpSchedule(0.1, rc=3, rm=4)
    assert offsets == pytest.approx((0.0, 0.1, 0.3)) and timeout == pytest.approx(0.7)
    assert tcpSchedule() == ((0.0,), 39.5)
    with pytest.raises(ValueError):
        udpSchedule(0)


def test_udp_transaction_timeline() -> None:
    events = timeline(ClientTransaction(b"t" * 12, b"r", ("192.0.2.1", 3478)))
    assert events == [(0.5, SEND), (1.5, SEND), (3.5, SEND), (7.5, SEND), (15.5, SEND), (31.5, SEND), (39.5, TIMEOUT)]


def test_tcp_transaction_sends_once_and_fails_at_ti() -> None:
    assert timeline(ClientTransaction(b"t" * 12, b"r", ("192.0.2.1", 3478), reliable=True)) == [(39.5, TIMEOUT)]


def test_a_learned_rto_spaces_sends_but_keeps_the_configured_deadline() -> None:
    # Issue 12: was [(1.2, SEND), (3.6, SEND), (8.4, SEND), (18.0, SEND), (37.2, SEND), (39.5, TIMEOUT)], six
    # requests; now RFC 8489's seven, the first retransmission after the learned RTO, the last at 31.5 s.
    events = timeline(ClientTransaction(b"t" * 12, b"r", ("192.0.2.1", 3478), rto=1.2, budgetRTO=0.5))
    assert [action for _, action in events] == [SEND] * 6 + [TIMEOUT]
    instants = [when for when, _ in events]
    assert instants[0] == 1.2 and instants[-2] == 31.5 and instants[-1] == 39.5
    gaps = [b - a for a, b in zip([0.0] + instants[:-2], instants[:-1], strict=True)]
    assert all(later >= earlier - 1e-9 for earlier, later in zip(gaps, gaps[1:], strict=False))
    # With the configured RTO the schedule is RFC 8489's exactly; a very slow path spaces them evenly.
    assert timeline(ClientTransaction(b"t" * 12, b"r", ("192.0.2.1", 3478), rto=0.5, budgetRTO=0.5)) == \
        [(0.5, SEND), (1.5, SEND), (3.5, SEND), (7.5, SEND), (15.5, SEND), (31.5, SEND), (39.5, TIMEOUT)]
    slow = [when for when, _ in timeline(ClientTransaction(b"t" * 12, b"r", ("192.0.2.1", 3478), rto=9.0,
                                                           budgetRTO=0.5))]
    assert slow == pytest.approx([5.25, 10.5, 15.75, 21.0, 26.25, 31.5, 39.5])


def test_fire_before_time_does_nothing_and_nothing_before_start() -> None:
    txn = ClientTransaction(b"t" * 12, b"r", ("192.0.2.1", 3478))
    assert txn.nextTime is None and txn.fire(1000.0) is None
    txn.start(10.0)
    assert txn.fire(10.4) is None and txn.nextTime == 10.5


def test_answer_gives_a_sample_only_without_retransmission() -> None:
    txn = ClientTransaction(b"t" * 12, b"r", ("192.0.2.1", 3478))
    txn.start(0.0)
    assert txn.answered(0.3) == pytest.approx(0.3)
    assert txn.done and txn.nextTime is None
    again = ClientTransaction(b"u" * 12, b"r", ("192.0.2.1", 3478))
    again.start(0.0)
    assert again.fire(0.5) == SEND
    assert again.answered(0.7) is None  # Karn: ambiguous after a retransmission


def test_rto_estimator_rfc_6298_floor_expiry_and_bound() -> None:
    rto = RTOEstimator(initial=0.5, maxEntries=2)
    assert rto.rtoFor("a", 0.0) == 0.5
    rto.sample("a", 0.4, 0.0)  # SRTT 0.4, RTTVAR 0.2 -> 1.2
    assert rto.rtoFor("a", 1.0) == pytest.approx(1.2)
    rto.sample("a", 0.4, 1.0)  # RTTVAR 0.75*0.2 + 0.25*0 = 0.15 -> 0.4 + 0.6 = 1.0
    assert rto.rtoFor("a", 2.0) == pytest.approx(1.0)
    rto.sample("b", 0.001, 0.0)
    assert rto.rtoFor("b", 1.0) == 0.5  # never below the configured RTO
    assert rto.rtoFor("a", 1.0 + 601) == 0.5  # stale after ten minutes
    rto.sample("c", 0.3, 0.0)
    rto.sample("d", 0.3, 0.0)
    assert len(rto) <= 2
    rto.forget("d")
    assert rto.rtoFor("d", 0.0) == 0.5


def test_outstanding_limiter_fifo() -> None:
    limiter: OutstandingLimiter[str] = OutstandingLimiter(2)
    assert limiter.acquire("k", "a") and limiter.acquire("k", "b")
    assert not limiter.acquire("k", "c") and not limiter.acquire("k", "d")
    assert limiter.acquire("other", "x")
    assert limiter.withdraw("k", "d") and not limiter.withdraw("k", "d")
    assert limiter.release("k") == "c"
    assert limiter.outstanding("k") == 2 and limiter.waiting("k") == 0
    assert limiter.release("k") is None and limiter.release("k") is None
    assert limiter.outstanding("k") == 0


class Item(Timed):
    def __init__(self, name: int) -> None:
        super().__init__()
        self.name = name


@given(st.lists(st.tuples(st.sampled_from(["schedule", "unschedule", "pop"]), st.integers(0, 9),
                          st.integers(0, 50)), max_size=120))
@settings(max_examples=300, deadline=None)
def test_timer_heap_matches_a_model(operations: List[tuple]) -> None:
    heap = TimerHeap()
    items = [Item(i) for i in range(10)]
    model: Dict[int, float] = {}
    for op, index, value in operations:
        item = items[index]
        if op == "schedule":
            heap.schedule(item, float(value))
            model[index] = float(value)
        elif op == "unschedule":
            heap.unschedule(item)
            model.pop(index, None)
        else:
            due = sorted((when, i) for i, when in model.items() if when <= value)
            popped = []
            for it in heap.popDue(float(value)):
                popped.append(it.name)
            assert sorted(popped) == sorted(i for _, i in due)
            assert [model[i] for i in popped] == sorted(model[i] for i in popped)  # earliest first
            for i in popped:
                del model[i]
        assert len(heap) == len(model)
        assert heap.nextTime() == (min(model.values()) if model else None)


def test_timer_heap_keeps_what_a_consumer_stopping_early_did_not_take() -> None:
    heap = TimerHeap()
    items = [Item(i) for i in range(5)]
    for item in items:
        heap.schedule(item, 1.0)  # one bucket
    heap.schedule(items[4], 2.0)  # its entry at 1.0 is now stale
    taken = []
    for item in heap.popDue(1.0):
        taken.append(item.name)
        if len(taken) == 2:
            break
    assert taken == [0, 1]
    assert len(heap) == 3 and heap.nextTime() == 1.0
    assert [item.name for item in heap.popDue(5.0)] == [2, 3, 4]
    assert len(heap) == 0 and heap.nextTime() is None


def test_timer_heap_pops_one_instant_in_scheduling_order_and_takes_reschedules_in_the_same_pass() -> None:
    heap = TimerHeap()
    items = [Item(i) for i in range(4)]
    for item in reversed(items):
        heap.schedule(item, 3.0)
    seen = []
    for item in heap.popDue(3.0):
        seen.append(item.name)
        if item.name == 3:
            heap.schedule(item, 3.0)  # again at the instant being popped: comes out in this pass, once more
            item.name = 30
    assert seen == [3, 2, 1, 0, 30]
    assert len(heap) == 0


class CountingCompactions(TimerHeap):
    compactions = 0

    def _compact(self) -> None:
        self.compactions += 1
        super()._compact()


def test_timer_heap_compacting_during_a_pass_loses_and_repeats_nothing() -> None:
    heap = CountingCompactions()
    items = [Item(i) for i in range(3000)]
    for item in items:
        heap.schedule(item, float(item.name % 7))  # due at 0..6
    popped: List[int] = []
    for item in heap.popDue(3.0):
        if item.name < 2000:
            for k in range(6):  # stale entries pile up until the heap compacts, in the middle of this pass
                heap.schedule(item, 100.0 + item.name + k / 10)
        elif item.name % 7 == 3 and item.name not in popped:
            heap.schedule(item, 2.5)  # at or before now: comes out again in this same pass, after compactions
        popped.append(item.name)
    due = [i for i in range(3000) if i % 7 <= 3]
    again = [i for i in range(2000, 3000) if i % 7 == 3]
    assert heap.compactions >= 1
    assert sorted(popped) == sorted(due + again)
    assert heap.entryCount < 2 * len(heap) + 1024 + 2
    assert sorted(item.name for item in heap.popDue(10_000.0)) == sorted(
        [i for i in range(2000)] + [i for i in range(2000, 3000) if i % 7 > 3])


def test_timer_heap_rescheduling_at_the_same_instant_adds_no_entry() -> None:
    heap = CountingCompactions()
    item = Item(0)
    for _ in range(5000):
        heap.schedule(item, 7.0)
    assert heap.entryCount == 1 and heap.compactions == 0
    assert [i.name for i in heap.popDue(7.0)] == [0] and heap.nextTime() is None


def test_timer_heap_compacts_stale_entries() -> None:
    heap = TimerHeap()
    item = Item(0)
    for t in range(5000):
        heap.schedule(item, float(t))
    assert len(heap) == 1 and heap.entryCount < 2 * 1 + 1024 + 2 and heap.instantCount == heap.bucketCount < 1024 + 4


@given(st.floats(0.5, 3600), st.integers(0, 2**32))
@settings(max_examples=200, deadline=None)
def test_keeper_intervals_are_80_to_100_percent(base: float, seed: int) -> None:
    keeper = ka.FlowKeeper(ka.STUN, base, 0.0, random.Random(seed))
    previous = 0.0
    for _ in range(20):
        due = keeper.nextTime
        assert 0.8 * base - 1e-9 <= due - previous <= base + 1e-9
        assert keeper.fire(due) == ka.KEEPALIVE
        previous = due


def test_keeper_skips_a_stun_keepalive_while_one_is_in_flight() -> None:
    keeper = ka.FlowKeeper(ka.STUN, 10, 0.0, random.Random(1))
    assert keeper.fire(keeper.nextTime) == ka.KEEPALIVE
    keeper.stunInFlight = True
    assert keeper.fire(keeper.nextTime) is None


def test_keeper_pong_deadline() -> None:
    keeper = ka.FlowKeeper(ka.PING, 120, 0.0, random.Random(1), pongTimeout=10)
    assert keeper.pongReceived() is False  # nothing awaited
    keeper.pingWritten(100.0)
    keeper.pingWritten(105.0)  # the earliest deadline stands
    assert keeper.pongDeadline == 110.0
    keeper.nextKeepaliveAt = 200.0
    assert keeper.nextTime == 110.0  # the earlier of the two instants
    assert keeper.fire(109.9) is None
    assert keeper.fire(110.0) == ka.PONG_TIMEOUT
    keeper.pingWritten(200.0)
    assert keeper.pongReceived() is True and not keeper.awaitingPong


def test_keeper_judges_the_mapped_address() -> None:
    keeper = ka.FlowKeeper(ka.STUN, 25, 0.0, random.Random(1))
    assert keeper.judgeMappedAddress(("203.0.113.1", 1)) is None  # the first answer is the baseline
    assert keeper.judgeMappedAddress(("203.0.113.1", 1)) is None
    assert keeper.judgeMappedAddress(("203.0.113.1", 2)) == (("203.0.113.1", 1), ("203.0.113.1", 2))


def test_keeper_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        ka.FlowKeeper("smoke", 25, 0.0, random.Random(1))
    with pytest.raises(ValueError):
        ka.FlowKeeper(ka.STUN, 0, 0.0, random.Random(1))


def test_transaction_ids_are_12_bytes_distinct_across_blocks() -> None:
    from twisted_sipnat.core.transaction import TransactionIds

    ids = TransactionIds()
    drawn = [ids.next() for _ in range(3 * 340 + 7)]  # three block refills and then some
    assert all(type(i) is bytes and len(i) == 12 for i in drawn)
    assert len(set(drawn)) == len(drawn)
    assert len(set(i[0] for i in drawn)) > 200  # not a counter: the bytes vary
