"""
The sans-IO connection table (``core.connections``): bounds, the eviction order, the buffered-bytes total, the
idle and first-message timeouts, and (hypothesis) that no sequence of events takes it over a bound.
"""

from __future__ import annotations

from typing import Dict, List, Set

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twisted_sipnat.core.connections import (
    DEFAULT_IDLE_TIMEOUT,
    Closure,
    ConnectionLimits,
    ConnectionTable,
    defaultIdleTimeout,
)
from twisted_sipnat.errors import InvalidSettingsError


def table(**limits: float) -> ConnectionTable[int]:
    return ConnectionTable(ConnectionLimits(**limits))  # type: ignore[arg-type]


def test_admits_up_to_the_cap_then_evicts_the_oldest_incomplete() -> None:
    t = table(maxConnections=3)
    for key in range(3):
        assert t.admit(key, f"10.0.0.{key}", now=float(key)).admitted
    t.completed(0, now=3.0)  # a real client: its message was framed
    answer = t.admit(3, "10.0.0.9", now=4.0)
    assert answer.admitted and answer.close == (Closure(1, "evicted"),)
    assert 1 not in t and len(t) == 3
    assert t.refused["evicted"] == 1


def test_refuses_only_when_every_connection_completed_a_message() -> None:
    t = table(maxConnections=2)
    for key in range(2):
        t.admit(key, "10.0.0.1", now=0.0)
        t.completed(key, now=1.0)
    answer = t.admit(2, "10.0.0.2", now=2.0)
    assert not answer.admitted and answer.reason == "max_connections" and answer.close == ()
    assert 2 not in t and len(t) == 2 and t.refused["max_connections"] == 1


def test_per_source_cap_evicts_that_sources_oldest_incomplete_first() -> None:
    t = table(maxConnections=10, maxConnectionsPerSource=2)
    t.admit(1, "192.0.2.1", now=0.0)
    t.admit(2, "198.51.100.7", now=0.5)  # another source: never touched by 192.0.2.1's cap
    t.admit(3, "192.0.2.1", now=1.0)
    answer = t.admit(4, "192.0.2.1", now=2.0)
    assert answer.admitted and answer.close == (Closure(1, "evicted"),)
    assert t.fromSource("192.0.2.1") == 2 and 2 in t
    t.completed(3, now=3.0)
    t.completed(4, now=3.0)
    answer = t.admit(5, "192.0.2.1", now=4.0)
    assert not answer.admitted and answer.reason == "max_per_source"
    assert t.refused["max_per_source"] == 1


def test_total_buffered_bytes_closes_the_largest_holder() -> None:
    t = table(maxBufferedBytes=100)
    for key in range(3):
        t.admit(key, "10.0.0.1", now=0.0)
    assert t.buffered(0, 40) == []
    assert t.buffered(1, 50) == []
    assert t.bufferedBytes == 90
    assert t.buffered(2, 30) == [Closure(1, "buffer_limit")]
    assert t.bufferedBytes == 70 and 1 not in t
    assert t.buffered(0, 0) == [] and t.bufferedBytes == 30
    t.remove(2)
    assert t.bufferedBytes == 0


def test_buffer_ties_go_to_the_connection_that_never_completed_a_message() -> None:
    t = table(maxBufferedBytes=100)
    t.admit(0, "10.0.0.1", now=0.0)
    t.admit(1, "10.0.0.2", now=0.0)
    t.completed(0, now=0.5)
    t.buffered(0, 60)
    assert t.buffered(1, 60) == [Closure(1, "buffer_limit")]


def test_first_message_timeout_then_idle_timeout() -> None:
    t = table(idleTimeout=100.0, handshakeTimeout=10.0)
    t.admit(1, "10.0.0.1", now=0.0)
    t.admit(2, "10.0.0.1", now=0.0)
    t.completed(2, now=5.0)
    assert t.nextWakeup() == 10.0
    assert t.expire(9.9) == []
    assert t.expire(10.0) == [Closure(1, "handshake_timeout")]
    assert t.refused["handshake_timeout"] == 1
    # 2 completed at 5: idle until 105; a keepalive at 90 moves that to 190
    assert t.expire(50.0) == []
    t.active(2, now=90.0)
    wake = t.nextWakeup()
    assert wake is not None and wake <= 190.0
    assert t.expire(189.0) == []
    assert t.expire(190.0) == [Closure(2, "idle_timeout")]
    assert t.nextWakeup() is None and len(t) == 0


def test_partial_bytes_are_not_activity() -> None:
    """A slowloris that trickles bytes without completing anything still hits its deadline."""
    t = table(idleTimeout=100.0, handshakeTimeout=10.0)
    t.admit(1, "10.0.0.1", now=0.0)
    for second in range(1, 10):
        t.buffered(1, second * 10)
    assert t.expire(10.0) == [Closure(1, "handshake_timeout")]
    assert t.bufferedBytes == 0


def test_removed_connections_leave_no_wakeup_and_the_heap_stays_bounded() -> None:
    t = table(maxConnections=10)
    for key in range(10_000):
        t.admit(key, "10.0.0.1", now=float(key))
        t.remove(key)
    assert len(t) == 0 and t.nextWakeup() is None
    assert len(t._heap) <= 64


def test_a_clock_stepped_back_keeps_the_timeouts() -> None:
    t = table(idleTimeout=100.0, handshakeTimeout=10.0)
    t.admit(1, "10.0.0.1", now=5000.0)
    t.completed(1, now=5001.0)  # idle until 5101
    t.admit(2, "10.0.0.1", now=1400.0)  # the wall clock went back an hour (and a bit)
    wake = t.nextWakeup()
    assert wake is not None and wake <= 1410.0
    assert t.expire(1410.0) == [Closure(2, "handshake_timeout")]
    assert t.expire(1500.0) == [Closure(1, "idle_timeout")]  # 100 s after its last message, not 3,700


def test_idle_timeout_default_follows_the_flow_timer() -> None:
    assert defaultIdleTimeout(30) == 70.0
    assert defaultIdleTimeout(None) == DEFAULT_IDLE_TIMEOUT


@pytest.mark.parametrize("field,value", [("maxConnections", 0), ("maxConnectionsPerSource", -1),
                                         ("maxBufferedBytes", 1.5), ("idleTimeout", 0),
                                         ("handshakeTimeout", float("inf"))])
def test_bad_limits_are_one_line_errors(field: str, value: float) -> None:
    with pytest.raises(InvalidSettingsError):
        ConnectionLimits(**{field: value})  # type: ignore[arg-type]


def test_admitting_a_key_twice_is_a_bug() -> None:
    t = table()
    t.admit(1, "10.0.0.1", now=0.0)
    with pytest.raises(ValueError):
        t.admit(1, "10.0.0.1", now=0.0)


events = st.lists(
    st.one_of(
        st.tuples(st.just("admit"), st.integers(0, 4)),  # source index
        st.tuples(st.just("complete"), st.integers(0, 40)),
        st.tuples(st.just("buffer"), st.integers(0, 40), st.integers(0, 300)),
        st.tuples(st.just("remove"), st.integers(0, 40)),
        st.tuples(st.just("tick"), st.floats(0, 30)),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(events=events, cap=st.integers(1, 8), perSource=st.integers(1, 8), budget=st.integers(1, 500))
def test_no_sequence_of_events_takes_the_table_over_a_bound(
    events: List[tuple], cap: int, perSource: int, budget: int  # type: ignore[type-arg]
) -> None:
    t: ConnectionTable[int] = ConnectionTable(
        ConnectionLimits(maxConnections=cap, maxConnectionsPerSource=perSource, maxBufferedBytes=budget,
                         idleTimeout=50.0, handshakeTimeout=10.0))
    now = 0.0
    nextKey = 0
    live: Dict[int, str] = {}
    completed: Set[int] = set()
    admitted: Dict[int, float] = {}
    active: Dict[int, float] = {}
    for event in events:
        kind = event[0]
        if kind == "admit":
            source = f"10.0.0.{event[1]}"
            sourceFull = sum(1 for s in live.values() if s == source) >= perSource
            answer = t.admit(nextKey, source, now)
            for n, closure in enumerate(answer.close):
                assert closure.reason == "evicted"
                assert closure.key not in completed, "a connection that completed a message was evicted"
                # the oldest incomplete one (keys grow with admission): of the full source first, then of all
                bySource = n == 0 and sourceFull
                pool = [k for k, s in live.items() if k not in completed and (s == source or not bySource)]
                assert closure.key == min(pool), "not the oldest incomplete connection"
                del live[closure.key]
            if answer.admitted:
                live[nextKey] = source
                admitted[nextKey] = active[nextKey] = now
            else:
                # refused only when no incomplete connection could make room
                pool = [k for k, s in live.items() if s == source] if answer.reason == "max_per_source" else list(live)
                assert all(k in completed for k in pool)
            nextKey += 1
        elif kind == "complete" and event[1] in live:
            t.completed(event[1], now)
            completed.add(event[1])
            active[event[1]] = now
        elif kind == "buffer" and event[1] in live:
            for closure in t.buffered(event[1], event[2]):
                assert closure.reason == "buffer_limit"
                del live[closure.key]
        elif kind == "remove" and event[1] in live:
            t.remove(event[1])
            del live[event[1]]
        elif kind == "tick":
            now += event[1]
            wake = t.nextWakeup()
            closures = t.expire(now)
            if closures:
                assert wake is not None and wake <= now, "a deadline passed before nextWakeup said"
            for closure in closures:
                assert closure.reason in ("idle_timeout", "handshake_timeout")
                del live[closure.key]
            for key in live:  # nothing past its deadline survives an expire
                assert active[key] + 50.0 > now
                assert key in completed or admitted[key] + 10.0 > now
        assert len(t) == len(live) <= cap
        assert all(t.fromSource(s) <= perSource for s in set(live.values()))
        assert 0 <= t.bufferedBytes <= budget
        assert set(k for k in range(nextKey) if k in t) == set(live)
