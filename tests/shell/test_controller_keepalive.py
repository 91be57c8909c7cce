"""
refreshNATBinding and friends with a Clock: RFC 5626 keepalive instants, Flow-Timer, socket arbitration,
updateNextHop, each flow failure exactly once, restart without doubling, and freeResources leaving no timer.
"""

from __future__ import annotations

import random
from typing import Any, List, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from tests.addresses import HOP
from twisted_sipnat import (
    FlowConnectionLost,
    MappedAddressChanged,
    NATSettings,
    NATTraversalController,
    PongTimeout,
    SharedStreamFactory,
    STUNTimeout,
)
from twisted_sipnat.core import stun
from twisted_sipnat.testing import RecordingObserver, answerAll, bindingResponse, sharedDatagramSocket

HOP2 = ("198.51.100.2", 5060)
MAPPED = ("203.0.113.1", 40000)


Observer = RecordingObserver


def setup(**settings: Any) -> Tuple[Clock, NATTraversalController, Any, Any, Observer]:
    clock = Clock()
    controller = NATTraversalController(NATSettings(**settings), reactor=clock, rng=random.Random(5626))
    shared, transport = sharedDatagramSocket(controller)
    return clock, controller, shared, transport, Observer()


def keepaliveInstants(clock: Clock, transport: Any, shared: Any, until: float, step: float = 0.05) -> List[float]:
    """Advance to ``until``, answering every keepalive at once; the instants they were written."""
    instants = []
    while clock.seconds() < until:
        clock.advance(step)
        instants.extend([clock.seconds()] * answerAll(shared, transport, MAPPED))
    return instants


def test_stun_keepalives_are_jittered_between_80_and_100_percent() -> None:
    clock, controller, shared, transport, observer = setup()
    assert controller.refreshNATBinding(shared, observer, HOP) is True
    assert transport.written == []  # never at once
    instants = keepaliveInstants(clock, transport, shared, 25 * 12)
    gaps = [b - a for a, b in zip([0.0] + instants, instants, strict=False)]
    assert len(gaps) >= 11
    assert all(20 - 0.06 <= g <= 25 + 0.06 for g in gaps), gaps
    assert max(gaps) - min(gaps) > 0.5  # they vary
    assert observer.failures == []
    assert controller.stats["keepalive.answered"] == len(instants)


def test_flow_timer_overrides_the_configured_interval() -> None:
    clock, controller, shared, transport, observer = setup()
    controller.refreshNATBinding(shared, observer, HOP, flowTimer=10)
    instants = keepaliveInstants(clock, transport, shared, 60)
    gaps = [b - a for a, b in zip([0.0] + instants, instants, strict=False)]
    assert len(gaps) >= 6 and all(8 - 0.06 <= g <= 10 + 0.06 for g in gaps), gaps


def test_zero_interval_disables_keepalives() -> None:
    clock, controller, shared, transport, observer = setup(udpKeepaliveInterval=0)
    assert controller.refreshNATBinding(shared, observer, HOP) is False
    clock.advance(100)
    assert transport.written == [] and clock.getDelayedCalls() == []


def test_keepalives_go_to_the_next_hop_given_at_resolve() -> None:
    clock, controller, shared, transport, observer = setup()
    controller.resolvePublicAddress(None, shared, HOP, observer=observer)
    answerAll(shared, transport, MAPPED)
    assert controller.refreshNATBinding(shared, observer) is True
    clock.advance(25)
    (_, addr), = transport.stunRequests()
    assert addr == HOP


def test_crlf_method_sends_crlfcrlf_datagrams() -> None:
    clock, controller, shared, transport, observer = setup(udpKeepaliveMethod="crlf")
    controller.refreshNATBinding(shared, observer, HOP)
    clock.advance(25)
    assert transport.written == [(b"\r\n\r\n", HOP)]
    clock.advance(25)
    assert transport.written == [(b"\r\n\r\n", HOP)] * 2
    assert observer.failures == []


def test_mapped_address_change_fails_the_flow_once() -> None:
    clock, controller, shared, transport, observer = setup()
    controller.refreshNATBinding(shared, observer, HOP)
    clock.advance(25)
    answerAll(shared, transport, MAPPED)
    clock.advance(25)
    answerAll(shared, transport, ("203.0.113.1", 40001))
    assert len(observer.failures) == 1
    failure = observer.failures[0]
    assert failure.check(MappedAddressChanged)
    assert failure.value.old == IPv4Address("UDP", *MAPPED)
    assert failure.value.new == IPv4Address("UDP", "203.0.113.1", 40001)
    clock.advance(200)
    assert transport.written == [] and len(observer.failures) == 1
    assert clock.getDelayedCalls() == []


def test_resolved_address_is_the_baseline_only_when_the_next_hop_was_the_stun_server() -> None:
    clock, controller, shared, transport, observer = setup()  # stunServers=(): the next hop answers STUN
    controller.resolvePublicAddress(None, shared, HOP, observer=observer)
    answerAll(shared, transport, MAPPED)
    controller.refreshNATBinding(shared, observer)
    clock.advance(25)
    answerAll(shared, transport, ("203.0.113.1", 40009))
    assert observer.failures and observer.failures[0].check(MappedAddressChanged)

    clock, controller, shared, transport, observer = setup(stunServers=[("198.51.100.7", 3478)])
    controller.resolvePublicAddress(None, shared, HOP, observer=observer)
    answerAll(shared, transport, MAPPED)
    controller.refreshNATBinding(shared, observer)
    clock.advance(25)
    answerAll(shared, transport, ("203.0.113.1", 40009))  # a per-destination NAT: not a change
    assert observer.failures == []


def test_unanswered_keepalive_is_stun_timeout_once_at_39_5_seconds() -> None:
    clock, controller, shared, transport, observer = setup()
    controller.refreshNATBinding(shared, observer, HOP)
    while not transport.written:
        clock.advance(0.01)
    sentAt = clock.seconds()
    clock.advance(39.4)
    assert observer.failures == []
    clock.advance(0.11)
    assert len(observer.failures) == 1 and observer.failures[0].check(STUNTimeout)
    assert clock.seconds() - sentAt == pytest.approx(39.5, abs=0.12)
    assert clock.getDelayedCalls() == []
    assert not controller.isKeepingAlive(observer)


def test_stun_error_answer_keeps_the_flow_alive() -> None:
    clock, controller, shared, transport, observer = setup()
    controller.refreshNATBinding(shared, observer, HOP)
    clock.advance(25)
    (request, addr), = transport.stunRequests()
    shared.datagramReceived(bindingResponse(request, error=(400, "Bad Request")), addr)
    clock.advance(60)
    assert observer.failures == [] and controller.isKeepingAlive(observer)
    controller.freeResources()


def test_socket_idle_false_holds_and_true_releases_exactly_one() -> None:
    clock, controller, shared, transport, observer = setup()
    controller.refreshNATBinding(shared, observer, HOP)
    controller.socketIdle(False, shared)
    clock.advance(25 * 3)  # several keepalives (and retransmissions) fall due while held
    assert transport.written == []
    controller.socketIdle(True, shared)  # written synchronously, inside the call
    assert len(transport.written) == 1
    (request, addr), = transport.stunRequests()
    assert addr == HOP
    shared.datagramReceived(bindingResponse(request, MAPPED), HOP)
    assert observer.failures == []
    controller.freeResources()


def test_held_keepalives_of_several_contexts_are_released_in_order() -> None:
    clock, controller, shared, transport, _ = setup()
    observers = [Observer() for _ in range(3)]
    for i, o in enumerate(observers):
        controller.refreshNATBinding(shared, o, ("198.51.100.%d" % (i + 1), 5060), flowTimer=10 + i)
    controller.socketIdle(False, shared)
    clock.advance(13)
    assert transport.written == []
    queued = [flow.nextHop for flow in shared.arbiter.heldKeys]  # the order they fell due
    assert sorted(queued) == [("198.51.100.%d" % (i + 1), 5060) for i in range(3)]
    controller.socketIdle(True, shared)
    assert [addr for _, addr in transport.written] == queued
    controller.freeResources()


def test_update_next_hop_moves_the_next_keepalive_and_one_in_flight() -> None:
    clock, controller, shared, transport, observer = setup()
    controller.refreshNATBinding(shared, observer, HOP)
    while not transport.written:
        clock.advance(0.01)
    (request, _), = transport.stunRequests()
    transport.clear()
    controller.updateNextHop(HOP2, observer)
    clock.advance(0.5)  # the retransmission goes to the new hop
    assert [addr for _, addr in transport.written] == [HOP2]
    shared.datagramReceived(bindingResponse(request, MAPPED), HOP)  # the old hop is no longer trusted
    assert controller.stats["stun.dropped.wrong-source"] == 1
    shared.datagramReceived(bindingResponse(request, MAPPED), HOP2)
    transport.clear()
    clock.advance(25)
    assert [addr for _, addr in transport.written] == [HOP2]
    assert observer.failures == []
    controller.freeResources()


def test_refresh_twice_restarts_and_never_doubles() -> None:
    clock, controller, shared, transport, observer = setup()
    controller.refreshNATBinding(shared, observer, HOP)
    clock.advance(10)
    controller.refreshNATBinding(shared, observer, HOP)
    instants = keepaliveInstants(clock, transport, shared, 10 + 25 * 4)
    assert 4 <= len(instants) <= 5
    assert controller.flowCount == 1


def test_free_resources_leaves_no_timer() -> None:
    clock, controller, shared, transport, observer = setup()
    others = [Observer() for _ in range(5)]
    for o in [observer] + others:
        controller.refreshNATBinding(shared, o, HOP)
    controller.resolvePublicAddress(None, shared, HOP).addErrback(lambda f: None)
    clock.advance(24)
    controller.freeResources(observer)
    assert not controller.isKeepingAlive(observer) and controller.flowCount == 5
    controller.freeResources()
    assert clock.getDelayedCalls() == []
    assert controller.flowCount == 0 and controller.pendingTransactionCount == 0


def test_a_failing_observer_may_refresh_from_its_callback() -> None:
    clock, controller, shared, transport, _ = setup()

    class Reregistering(Observer):
        def flowFailure(self, reason: Failure) -> None:
            super().flowFailure(reason)
            controller.refreshNATBinding(shared, self, HOP)

    observer = Reregistering()
    controller.refreshNATBinding(shared, observer, HOP)
    clock.advance(25)
    transport.clear()
    clock.advance(40)  # the keepalive times out; the observer restarts from inside flowFailure
    assert len(observer.failures) == 1 and controller.isKeepingAlive(observer)
    controller.freeResources()
    assert clock.getDelayedCalls() == []


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_data_received_never_raises(data: bytes) -> None:
    clock, controller, shared, transport, observer = setup()
    controller.refreshNATBinding(shared, observer, HOP)
    result = controller.dataReceived(data, shared, HOP)
    assert result in (True, False)
    if not stun.isSTUN(data) and data != b"\r\n":
        assert result is False


def test_data_received_classification() -> None:
    clock, controller, shared, transport, observer = setup()
    request = stun.Message(stun.BINDING, stun.REQUEST).encode()
    assert controller.dataReceived(request, shared, HOP) is False  # a responder may answer it
    indication = stun.Message(stun.BINDING, stun.INDICATION).encode()
    assert controller.dataReceived(indication, shared, HOP) is True
    assert controller.dataReceived(b"INVITE sip:a@b SIP/2.0\r\n\r\n", shared, HOP) is False
    controller.refreshNATBinding(shared, observer, HOP)
    clock.advance(25)
    (message, _), = transport.stunRequests()
    assert controller.dataReceived(bindingResponse(message, MAPPED), shared, HOP) is True
    controller.freeResources()


# -- TCP ---------------------------------------------------------------------------------------------------------


class SIPRecorder(Protocol):
    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


def tcpSetup(**settings: Any) -> Tuple[Clock, NATTraversalController, Any, StringTransport, SIPRecorder, Observer]:
    clock = Clock()
    controller = NATTraversalController(NATSettings(**settings), reactor=clock, rng=random.Random(1))
    factory = SharedStreamFactory(Factory.forProtocol(SIPRecorder), controller=controller)
    shared = factory.buildProtocol(IPv4Address("TCP", *HOP))
    transport = StringTransport(peerAddress=IPv4Address("TCP", *HOP))
    shared.makeConnection(transport)
    return clock, controller, shared, transport, shared.wrappedProtocol, Observer()


def test_tcp_ping_pong_and_pong_timeout() -> None:
    clock, controller, shared, transport, sip, observer = tcpSetup()
    assert controller.refreshNATBinding(shared, observer) is True  # next hop: the connection's peer
    clock.advance(95)
    assert transport.value() in (b"", b"\r\n\r\n")
    clock.advance(25)
    assert transport.value() == b"\r\n\r\n"
    transport.clear()
    shared.dataReceived(b"\r\n")  # the pong
    clock.advance(11)
    assert observer.failures == []
    clock.advance(120)  # next ping, and no pong this time
    assert transport.value() == b"\r\n\r\n"
    clock.advance(10)
    assert len(observer.failures) == 1 and observer.failures[0].check(PongTimeout)
    assert clock.getDelayedCalls() == []


def test_tcp_ping_waits_for_the_end_of_a_sip_message() -> None:
    clock, controller, shared, transport, sip, observer = tcpSetup(tcpKeepaliveInterval=10)
    controller.refreshNATBinding(shared, observer)
    body = b"v=0\r\n\r\n\r\n"
    message = b"MESSAGE sip:b@example.com SIP/2.0\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    sip.transport.write(message[:30])
    clock.advance(10)  # the ping is due, but a message is half written
    assert transport.value() == message[:30]
    sip.transport.write(message[30:] + message[:5])  # completes it and starts the next one
    assert transport.value() == message + b"\r\n\r\n" + message[:5]
    clock.advance(10)  # the pong deadline started when the ping was written, not when it was due
    assert len(observer.failures) == 1 and observer.failures[0].check(PongTimeout)


def test_tcp_connection_lost_fails_the_flow() -> None:
    clock, controller, shared, transport, sip, observer = tcpSetup()
    controller.refreshNATBinding(shared, observer)
    shared.connectionLost(Failure(ConnectionError("reset by peer")))
    assert len(observer.failures) == 1 and observer.failures[0].check(FlowConnectionLost)
    assert clock.getDelayedCalls() == []


def test_tcp_pongs_never_reach_the_sip_protocol() -> None:
    clock, controller, shared, transport, sip, observer = tcpSetup(tcpKeepaliveInterval=10)
    controller.refreshNATBinding(shared, observer)
    clock.advance(10)
    message = b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"
    shared.dataReceived(message + b"\r\n" + message[:10])
    shared.dataReceived(message[10:])
    assert sip.received == message + message
    clock.advance(30)
    assert observer.failures == []
    controller.freeResources()


# -- a healthy flow's repeated answers (controller._AnswerMemo) ------------------------------------------------


def countDecodes(monkeypatch: pytest.MonkeyPatch) -> List[int]:
    """Count the responses decoded (the test helpers decode the requests, which are not counted)."""
    calls = [0]
    real = stun.decode

    def counting(data: bytes) -> Any:
        header = stun.peekHeader(data)
        if header is not None and header[1] != stun.REQUEST:
            calls[0] += 1
        return real(data)

    monkeypatch.setattr(stun, "decode", counting)
    return calls


def answerNext(clock: Clock, shared: Any, transport: Any, **kwargs: Any) -> None:
    """Advance to the next keepalive and answer it with ``bindingResponse(**kwargs)``."""
    while not transport.written:
        clock.advance(0.5)
    (request, addr), = transport.stunRequests()
    transport.clear()
    kwargs.setdefault("mapped", MAPPED)
    shared.datagramReceived(bindingResponse(request, **kwargs), addr)


def test_an_answer_identical_to_the_last_is_taken_without_decoding_but_its_fingerprint_is_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock, controller, shared, transport, observer = setup()
    decodes = countDecodes(monkeypatch)
    controller.refreshNATBinding(shared, observer, HOP)
    answerNext(clock, shared, transport)
    assert decodes[0] == 1 and controller.stats["keepalive.answered"] == 1
    for _ in range(3):
        answerNext(clock, shared, transport)
    assert decodes[0] == 1 and controller.stats["keepalive.answered"] == 4

    # The same answer with a broken FINGERPRINT is decoded, dropped, and the flow keeps waiting.
    answerNext(clock, shared, transport, corruptFingerprint=True)
    assert decodes[0] == 2 and controller.stats["stun.dropped.bad-fingerprint"] == 1
    assert controller.stats["keepalive.answered"] == 4
    clock.advance(0.5)  # the retransmission; answer it properly
    (request, addr), = transport.stunRequests()
    transport.clear()
    shared.datagramReceived(bindingResponse(request, MAPPED), addr)
    assert controller.stats["keepalive.answered"] == 5 and decodes[0] == 2

    # Any other byte changed takes the full path: a new port is a rebinding.
    answerNext(clock, shared, transport, mapped=("203.0.113.1", 40001))
    assert decodes[0] == 3
    assert len(observer.failures) == 1 and observer.failures[0].check(MappedAddressChanged)


def test_answers_are_always_decoded_and_checked_with_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    clock, controller, shared, transport, observer = setup(username="alice", password="secret")
    key = stun.shortTermKey("secret")
    decodes = countDecodes(monkeypatch)
    controller.refreshNATBinding(shared, observer, HOP)
    for _ in range(3):
        answerNext(clock, shared, transport, key=key)
    assert decodes[0] == 3 and controller.stats["keepalive.answered"] == 3
    answerNext(clock, shared, transport, key=stun.shortTermKey("wrong"))
    assert controller.stats["stun.dropped.bad-integrity"] == 1 and controller.stats["keepalive.answered"] == 3


def test_a_new_next_hop_is_not_judged_by_the_old_hops_answers() -> None:
    clock, controller, shared, transport, observer = setup()
    controller.refreshNATBinding(shared, observer, HOP)
    answerNext(clock, shared, transport)
    answerNext(clock, shared, transport)
    controller.updateNextHop(HOP2, observer)
    answerNext(clock, shared, transport, mapped=("203.0.113.9", 50000))  # the new hop's view: a new baseline
    answerNext(clock, shared, transport, mapped=("203.0.113.9", 50000))
    answerNext(clock, shared, transport, mapped=MAPPED)  # the old view from the new hop is a change
    assert len(observer.failures) == 1 and observer.failures[0].check(MappedAddressChanged)
    assert observer.failures[0].value.old == IPv4Address("UDP", "203.0.113.9", 50000)


ANSWER_KINDS = {
    "same": {},
    "other-port": {"mapped": ("203.0.113.1", 40001)},
    "ipv6": {"mapped": ("2001:db8::1", 40000)},
    "bad-fingerprint": {"corruptFingerprint": True},
    "no-fingerprint": {"fingerprint": False},
    "error": {"error": (500, "Server Error")},
    "software": {"extra": [stun.Software("peer")]},
    "unknown-required": {"extra": [stun.RawAttribute(0x0023, b"xxxx")]},
}


@given(st.lists(st.sampled_from(sorted(ANSWER_KINDS)), min_size=1, max_size=12))
@settings(max_examples=150, deadline=None)
def test_skipping_the_decode_of_repeated_answers_changes_no_outcome(kinds: List[str]) -> None:
    from unittest import mock

    from twisted_sipnat.core.keepalive import AnswerMemo as _AnswerMemo

    def run() -> Tuple[List[str], Any]:
        clock, controller, shared, transport, observer = setup()
        controller.refreshNATBinding(shared, observer, HOP)
        for kind in kinds:
            if not controller.isKeepingAlive(observer):
                break
            answerNext(clock, shared, transport, **ANSWER_KINDS[kind])
            clock.advance(40)  # unanswered requests retransmit or time out meanwhile, the same in both runs
            transport.clear()
        failures = [f"{type(f.value).__name__}: {f.value}" for f in observer.failures]
        counts = {k: v for k, v in controller.stats.items() if k.startswith(("stun.", "keepalive.answered"))}
        counts.pop("stun.requests.retransmitted", None)
        return failures, counts

    withMemo = run()
    with mock.patch.object(_AnswerMemo, "matches", lambda self, data, baseline: False):
        withoutMemo = run()
    assert withMemo == withoutMemo


def test_the_new_next_hops_first_answer_sets_the_baseline_even_when_it_repeats_the_old_hops() -> None:
    clock, controller, shared, transport, observer = setup()
    controller.refreshNATBinding(shared, observer, HOP)
    answerNext(clock, shared, transport)
    controller.updateNextHop(HOP2, observer)
    answerNext(clock, shared, transport)  # same bytes as the old hop's answers: still the new hop's first
    answerNext(clock, shared, transport, mapped=("203.0.113.1", 40001))
    assert len(observer.failures) == 1 and observer.failures[0].check(MappedAddressChanged)


def test_a_held_keepalive_moved_to_a_new_next_hop_is_written_there() -> None:
    clock, controller, shared, transport, observer = setup(udpKeepaliveInterval=10)
    controller.refreshNATBinding(shared, observer, HOP)
    controller.socketIdle(False, shared)
    clock.advance(10)  # the keepalive fell due while the SIP stack held the socket
    assert transport.written == [] and shared.arbiter.held == 1
    controller.updateNextHop(HOP2, observer)
    assert shared.arbiter.held == 1  # still one per context
    controller.socketIdle(True, shared)
    assert [addr for _, addr in transport.written] == [HOP2]
    (request, addr), = transport.stunRequests()
    shared.datagramReceived(bindingResponse(request, ("203.0.113.1", 40000)), HOP2)
    assert controller.stats["keepalive.answered"] == 1 and controller.pendingTransactionCount == 0
