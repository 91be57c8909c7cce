"""
Loss and latency with a Clock: a next hop behind a lossy path (each datagram, request or answer, dropped with a
seeded RNG; answers delayed up to 200 ms).  Keepalives keep running over many intervals and a flow fails only
when a transaction really got no answer within the STUN retransmission budget (RFC 8489 §6.2.1); with total
loss the failure comes within one keepalive interval plus 39.5 s.  (Real-NAT loss via tc netem: tests/lab.)
"""

from __future__ import annotations

import random
from typing import Any, Dict, List, Optional, Tuple

import pytest
from fuzz.support import LoopDetector, Observer, assertNoLoggedFailure, watchingLogs
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from tests.addresses import HOP
from twisted_sipnat import NATSettings, NATTraversalController, STUNTimeout, stun
from twisted_sipnat.protocols import SharedDatagramProtocol
from twisted_sipnat.testing import FakeDatagramTransport, bindingResponse

MAPPED = ("203.0.113.1", 40000)
INTERVAL = 25.0
BUDGET = 39.5  # RFC 8489 §6.2.1 with RTO 0.5 s, Rc 7, Rm 16


class LossyTransport(FakeDatagramTransport):
    """
    A FakeDatagramTransport whose far end is a STUN next hop on a lossy, slow path: every request written to
    ``HOP`` is lost with probability ``loss``; a surviving one is answered after a delay of up to ``maxDelay``
    (driven by the Clock), and the answer is lost with probability ``loss`` too.  Records, per transaction ID,
    when its requests were sent and when an answer was delivered.
    """

    def __init__(self, clock: Clock, rng: random.Random, loss: float, maxDelay: float) -> None:
        super().__init__()
        self.clock = clock
        self.rng = rng
        self.loss = loss
        self.maxDelay = maxDelay
        self.protocol: Optional[SharedDatagramProtocol] = None
        self.sent: Dict[bytes, List[float]] = {}
        self.delivered: Dict[bytes, float] = {}

    def write(self, packet: bytes, addr: Any = None) -> None:
        super().write(packet, addr)
        if addr is None or (addr[0], addr[1]) != HOP or not stun.isSTUN(packet):
            return
        request = stun.decode(packet)
        self.sent.setdefault(request.transactionId, []).append(self.clock.seconds())
        if self.rng.random() < self.loss:
            return  # the request is lost
        answer = bindingResponse(request, MAPPED)
        answerLost = self.rng.random() < self.loss
        self.clock.callLater(self.rng.uniform(0.0, self.maxDelay), self._arrive, request.transactionId, answer,
                             answerLost)

    def _arrive(self, tid: bytes, answer: bytes, lost: bool) -> None:
        if lost:
            return
        self.delivered.setdefault(tid, self.clock.seconds())
        assert self.protocol is not None
        self.protocol.datagramReceived(answer, HOP)


class ReRegisteringObserver(Observer):
    """Like a SIP stack: after a flow failure it re-registers and restarts keepalives at once."""

    def __init__(self, controller: NATTraversalController, shared: Any, clock: Clock) -> None:
        super().__init__()
        self.controller = controller
        self.shared = shared
        self.clock = clock
        self.failedAt: List[float] = []

    def flowFailure(self, reason: Failure) -> None:
        super().flowFailure(reason)
        self.failedAt.append(self.clock.seconds())
        self.controller.refreshNATBinding(self.shared, self, HOP)


def lossyFlow(seed: int, loss: float, maxDelay: float = 0.2) -> Tuple[Clock, NATTraversalController, Any,
                                                                     LossyTransport, ReRegisteringObserver]:
    clock = Clock()
    controller = NATTraversalController(NATSettings(udpKeepaliveInterval=INTERVAL), reactor=clock,
                                        rng=random.Random(seed))
    transport = LossyTransport(clock, random.Random(seed), loss, maxDelay)
    shared = SharedDatagramProtocol(controller=controller, clock=clock)
    shared.makeConnection(transport)  # type: ignore[arg-type]
    transport.protocol = shared
    observer = ReRegisteringObserver(controller, shared, clock)
    assert controller.refreshNATBinding(shared, observer, HOP)
    return clock, controller, shared, transport, observer


def run(clock: Clock, until: float, step: float = 0.05) -> None:
    while clock.seconds() < until:
        clock.advance(step)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_thirty_percent_loss_gives_no_false_flow_failure(seed: int) -> None:
    intervals = 200
    with watchingLogs() as logs:
        clock, controller, shared, transport, observer = lossyFlow(seed, loss=0.3)
        run(clock, intervals * INTERVAL)
    assertNoLoggedFailure(logs)
    finished = {tid: times for tid, times in transport.sent.items() if times[0] + BUDGET + 1 < clock.seconds()}
    unanswered = [tid for tid in finished if tid not in transport.delivered]
    # A failure is reported exactly for the transactions that got no answer at all, and only for them.
    assert len(observer.failures) == len(unanswered), (observer.failedAt, len(unanswered))
    assert all(f.check(STUNTimeout) for f in observer.failures)
    # Every answered transaction was answered within its budget (79 RTO; the RTO is the gap between its first
    # two sends, 0.5 s unless a timeout doubled it) and counted as a live path.
    for tid, at in transport.delivered.items():
        times = transport.sent[tid]
        rto = times[1] - times[0] if len(times) > 1 else 0.5
        assert at - times[0] < 79 * rto + 0.2
    assert controller.stats["keepalive.answered"] == len(transport.delivered)
    # Keepalives kept going: one transaction every 80-100 % of the interval (plus the re-registration restarts).
    assert intervals <= len(transport.sent) <= intervals / 0.8 + 1
    # Loss made them retransmit: more than one request per transaction on average, at most seven each.
    sends = [len(times) for times in transport.sent.values()]
    assert max(sends) <= 7 and sum(sends) > 1.2 * len(sends)
    controller.freeResources()
    assert not controller.timerArmed


def test_many_flows_with_loss_and_latency_fail_only_when_unanswered() -> None:
    """Twenty contexts on one socket, 30 % loss, 200 ms jitter: failures are exactly the unanswered ones."""
    clock = Clock()
    heap = LoopDetector()
    controller = NATTraversalController(NATSettings(udpKeepaliveInterval=INTERVAL), reactor=clock,
                                        rng=random.Random(11), timers=heap)
    transport = LossyTransport(clock, random.Random(11), 0.3, 0.2)
    shared = SharedDatagramProtocol(controller=controller, clock=clock)
    shared.makeConnection(transport)  # type: ignore[arg-type]
    transport.protocol = shared
    observers = [ReRegisteringObserver(controller, shared, clock) for _ in range(20)]
    for observer in observers:
        controller.refreshNATBinding(shared, observer, HOP)
    with watchingLogs() as logs:
        run(clock, 50 * INTERVAL, step=0.1)
    assert not heap.looped
    assertNoLoggedFailure(logs)
    finished = [tid for tid, times in transport.sent.items() if times[0] + BUDGET + 1 < clock.seconds()]
    unanswered = [tid for tid in finished if tid not in transport.delivered]
    assert sum(len(o.failures) for o in observers) == len(unanswered)
    assert all(controller.isKeepingAlive(o) for o in observers)


def test_total_loss_fails_within_one_interval_plus_39_5_seconds() -> None:
    clock, controller, shared, transport, observer = lossyFlow(5, loss=1.0)
    run(clock, INTERVAL + BUDGET + 0.1)
    assert len(observer.failures) == 1 and observer.failures[0].check(STUNTimeout)
    failedAt = observer.failedAt[0]
    firstSent = min(times[0] for times in transport.sent.values())
    assert failedAt - firstSent == pytest.approx(BUDGET, abs=0.06)
    assert INTERVAL * 0.8 + BUDGET - 0.06 <= failedAt <= INTERVAL + BUDGET + 0.06
    (times,) = transport.sent.values()
    assert len(times) == 7


def test_total_loss_after_a_lossy_slow_period_still_fails_within_the_budget() -> None:
    """The RTO learnt on a slow path (RFC 6298 memory) must not stretch failure detection past
    one interval + 39.5 s once the path dies."""
    clock, controller, shared, transport, observer = lossyFlow(8, loss=0.3, maxDelay=0.2)
    run(clock, 40 * INTERVAL)
    before = len(observer.failures)
    transport.loss = 1.0
    died = clock.seconds()
    run(clock, died + INTERVAL + BUDGET + 0.1)
    assert len(observer.failures) == before + 1, observer.failedAt
    assert observer.failedAt[-1] - died <= INTERVAL + BUDGET + 0.06
