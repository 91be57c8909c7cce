"""
Spoofing: the public address -- the ``resolvePublicAddress`` result, and a keepalive flow's baseline and
``MappedAddressChanged`` -- changes only through a response that matches a pending transaction ID, comes from
the address the request went to, on the socket it left from, and (with credentials) carries a valid
MESSAGE-INTEGRITY.  Every forgery in :mod:`forgeries` is tried on every path; after each, the transaction is
still pending and the genuine answer is still accepted (a forgery cannot cancel it either).
"""

from __future__ import annotations

import random
from typing import Any, List, Optional, Tuple

import pytest
from fuzz.support import Observer, assertNoLoggedFailure, watchingLogs
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock

from tests.addresses import HOP, SERVER
from twisted_sipnat import MappedAddressChanged, NATSettings, NATTraversalController, stun
from twisted_sipnat.testing import bindingResponse, sharedDatagramSocket

from .forgeries import ALL, ALWAYS, DROPPED_AS, EVIL, WITH_CREDENTIALS, Forgery

HOP2 = ("198.51.100.2", 5060)
MAPPED = ("203.0.113.1", 40000)
PASSWORD = "s3cret"
KEY = stun.shortTermKey(PASSWORD)

CASES = [(name, False) for name in ALWAYS] + [(name, True) for name in ALL]


def makeController(credentials: bool, **settings: Any) -> Tuple[Clock, NATTraversalController, Any, Any, Any]:
    clock = Clock()
    if credentials:
        settings.update(username="alice", password=PASSWORD)
    controller = NATTraversalController(NATSettings(**settings), reactor=clock, rng=random.Random(7))
    shared, transport = sharedDatagramSocket(controller)
    other, _ = sharedDatagramSocket(controller, port=5061)
    return clock, controller, shared, transport, other


def deliver(forgery: Forgery, request: stun.Message, server: Tuple[str, int], key: Optional[bytes],
            shared: Any, other: Any) -> None:
    data, source, onOther = forgery(request, server, key)
    (other if onOther else shared).datagramReceived(data, source)


def only(requests: List[Any]) -> stun.Message:
    assert len(requests) == 1, requests
    message: stun.Message = requests[0][0]
    return message


@pytest.mark.parametrize("name,credentials", CASES)
def test_forged_answer_does_not_resolve(name: str, credentials: bool) -> None:
    clock, controller, shared, transport, other = makeController(credentials, stunServers=[SERVER])
    key = KEY if credentials else None
    with watchingLogs() as logs:
        results: List[Any] = []
        controller.resolvePublicAddress(None, shared, HOP).addBoth(results.append)
        request = only(transport.stunRequests())
        deliver(ALL[name], request, SERVER, key, shared, other)
        assert results == [], f"{name}: accepted"
        counted = {k: v for k, v in controller.stats.items() if k.startswith(("stun.dropped.", "stun.indications"))}
        assert counted == ({DROPPED_AS[name]: 1} if DROPPED_AS[name] else {}), counted
        assert controller.pendingTransactionCount == 1, f"{name}: the forgery ended the transaction"
        clock.advance(1.0)  # still retransmitting, with the same ID
        assert {m.transactionId for m, _ in transport.stunRequests()} == {request.transactionId}
        shared.datagramReceived(bindingResponse(request, MAPPED, key=key), SERVER)
        assert results == [IPv4Address("UDP", *MAPPED)]
        assert clock.getDelayedCalls() == []
    assertNoLoggedFailure(logs)


def keepaliveSetup(credentials: bool) -> Tuple[Clock, NATTraversalController, Any, Any, Any, Observer]:
    clock, controller, shared, transport, other = makeController(credentials, udpKeepaliveInterval=10)
    observer = Observer()
    assert controller.refreshNATBinding(shared, observer, HOP)
    return clock, controller, shared, transport, other, observer


def nextKeepalive(clock: Clock, transport: Any) -> stun.Message:
    transport.clear()
    for _ in range(200):
        clock.advance(0.1)
        if transport.stunRequests():
            return only(transport.stunRequests())
    raise AssertionError("no keepalive within 20 s")


@pytest.mark.parametrize("name,credentials", CASES)
def test_forged_first_keepalive_answer_sets_no_baseline(name: str, credentials: bool) -> None:
    clock, controller, shared, transport, other, observer = keepaliveSetup(credentials)
    key = KEY if credentials else None
    request = nextKeepalive(clock, transport)
    deliver(ALL[name], request, HOP, key, shared, other)
    assert controller.baselineOf(observer) is None, f"{name}: set the baseline"
    shared.datagramReceived(bindingResponse(request, MAPPED, key=key), HOP)  # the genuine first answer
    request = nextKeepalive(clock, transport)
    shared.datagramReceived(bindingResponse(request, MAPPED, key=key), HOP)
    assert observer.failures == [], f"{name}: the forged address became the baseline"
    assert controller.stats["keepalive.answered"] == 2


@pytest.mark.parametrize("name,credentials", CASES)
def test_forged_keepalive_answer_raises_no_mapped_address_changed(name: str, credentials: bool) -> None:
    clock, controller, shared, transport, other, observer = keepaliveSetup(credentials)
    key = KEY if credentials else None
    request = nextKeepalive(clock, transport)
    shared.datagramReceived(bindingResponse(request, MAPPED, key=key), HOP)
    request = nextKeepalive(clock, transport)
    deliver(ALL[name], request, HOP, key, shared, other)
    assert observer.failures == [], f"{name}: forged MappedAddressChanged"
    assert controller.isKeepingAlive(observer)
    # The genuine answer of a real rebinding still gets through, exactly once.
    shared.datagramReceived(bindingResponse(request, ("203.0.113.2", 50000), key=key), HOP)
    assert len(observer.failures) == 1 and observer.failures[0].check(MappedAddressChanged)
    change: Any = observer.failures[0].value
    assert change.new == IPv4Address("UDP", "203.0.113.2", 50000)
    assert clock.getDelayedCalls() == []


def test_credentials_forgeries_are_accepted_without_credentials() -> None:
    """Control: without credentials the MESSAGE-INTEGRITY forgeries are plain answers, so the tests above do
    exercise the integrity check rather than some other drop."""
    for name, forgery in WITH_CREDENTIALS.items():
        clock, controller, shared, transport, other = makeController(False, stunServers=[SERVER])
        results: List[Any] = []
        controller.resolvePublicAddress(None, shared, HOP).addBoth(results.append)
        deliver(forgery, only(transport.stunRequests()), SERVER, None, shared, other)
        assert len(results) == 1, name


@pytest.mark.parametrize("credentials", [False, True])
def test_replay_of_an_old_answer_after_the_transaction_ended(credentials: bool) -> None:
    clock, controller, shared, transport, other = makeController(credentials, stunServers=[SERVER])
    key = KEY if credentials else None
    first: List[Any] = []
    controller.resolvePublicAddress(None, shared, HOP).addBoth(first.append)
    old = bindingResponse(only(transport.stunRequests()), MAPPED, key=key)
    shared.datagramReceived(old, SERVER)
    assert first == [IPv4Address("UDP", *MAPPED)]
    shared.datagramReceived(old, SERVER)  # a duplicate of the answer: nothing fires twice
    transport.clear()
    second: List[Any] = []
    controller.resolvePublicAddress(None, shared, HOP).addBoth(second.append)
    request = only(transport.stunRequests())
    shared.datagramReceived(old, SERVER)  # the genuine, correctly signed old answer, replayed
    assert second == [] and controller.pendingTransactionCount == 1
    assert controller.stats["stun.dropped.unmatched"] == 2
    shared.datagramReceived(bindingResponse(request, ("203.0.113.2", 50000), key=key), SERVER)
    assert second == [IPv4Address("UDP", "203.0.113.2", 50000)]


def test_replayed_keepalive_answer_cannot_fake_a_rebinding() -> None:
    """An answer captured on an earlier keepalive (signed, genuine, with the address before a change) is
    replayed while the next one is in flight: dropped as unmatched."""
    clock, controller, shared, transport, other, observer = keepaliveSetup(True)
    request = nextKeepalive(clock, transport)
    captured = bindingResponse(request, ("203.0.113.2", 50000), key=KEY)  # never delivered in time
    clock.advance(0.01)
    shared.datagramReceived(bindingResponse(request, MAPPED, key=KEY), HOP)
    request = nextKeepalive(clock, transport)
    shared.datagramReceived(captured, HOP)
    assert observer.failures == [] and controller.stats["stun.dropped.unmatched"] == 1
    shared.datagramReceived(bindingResponse(request, MAPPED, key=KEY), HOP)
    assert observer.failures == []


def test_answer_from_the_old_next_hop_after_update_next_hop() -> None:
    clock, controller, shared, transport, other, observer = keepaliveSetup(False)
    request = nextKeepalive(clock, transport)
    controller.updateNextHop(HOP2, observer)
    shared.datagramReceived(bindingResponse(request, EVIL), HOP)  # the old hop answers: no longer trusted
    assert controller.baselineOf(observer) is None and controller.pendingTransactionCount == 1
    shared.datagramReceived(bindingResponse(request, MAPPED), HOP2)
    assert controller.baselineOf(observer) == IPv4Address("UDP", *MAPPED)


def test_address_after_message_integrity_is_not_used() -> None:
    """RFC 8489 §14.5: attributes after MESSAGE-INTEGRITY are not authenticated; an on-path attacker appending an
    XOR-MAPPED-ADDRESS to a genuinely signed answer must not change the result."""
    from .forgeries import _appendedAfterIntegrity

    clock, controller, shared, transport, other = makeController(True, stunServers=[SERVER])
    results: List[Any] = []
    controller.resolvePublicAddress(None, shared, HOP).addBoth(results.append)
    data, source, _ = _appendedAfterIntegrity(only(transport.stunRequests()), SERVER, KEY)
    shared.datagramReceived(data, source)
    assert results == [IPv4Address("UDP", *MAPPED)]


def test_forged_answers_in_bulk_leave_no_state() -> None:
    """10,000 forged answers with random transaction IDs from random sources: all dropped, nothing kept."""
    clock, controller, shared, transport, other = makeController(False, stunServers=[SERVER])
    results: List[Any] = []
    controller.resolvePublicAddress(None, shared, HOP).addBoth(results.append)
    request = only(transport.stunRequests())
    rng = random.Random(99)
    for _ in range(10_000):
        tid = rng.randbytes(12)
        shared.datagramReceived(bindingResponse(request, EVIL, transactionId=tid),
                                (f"198.51.{rng.randrange(256)}.{rng.randrange(256)}", rng.randrange(1, 65536)))
    assert results == [] and controller.pendingTransactionCount == 1
    assert controller.stats["stun.dropped.unmatched"] == 10_000
    shared.datagramReceived(bindingResponse(request, MAPPED), SERVER)
    assert results == [IPv4Address("UDP", *MAPPED)]
