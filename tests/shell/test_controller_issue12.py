"""
The bugs fixed with the engine restructure (issue 12), each reproduced with a Clock: a resolution started
from a ``CancelledError`` errback inside ``freeResources()``, seven requests with a learned RTO, RFC 2782 SRV
choice and failover, an error that says an answer came but was unusable.
"""

from __future__ import annotations

import random
from typing import Any, Dict, List, Tuple

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from tests.addresses import HOP, SERVER
from twisted_sipnat import NATSettings, NATTraversalController, STUNTimeout, stun
from twisted_sipnat.core.resolution import orderSRV
from twisted_sipnat.errors import UnusableSTUNAnswer
from twisted_sipnat.testing import NamingClock, SRVTable, bindingResponse, sharedDatagramSocket

MAPPED = ("203.0.113.1", 40000)


def outcome(d: defer.Deferred[Any]) -> List[Any]:
    box: List[Any] = []
    d.addBoth(box.append)
    return box


# -- 1: a resolution started from a CancelledError errback inside freeResources() ---------------------------


def test_a_resolution_started_from_the_cancellation_errback_of_free_resources_times_out(clock: Clock) -> None:
    controller = NATTraversalController(NATSettings(stunServers=[SERVER]), reactor=clock)
    shared, transport = sharedDatagramSocket(controller)
    second: List[Any] = []

    def again(reason: Failure) -> None:
        reason.trap(defer.CancelledError)
        controller.resolvePublicAddress(None, shared, HOP).addBoth(second.append)

    controller.resolvePublicAddress(None, shared, HOP).addErrback(again)
    controller.freeResources()
    assert controller.pendingTransactionCount == 1 and len(clock.getDelayedCalls()) == 1
    clock.advance(39.5)
    assert len(second) == 1 and isinstance(second[0], Failure) and second[0].check(STUNTimeout)
    assert len(transport.stunRequests()) == 1 + 7  # the cancelled one's first request, all seven of the new one


def test_a_resolution_started_from_the_cancellation_errback_of_free_resources_is_answered(clock: Clock) -> None:
    controller = NATTraversalController(NATSettings(stunServers=[SERVER]), reactor=clock)
    shared, transport = sharedDatagramSocket(controller)
    second: List[Any] = []
    controller.resolvePublicAddress(None, shared, HOP).addErrback(
        lambda f: controller.resolvePublicAddress(None, shared, HOP).addBoth(second.append))
    controller.freeResources()
    request, addr = transport.stunRequests()[-1]
    shared.datagramReceived(bindingResponse(request, MAPPED), addr)
    assert second == [IPv4Address("UDP", *MAPPED)]


# -- 2: a learned RTO keeps Rc = 7 requests within the 39.5 s failure instant --------------------------------


def sendTimes(clock: Clock, transport: Any, until: float) -> List[float]:
    times: List[float] = []
    while clock.seconds() < until:
        before = len(transport.written)
        clock.advance(0.05)
        times.extend([round(clock.seconds(), 2)] * (len(transport.written) - before))
    return times


def test_a_learned_rto_still_sends_seven_requests_before_the_39_5_s_failure(clock: Clock) -> None:
    controller = NATTraversalController(NATSettings(stunServers=[SERVER]), reactor=clock)
    shared, transport = sharedDatagramSocket(controller)
    # A slow path: answers after 0.4 s, then after 1.15 s (before the learned 1.2 s RTO's retransmission):
    # RFC 6298 makes that an RTO of about 1.84 s for the server.
    for delay in (0.4, 1.15):
        first = outcome(controller.resolvePublicAddress(None, shared, HOP))
        (request, addr), = transport.stunRequests()
        transport.clear()
        clock.advance(delay)
        shared.datagramReceived(bindingResponse(request, MAPPED), addr)
        assert first and not isinstance(first[0], Failure)
    result = outcome(controller.resolvePublicAddress(None, shared, HOP))
    start = clock.seconds()
    assert len(transport.written) == 1  # the first request, at once
    times = [0.0] + [round(t - start, 2) for t in sendTimes(clock, transport, start + 41)]
    assert len(times) == 7, times
    assert times[1] > 1.8  # the first retransmission waits the learned RTO ...
    assert times[-1] <= 31.5 + 0.05  # ... and the seventh still goes out where the configured schedule's does
    assert len(result) == 1 and result[0].check(STUNTimeout)
    assert abs(result[0].value.elapsed - 39.5) < 0.06


# -- 3: RFC 2782 SRV: weighted random choice within a priority, failover to the next target --------------


class ScriptedRandom(random.Random):
    """``randint`` answers from a script (the weighted choice's draws)."""

    def __new__(cls, draws: List[int]) -> ScriptedRandom:
        # Python 3.10's random.Random.__new__ seeds from the constructor's arguments (a list is unhashable)
        return super().__new__(cls)

    def __init__(self, draws: List[int]) -> None:
        super().__init__(0)
        self.draws = list(draws)
        self.asked: List[Tuple[int, int]] = []

    def randint(self, a: int, b: int) -> int:
        self.asked.append((a, b))
        return self.draws.pop(0)


def test_srv_order_is_by_priority_then_weighted_random() -> None:
    records = [(10, 10, "light"), (10, 90, "heavy"), (5, 0, "first"), (20, 0, "last")]
    # within priority 10 the running sums are light 10, heavy 100: a draw of 50 picks heavy
    assert orderSRV(records, ScriptedRandom([50, 0])) == ["first", "heavy", "light", "last"]
    assert orderSRV(records, ScriptedRandom([5, 0])) == ["first", "light", "heavy", "last"]
    counts: Dict[str, int] = {"light": 0, "heavy": 0}
    rng = random.Random(2782)
    for _ in range(2000):
        counts[orderSRV([(1, 10, "light"), (1, 90, "heavy")], rng)[0]] += 1
    assert 1650 < counts["heavy"] < 1950  # about 90 %




def test_srv_targets_of_one_priority_are_chosen_by_weight_and_failed_over() -> None:
    clock = NamingClock({"a.example.com": "198.51.100.21", "b.example.com": "198.51.100.22"})
    srv = SRVTable({"_stun._udp.example.com": [(10, 1, 3478, "a.example.com"), (10, 99, 3479, "b.example.com")]})
    controller = NATTraversalController(NATSettings(stunServers=["stun:example.com"]), reactor=clock,
                                        dnsResolver=srv, rng=ScriptedRandom([50, 0]))
    shared, transport = sharedDatagramSocket(controller)
    result = outcome(controller.resolvePublicAddress(None, shared, HOP))
    assert clock.asked == ["b.example.com"]  # the draw of 50 falls in b's weight (today's sort took a first)
    assert {addr for _, addr in transport.stunRequests()} == {("198.51.100.22", 3479)}
    transport.clear()
    clock.advance(39.5)  # b never answers: fail over to the other target of the same priority
    assert clock.asked == ["b.example.com", "a.example.com"]
    (request, addr), = transport.stunRequests(to=("198.51.100.21", 3478))
    shared.datagramReceived(bindingResponse(request, MAPPED), addr)
    assert result == [IPv4Address("UDP", *MAPPED)]


# -- 4: an unusable answer is reported as what it was ---------------------------------------------------------


def test_an_answer_with_unknown_comprehension_required_attributes_is_named_in_the_error(clock: Clock) -> None:
    controller = NATTraversalController(NATSettings(stunServers=[SERVER]), reactor=clock)
    shared, transport = sharedDatagramSocket(controller)
    result = outcome(controller.resolvePublicAddress(None, shared, HOP))
    (request, addr), = transport.stunRequests()
    shared.datagramReceived(bindingResponse(request, MAPPED, extra=[stun.RawAttribute(0x0030, b"abcd")]), addr)
    assert len(result) == 1 and result[0].check(STUNTimeout)  # the contract's errback type still
    error = result[0].value
    assert isinstance(error, UnusableSTUNAnswer)
    assert "0x0030" in str(error) and "198.51.100.7:3478" in str(error)
    assert "no STUN answer" not in str(error)
    assert error.answers == ((SERVER, "response with unknown comprehension-required attributes 0x0030"),)


def test_a_timeout_without_any_answer_still_says_no_answer(clock: Clock) -> None:
    controller = NATTraversalController(NATSettings(stunServers=[SERVER]), reactor=clock)
    shared, transport = sharedDatagramSocket(controller)
    result = outcome(controller.resolvePublicAddress(None, shared, HOP))
    clock.advance(39.5)
    assert not isinstance(result[0].value, UnusableSTUNAnswer)
    assert str(result[0].value) == "no STUN answer from 198.51.100.7:3478 after 39.5 s"
