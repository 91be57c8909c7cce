"""
The engine's ``networkChanged`` and the ``"auto"`` keepalive method on their own: no reactor, ``now`` is a
number, the outbox and the events are read directly (RFC 5626 §4.4).
"""

from __future__ import annotations

import random
from typing import Any, List, Optional, Tuple

from hypothesis import given, settings
from hypothesis import strategies as st

from twisted_sipnat.core import events as ev
from twisted_sipnat.core import keepalive as ka
from twisted_sipnat.core import stun
from twisted_sipnat.core.engine import Engine
from twisted_sipnat.errors import FlowConnectionLost, STUNTimeout
from twisted_sipnat.settings import NATSettings

HOP = ("198.51.100.1", 5060)
HOP2 = ("198.51.100.2", 5060)
LOCAL = ("192.0.2.10", 5060)
MAPPED = ("203.0.113.1", 40000)


class Observer:
    pass


def answer(request: bytes, mapped: Optional[Tuple[str, int]] = MAPPED, error: Optional[Tuple[int, str]] = None) -> bytes:
    message = stun.decode(request)
    if error is not None:
        attributes: List[Any] = [stun.ErrorCode(*error)]
        return stun.Message(stun.BINDING, stun.ERROR, message.transactionId, attributes).encode()
    return stun.Message(stun.BINDING, stun.SUCCESS, message.transactionId,
                        [stun.XorMappedAddress(*mapped)] if mapped else []).encode()


def events(engine: Engine) -> List[Any]:
    found = []
    event = engine.nextEvent()
    while event is not None:
        found.append(event)
        event = engine.nextEvent()
    return found


def failures(engine: Engine) -> List[Any]:
    return [e for e in events(engine) if isinstance(e, (ev.FlowFailed, ev.MappingChanged))]


def start(method: str = "stun", stream: bool = False, key: str = "udp", local: Any = LOCAL,
          engine: Optional[Engine] = None, now: float = 0.0) -> Tuple[Engine, Any, Any]:
    engine = engine if engine is not None else Engine(rng=random.Random(14))
    record = engine.socket(key, stream)
    observer = Observer()
    engine.flows.refresh(record, observer, NATSettings(udpKeepaliveMethod=method), 25.0, HOP, None, now, False,
                         local=local)
    engine.datagramsToSend()
    events(engine)
    return engine, record, observer


def runUntil(engine: Engine, until: float, step: float = 0.01, reply: Any = None) -> List[Tuple[float, bytes]]:
    """Fire the timers up to ``until``; returns ``(instant, data)`` of everything sent (answered by ``reply``)."""
    sent = []
    now = engine.timers.nextTime()
    while now is not None and now <= until:
        engine.handleTimer(now)
        for key, _, data, addr in engine.datagramsToSend():
            sent.append((now, data))
            if reply is not None and stun.isSTUN(data):
                engine.receive(engine.sockets[key], reply(data), addr, now)
        now = engine.timers.nextTime()
    return sent


def test_a_stun_flow_sends_one_binding_at_once_and_its_schedule_restarts() -> None:
    engine, record, observer = start()
    runUntil(engine, 30, reply=answer)  # the baseline
    engine.networkChanged(30.0, {"udp": LOCAL})
    (key, writeKey, data, addr), = engine.datagramsToSend()
    assert key == "udp" and addr == HOP and stun.decode(data).messageClass == stun.REQUEST
    engine.receive(record, answer(data), HOP, 30.05)
    assert failures(engine) == []
    flow = engine.flows.flows[observer]
    assert 30 + 20 <= flow.nextKeepaliveAt <= 30 + 25


def test_a_changed_mapping_is_known_within_the_round_trip() -> None:
    engine, record, observer = start()
    runUntil(engine, 30, reply=answer)
    engine.networkChanged(30.0, {"udp": LOCAL})
    (_, _, data, _), = engine.datagramsToSend()
    engine.receive(record, answer(data, ("203.0.113.1", 40001)), HOP, 30.02)
    (changed,) = failures(engine)
    assert isinstance(changed, ev.MappingChanged) and changed.old == MAPPED and changed.new == ("203.0.113.1", 40001)
    assert observer not in engine.flows.flows


def test_a_transaction_in_flight_is_not_doubled_and_its_answer_is_judged() -> None:
    engine, record, observer = start()
    runUntil(engine, 25.5)  # the first keepalive is retransmitting
    assert engine.flows.flows[observer].stunInFlight
    before = engine.flows.flows[observer].nextKeepaliveAt
    engine.networkChanged(26.0, {"udp": LOCAL})
    assert engine.datagramsToSend() == []
    assert engine.flows.flows[observer].nextKeepaliveAt == before
    assert len(engine.table) == 1


def test_a_crlf_flow_sends_nothing_and_keeps_its_schedule() -> None:
    engine, record, observer = start("crlf")
    before = engine.flows.flows[observer].nextKeepaliveAt
    engine.networkChanged(5.0, {"udp": LOCAL})
    assert engine.datagramsToSend() == [] and failures(engine) == []
    assert engine.flows.flows[observer].nextKeepaliveAt == before


def test_a_stream_flow_pings_at_once_and_a_missing_pong_is_a_pong_timeout() -> None:
    engine, record, observer = start(stream=True, key="tcp")
    engine.networkChanged(3.0, {"tcp": LOCAL})
    (_, _, data, _), = engine.datagramsToSend()
    assert data == ka.PING_BYTES
    engine.handleTimer(12.99)
    assert failures(engine) == []
    engine.handleTimer(13.0)
    (failed,) = failures(engine)
    assert isinstance(failed, ev.FlowFailed) and type(failed.error).__name__ == "PongTimeout"


def test_a_moved_or_lost_local_address_is_flow_connection_lost_on_udp_too() -> None:
    engine, record, first = start()
    _, record2, second = start(key="other", engine=engine)
    _, _, third = start(key="unknown", engine=engine, local=None)
    engine.networkChanged(5.0, {"udp": ("192.0.2.11", 5060), "other": None, "unknown": ("192.0.2.99", 1)})
    lost = failures(engine)
    assert [f.observer for f in lost] == [first, second]
    assert all(isinstance(f.error, FlowConnectionLost) for f in lost)
    assert "192.0.2.11" in str(lost[0].error)
    assert list(engine.flows.flows) == [third]  # no address known at refresh: nothing to compare


def test_resolutions_in_flight_are_not_touched() -> None:
    engine = Engine(rng=random.Random(1))
    record = engine.socket("udp", False)
    engine.resolve(record, NATSettings(), [HOP], None, HOP, None, 0.0)
    engine.datagramsToSend()
    pending = dict(engine.table.pending)
    engine.networkChanged(0.2, {"udp": ("192.0.2.99", 1)})
    assert engine.datagramsToSend() == [] and dict(engine.table.pending) == pending
    assert not any(isinstance(e, ev.ResolutionFailed) for e in events(engine))


def test_auto_falls_back_to_crlf_when_a_silent_hop_lets_a_keepalive_time_out() -> None:
    engine, record, observer = start("auto")
    sent = runUntil(engine, 25 + 40)
    notes = events(engine)
    assert not any(isinstance(e, (ev.FlowFailed, ev.MappingChanged)) for e in notes)
    fallbacks = [e for e in notes if isinstance(e, ev.Note) and e.fields.get("sipnat_event") == "keepalive.fallback"]
    assert len(fallbacks) == 1 and engine.stats["keepalive.fallback"] == 1
    assert stun.isSTUN(sent[0][1]) and all(stun.isSTUN(data) or data == ka.PING_BYTES for _, data in sent)
    later = runUntil(engine, 300)
    assert later and all(data == ka.PING_BYTES for _, data in later)
    assert engine.flows.flows[observer].kind == ka.CRLF
    engine.networkChanged(300.0, {"udp": LOCAL})  # fell back: sends nothing out of schedule
    assert engine.datagramsToSend() == []
    assert [e for e in events(engine) if isinstance(e, ev.Note) and
            e.fields.get("sipnat_event") == "keepalive.fallback"] == []  # logged once


def test_auto_after_an_answer_a_timeout_is_stun_timeout() -> None:
    engine, record, observer = start("auto")
    runUntil(engine, 30, reply=answer)
    runUntil(engine, 200)
    (failed,) = failures(engine)
    assert isinstance(failed, ev.FlowFailed) and isinstance(failed.error, STUNTimeout)


def test_auto_an_error_response_counts_as_an_answer() -> None:
    engine, record, observer = start("auto")
    runUntil(engine, 30, reply=lambda data: answer(data, error=(400, "Bad Request")))
    runUntil(engine, 200)
    (failed,) = failures(engine)
    assert isinstance(failed.error, STUNTimeout)


def test_auto_a_new_next_hop_has_not_answered_yet() -> None:
    engine, record, observer = start("auto")
    runUntil(engine, 30, reply=answer)
    engine.flows.move(observer, HOP2, named=False)
    runUntil(engine, 200)
    assert failures(engine) == [] and engine.flows.flows[observer].kind == ka.CRLF


def test_auto_a_baseline_from_the_next_hops_resolution_counts_as_an_answer() -> None:
    engine = Engine(rng=random.Random(3))
    record = engine.socket("udp", False)
    observer = Observer()
    resolution = engine.resolve(record, NATSettings(), [HOP], observer, HOP, None, 0.0)
    (_, _, data, _), = engine.datagramsToSend()
    engine.receive(record, answer(data), HOP, 0.1)
    assert resolution.done
    engine.flows.refresh(record, observer, NATSettings(udpKeepaliveMethod="auto"), 25.0, HOP, None, 1.0, False)
    runUntil(engine, 200)
    assert any(isinstance(e, ev.FlowFailed) and isinstance(e.error, STUNTimeout) for e in events(engine))


@settings(max_examples=60, deadline=None)
@given(kinds=st.lists(st.sampled_from(["stun", "crlf", "auto", "tcp"]), min_size=1, max_size=8),
       at=st.floats(min_value=0.0, max_value=80.0), answered=st.booleans())
def test_network_changed_sends_at_most_one_keepalive_per_flow_and_only_where_an_answer_is_judged(
        kinds: List[str], at: float, answered: bool) -> None:
    engine = Engine(rng=random.Random(7))
    for i, kind in enumerate(kinds):
        stream = kind == "tcp"
        start("stun" if stream else kind, stream=stream, key=f"s{i}", engine=engine)
    runUntil(engine, at, reply=answer if answered else None)
    events(engine)
    flows = {flow.sock.key: flow for flow in engine.flows.flows.values()}
    expect = {key for key, flow in flows.items()
              if flow.kind == ka.PING or (flow.kind == ka.STUN and not flow.stunInFlight)}
    schedules = {key: flow.nextKeepaliveAt for key, flow in flows.items()}
    engine.networkChanged(at, {key: LOCAL for key in flows})
    sent = [key for key, _, _, _ in engine.datagramsToSend()]
    assert sorted(sent) == sorted(expect)
    for key, flow in flows.items():
        if key in expect:
            assert at + 25 * ka.JITTER_LOW - 0.01 <= flow.nextKeepaliveAt <= at + 25 + 0.01
        else:
            assert flow.nextKeepaliveAt == schedules[key]
    assert failures(engine) == []


def test_stun_on_a_hop_that_never_answered_is_still_a_stun_timeout() -> None:
    """``"stun"`` keeps its meaning: no fallback, whatever the hop did before."""
    engine, record, observer = start("stun")
    sent = runUntil(engine, 200)
    (failed,) = failures(engine)
    assert isinstance(failed, ev.FlowFailed) and isinstance(failed.error, STUNTimeout)
    assert all(stun.isSTUN(data) for _, data in sent) and engine.stats["keepalive.fallback"] == 0


def test_crlf_sends_crlf_datagrams_from_the_start_and_never_fails() -> None:
    engine, record, observer = start("crlf")
    sent = runUntil(engine, 200)
    assert len(sent) >= 200 / 25 - 1 and all(data == ka.PING_BYTES for _, data in sent)
    assert failures(engine) == [] and engine.flows.flows[observer].kind == ka.CRLF


def test_network_changed_on_an_auto_flow_sends_stun_and_its_timeout_falls_back() -> None:
    """The out-of-schedule keepalive of an ``"auto"`` flow is judged as usual: on a silent hop, the fallback."""
    engine, record, observer = start("auto")
    engine.networkChanged(1.0, {"udp": LOCAL})
    (_, _, data, _), = engine.datagramsToSend()
    assert stun.isSTUN(data)
    runUntil(engine, 1.0 + 45.0)  # the transaction's whole RFC 8489 §6.2.1 budget: 39.5 s at rto 0.5
    assert failures(engine) == [] and engine.flows.flows[observer].kind == ka.CRLF
    assert engine.stats["keepalive.fallback"] == 1


@settings(max_examples=80, deadline=None)
@given(replies=st.lists(st.sampled_from(["answer", "error", "silent"]), min_size=1, max_size=6))
def test_auto_falls_back_exactly_when_the_first_timeout_comes_before_any_answer(replies: List[str]) -> None:
    """
    Whatever the hop does keepalive after keepalive (answer, STUN error, silence): ``"auto"`` turns to CRLF iff
    the first silent keepalive comes before any answer (then never fails); otherwise the first silence is a
    ``STUNTimeout`` flow failure, as with ``"stun"``.  Never both, never twice.
    """
    engine, record, observer = start("auto")
    script = list(replies)

    def reply(data: bytes) -> Optional[bytes]:
        what = script.pop(0) if script else "silent"
        if what == "silent":
            return None
        return answer(data, error=(400, "Bad Request") if what == "error" else None)

    sent = []
    now = engine.timers.nextTime()
    while now is not None and now <= 25.0 * (len(replies) + 2) + 40:
        engine.handleTimer(now)
        for _key, _, data, addr in engine.datagramsToSend():
            sent.append(data)
            if stun.isSTUN(data) and stun.decode(data).messageClass == stun.REQUEST:
                message = stun.decode(data)
                retransmission = any(stun.decode(d).transactionId == message.transactionId for d in sent[:-1]
                                     if stun.isSTUN(d))
                if not retransmission:
                    response = reply(data)
                    if response is not None:
                        engine.receive(record, response, addr, now + 0.01)
        now = engine.timers.nextTime()
    found = events(engine)
    failed = [e for e in found if isinstance(e, ev.FlowFailed)]
    fellBack = engine.stats["keepalive.fallback"]
    firstSilent = replies.index("silent") if "silent" in replies else len(replies)
    if firstSilent == 0:
        assert fellBack == 1 and failed == [] and engine.flows.flows[observer].kind == ka.CRLF
    else:
        assert fellBack == 0 and len(failed) == 1 and isinstance(failed[0].error, STUNTimeout)


def test_auto_while_undecided_a_keepalive_due_goes_out_as_crlf_beside_the_transaction() -> None:
    """
    RFC 8489 §6.2.1 spaces retransmissions ever wider (8 s before the last wait at rto 0.5), so a STUN-only
    keepalive toward a silent hop could leave the NAT binding idle longer than the keepalive interval.  An
    ``"auto"`` flow still waiting for its first answer sends a CRLFCRLF datagram at each keepalive instant meanwhile:
    no gap between two datagrams of the flow exceeds the interval, and nothing waits for the CRLF.
    """
    base = 5.0
    engine = Engine(rng=random.Random(14))
    record = engine.socket("udp", False)
    observer = Observer()
    engine.flows.refresh(record, observer, NATSettings(udpKeepaliveMethod="auto"), base, HOP, None, 0.0, False,
                         local=LOCAL)
    sent = runUntil(engine, 120)
    assert failures(engine) == [] and engine.stats["keepalive.fallback"] == 1
    firstSTUN = min(t for t, data in sent if stun.isSTUN(data))
    fellBackAt = firstSTUN + 39.5  # the transaction's whole budget at rto 0.5 (Rc 7, Rm 16)
    bridges = [t for t, data in sent if data == ka.PING_BYTES and t < fellBackAt]
    assert len(bridges) >= 39.5 // base - 1 and engine.stats["keepalive.bridge"] == len(bridges)
    instants = [t for t, _ in sent]
    assert max(b - a for a, b in zip(instants, instants[1:], strict=False)) <= base + 1e-9
    assert len(engine.table) == 0


def test_auto_once_answered_sends_no_crlf_beside_a_retransmitting_transaction() -> None:
    """After an answer, a silent hop is a path gone: STUN only, and the ``STUNTimeout`` of ``"stun"``."""
    engine, record, observer = start("auto")
    runUntil(engine, 30, reply=answer)
    sent = runUntil(engine, 200)
    assert all(stun.isSTUN(data) for _, data in sent) and engine.stats["keepalive.bridge"] == 0
    (failed,) = failures(engine)
    assert isinstance(failed.error, STUNTimeout)


def test_a_held_bridge_datagram_is_nothing_to_judge() -> None:
    engine, record, observer = start("auto")
    runUntil(engine, 25.1)  # the first Binding is out and retransmitting
    flow = engine.flows.flows[observer]
    engine.handleTimer(flow.nextKeepaliveAt)
    out = engine.datagramsToSend()
    (key, writeKey, data, addr), = [o for o in out if o[2] == ka.PING_BYTES]
    engine.heldBack(writeKey)
    engine.released(writeKey, flow.nextKeepaliveAt + 0.1)
    assert failures(engine) == [] and flow.stunInFlight and flow.kind == ka.STUN
