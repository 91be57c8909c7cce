"""
``refreshNATBinding(..., publicAddress=...)``: a user agent that registered before any STUN (RFC 5626 outbound)
knows its flow's public address from the REGISTER 200's ``received``/``rport`` (RFC 3581 §4).  That address is
the keepalives' baseline, so a rebinding between the 200 and the first keepalive answer is a
``MappedAddressChanged`` too; without it the first answer would silently become the baseline and the registrar
would keep a binding to the dead mapping.
"""

from __future__ import annotations

import random
from typing import Any, Tuple

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock

from tests.addresses import HOP
from twisted_sipnat import MappedAddressChanged, NATSettings, NATTraversalController, NATTraversalError
from twisted_sipnat.testing import RecordingObserver, answerAll, sharedDatagramSocket

SEEN = ("203.0.113.1", 40000)  # what the registrar's 200 said


def setup() -> Tuple[Clock, NATTraversalController, Any, Any, RecordingObserver]:
    clock = Clock()
    controller = NATTraversalController(NATSettings(), reactor=clock, rng=random.Random(5))
    shared, transport = sharedDatagramSocket(controller)
    return clock, controller, shared, transport, RecordingObserver()


def firstKeepalive(clock: Clock, transport: Any) -> None:
    while not transport.stunRequests():
        clock.advance(0.5)


@pytest.mark.parametrize("known", [SEEN, IPv4Address("UDP", *SEEN)])
def test_a_first_answer_with_another_mapping_is_a_rebinding(known: Any) -> None:
    clock, controller, shared, transport, observer = setup()
    controller.refreshNATBinding(shared, observer, HOP, publicAddress=known)
    assert controller.baselineOf(observer) == IPv4Address("UDP", *SEEN)
    firstKeepalive(clock, transport)
    answerAll(shared, transport, ("203.0.113.1", 40001))
    (failure,) = observer.failures
    assert failure.check(MappedAddressChanged)
    assert failure.value.old == IPv4Address("UDP", *SEEN) and failure.value.new.port == 40001
    controller.freeResources()
    assert clock.getDelayedCalls() == []


def test_a_first_answer_with_the_same_mapping_keeps_the_flow() -> None:
    clock, controller, shared, transport, observer = setup()
    controller.refreshNATBinding(shared, observer, HOP, publicAddress=SEEN)
    for _ in range(3):
        firstKeepalive(clock, transport)
        answerAll(shared, transport, SEEN)
        transport.written.clear()
    assert observer.failures == [] and controller.isKeepingAlive(observer)
    controller.freeResources()


def test_without_it_the_first_answer_is_the_baseline_as_the_contract_says() -> None:
    clock, controller, shared, transport, observer = setup()
    controller.refreshNATBinding(shared, observer, HOP)
    assert controller.baselineOf(observer) is None
    firstKeepalive(clock, transport)
    answerAll(shared, transport, ("203.0.113.1", 40001))
    assert observer.failures == [] and controller.baselineOf(observer) == IPv4Address("UDP", "203.0.113.1", 40001)
    controller.freeResources()


def test_a_crlf_flow_has_no_baseline_and_a_bad_address_is_one_error() -> None:
    clock, observer = Clock(), RecordingObserver()
    controller = NATTraversalController(NATSettings(udpKeepaliveMethod="crlf"), reactor=clock)
    shared, _ = sharedDatagramSocket(controller)
    controller.refreshNATBinding(shared, observer, HOP, publicAddress=SEEN)
    assert controller.baselineOf(observer) is None
    with pytest.raises(NATTraversalError):
        controller.refreshNATBinding(shared, observer, HOP, publicAddress=("203.0.113.1", 0))
    with pytest.raises(NATTraversalError):
        controller.refreshNATBinding(shared, observer, HOP, publicAddress="203.0.113.1:40000")
    controller.freeResources()


def test_an_auto_flow_with_a_known_address_still_falls_back_on_a_hop_that_never_answered_stun() -> None:
    """The registrar's received/rport says nothing about STUN: a silent hop is still the "auto" fallback."""
    clock, observer = Clock(), RecordingObserver()
    controller = NATTraversalController(NATSettings(udpKeepaliveMethod="auto", rto=0.1), reactor=clock)
    shared, transport = sharedDatagramSocket(controller)
    controller.refreshNATBinding(shared, observer, HOP, publicAddress=SEEN)
    for _ in range(400):
        clock.advance(0.1)
    assert observer.failures == [] and controller.isKeepingAlive(observer)
    assert controller.stats["keepalive.fallback"] == 1
    controller.freeResources()
