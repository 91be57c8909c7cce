"""
What the controller tells an operator without a look inside its engine: flows by transport, the round-trip
time of every answered keepalive, STUN error answers and flow failures by reason (``stats``).
"""

from __future__ import annotations

import random

from twisted.internet.task import Clock

from tests.addresses import HOP
from twisted_sipnat import NATSettings, NATTraversalController
from twisted_sipnat.testing import RecordingObserver, answerAll, bindingResponse, sharedDatagramSocket

MAPPED = ("203.0.113.1", 40000)



def test_answered_keepalives_are_timed_from_first_send_to_answer() -> None:
    clock = Clock()
    controller = NATTraversalController(NATSettings(), reactor=clock, rng=random.Random(3))
    shared, transport = sharedDatagramSocket(controller)
    controller.refreshNATBinding(shared, RecordingObserver(), HOP)
    assert controller.flowCountByTransport() == {"udp": 1, "tcp": 0}
    for _ in range(3):
        clock.advance(25)
        clock.advance(0.2)  # answered 200 ms after it left
        assert answerAll(shared, transport, MAPPED) == 1
    rtt = controller.keepaliveRTT
    assert rtt.count == 3
    assert abs(rtt.sum - 0.6) < 1e-9
    assert dict(rtt.cumulative())[0.25] == 3 and dict(rtt.cumulative())[0.1] == 0
    controller.freeResources()
    assert controller.flowCountByTransport() == {"udp": 0, "tcp": 0}


def test_a_stun_error_answer_is_counted_apart_and_does_not_fail_the_flow() -> None:
    clock = Clock()
    controller = NATTraversalController(NATSettings(), reactor=clock, rng=random.Random(3))
    shared, transport = sharedDatagramSocket(controller)
    observer = RecordingObserver()
    controller.refreshNATBinding(shared, observer, HOP)
    clock.advance(25)
    assert answerAll(shared, transport, MAPPED, error=(500, "Server Error")) == 1
    assert controller.stats["keepalive.error"] == 1
    assert controller.stats["keepalive.answered"] == 1
    assert observer.failures == [] and controller.isKeepingAlive(observer)
    controller.freeResources()


def test_flow_failures_are_counted_by_reason() -> None:
    clock = Clock()
    controller = NATTraversalController(NATSettings(), reactor=clock, rng=random.Random(3))
    shared, transport = sharedDatagramSocket(controller)
    timedOut, rebound = RecordingObserver(), RecordingObserver()
    controller.refreshNATBinding(shared, timedOut, HOP)
    clock.advance(25)
    transport.clear()
    clock.advance(40)  # RFC 8489 §6.2.1: no answer within 39.5 s
    assert len(timedOut.failures) == 1
    assert controller.stats["flow.failures.stun_timeout"] == 1

    controller.refreshNATBinding(shared, rebound, HOP)
    for mapped in (MAPPED, ("203.0.113.1", 40001)):
        clock.advance(25)
        for message, addr in transport.stunRequests():
            shared.datagramReceived(bindingResponse(message, mapped), addr)
        transport.clear()
    assert len(rebound.failures) == 1
    assert controller.stats["flow.failures.mapped_address_changed"] == 1

    lost = RecordingObserver()
    controller.refreshNATBinding(shared, lost, HOP)
    controller.socketClosed(shared)
    assert controller.stats["flow.failures.connection_lost"] == 1
    assert controller.stats["flow.failures"] == 3
    controller.freeResources()
