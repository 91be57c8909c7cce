"""
Controller bugs found by the reliability work, each as a minimal reproduction; they were committed as strict
xfails, the controller was fixed, and they stay as regression tests.
"""

from __future__ import annotations

import random
from typing import Any, List

from fuzz.support import LoopDetector, assertNoLoggedFailure, watchingLogs
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from tests.addresses import HOP, SERVER
from twisted_sipnat import NATSettings, NATTraversalController, STUNTimeout
from twisted_sipnat.testing import sharedDatagramSocket


def test_a_wake_up_just_before_the_due_time_does_not_spin() -> None:
    clock = Clock()
    heap = LoopDetector()  # without it this test would hang forever
    controller = NATTraversalController(NATSettings(stunServers=[SERVER]), reactor=clock, timers=heap)
    shared, transport = sharedDatagramSocket(controller)
    controller.resolvePublicAddress(None, shared, HOP).addErrback(lambda f: None)
    (call,) = clock.getDelayedCalls()
    clock.rightNow = call.getTime() - 1e-12  # the reactor wakes a hair before the first retransmission ...
    call.time = clock.rightNow  # type: ignore[attr-defined]  # ... running the call it considers due
    with watchingLogs() as logs:
        clock.advance(0)
    assert not heap.looped
    assertNoLoggedFailure(logs)
    clock.advance(0.01)
    assert len(transport.written) == 2  # the retransmission went out (once)


def test_consecutive_keepalive_failures_are_each_reported_within_interval_plus_39_5_s() -> None:
    clock = Clock()
    controller = NATTraversalController(NATSettings(udpKeepaliveInterval=25), reactor=clock, rng=random.Random(1))
    shared, transport = sharedDatagramSocket(controller)  # nothing ever answers: total loss
    failedAt: List[float] = []

    class ReRegistering:
        def flowFailure(self, reason: Failure) -> None:
            assert reason.check(STUNTimeout)
            failedAt.append(clock.seconds())
            controller.refreshNATBinding(shared, self, HOP)

    observer: Any = ReRegistering()
    controller.refreshNATBinding(shared, observer, HOP)
    while clock.seconds() < 400:
        clock.advance(0.25)
    gaps = [b - a for a, b in zip([0.0] + failedAt, failedAt, strict=False)]
    assert len(gaps) >= 4 and max(gaps) <= 25 + 39.5 + 0.3, gaps
