"""
resolvePublicAddress with a Clock and a recording UDP transport: RFC 8489 timers to the instant, matching,
spoofing, failover, redirects, error responses, credentials, cancellation and the per-server outstanding limit.
"""

from __future__ import annotations

from typing import Any, List, Tuple

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from tests.addresses import HOP, SERVER
from tests.addresses import OTHER_SERVER as OTHER
from twisted_sipnat import (
    NATSettings,
    NATTraversalController,
    NATTraversalError,
    STUNErrorResponse,
    STUNTimeout,
    stun,
)
from twisted_sipnat.testing import bindingResponse, sharedDatagramSocket

MAPPED = ("203.0.113.1", 40000)


def outcome(d: Deferred[Any]) -> List[Any]:
    box: List[Any] = []
    d.addBoth(box.append)
    return box


def makeController(clock: Clock, **settings: Any) -> NATTraversalController:
    return NATTraversalController(NATSettings(**settings), reactor=clock)


def resolving(**settings: Any) -> Tuple[Clock, NATTraversalController, Any, Any, List[Any]]:
    """A controller on a Clock and a recording socket, with one resolvePublicAddress toward HOP started."""
    clock = Clock()
    controller = makeController(clock, **settings)
    shared, transport = sharedDatagramSocket(controller)
    return clock, controller, shared, transport, outcome(controller.resolvePublicAddress(None, shared, HOP))


def sendInstants(clock: Clock, transport: Any, until: float, step: float = 0.25) -> List[float]:
    instants = []
    while clock.seconds() < until:
        before = len(transport.written)
        clock.advance(step)
        instants.extend([clock.seconds()] * (len(transport.written) - before))
    return instants


def test_retransmission_timeline_and_timeout_at_39_5_seconds() -> None:
    clock = Clock()
    controller = makeController(clock, stunServers=[SERVER])
    shared, transport = sharedDatagramSocket(controller)
    result = outcome(controller.resolvePublicAddress("example.com", shared, HOP))
    assert [addr for _, addr in transport.written] == [SERVER]
    instants = [0.0] + sendInstants(clock, transport, 39.0)
    assert instants == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert result == []
    clock.advance(0.25)  # 39.25
    assert result == []
    clock.advance(0.25)  # 39.5
    assert len(result) == 1 and isinstance(result[0], Failure)
    assert result[0].check(STUNTimeout)
    assert result[0].value.servers == (SERVER,)
    assert clock.getDelayedCalls() == []
    # every retransmission is the same request (same transaction ID)
    assert len({data for data, _ in transport.written}) == 1


def test_success_gives_ipv4address_and_leaves_no_timer() -> None:
    clock = Clock()
    controller = makeController(clock, stunServers=[SERVER])
    shared, transport = sharedDatagramSocket(controller)
    result = outcome(controller.resolvePublicAddress("example.com", shared, HOP))
    (request, addr), = transport.stunRequests()
    shared.datagramReceived(bindingResponse(request, MAPPED), SERVER)
    assert result == [IPv4Address("UDP", *MAPPED)]
    assert clock.getDelayedCalls() == []
    assert controller.pendingTransactionCount == 0


def test_request_carries_software_and_fingerprint() -> None:
    clock = Clock()
    controller = makeController(clock, stunServers=[SERVER])
    shared, transport = sharedDatagramSocket(controller)
    controller.resolvePublicAddress(None, shared, HOP)
    (request, _), = transport.stunRequests()
    assert request.method == stun.BINDING and request.messageClass == stun.REQUEST
    assert request.software is not None and request.software.startswith("twisted_sipnat/")
    assert request.hasFingerprint and request.verifyFingerprint()
    assert not request.hasIntegrity


def test_software_none_leaves_it_out() -> None:
    clock = Clock()
    controller = makeController(clock, stunServers=[SERVER], software=None)
    shared, transport = sharedDatagramSocket(controller)
    controller.resolvePublicAddress(None, shared, HOP)
    (request, _), = transport.stunRequests()
    assert request.software is None


def test_mapped_address_only_response_is_accepted() -> None:
    clock, controller, shared, transport, result = resolving(stunServers=[SERVER])
    (request, _), = transport.stunRequests()
    response = stun.Message(stun.BINDING, stun.SUCCESS, request.transactionId,
                            [stun.MappedAddress("203.0.113.9", 1234)]).encode(fingerprint=False)
    shared.datagramReceived(response, SERVER)
    assert result == [IPv4Address("UDP", "203.0.113.9", 1234)]


def test_spoofed_responses_are_ignored_and_counted() -> None:
    clock, controller, shared, transport, result = resolving(stunServers=[SERVER])
    (request, _), = transport.stunRequests()
    # right transaction ID, wrong source (address, then port)
    shared.datagramReceived(bindingResponse(request, ("6.6.6.6", 666)), ("198.51.100.99", 3478))
    shared.datagramReceived(bindingResponse(request, ("6.6.6.6", 666)), (SERVER[0], 3479))
    # right source, wrong transaction ID
    shared.datagramReceived(bindingResponse(request, ("6.6.6.6", 666), transactionId=b"\x01" * 12), SERVER)
    # right everything but a broken FINGERPRINT
    shared.datagramReceived(bindingResponse(request, ("6.6.6.6", 666), corruptFingerprint=True), SERVER)
    assert result == []
    assert controller.stats["stun.dropped.wrong-source"] == 2
    assert controller.stats["stun.dropped.unmatched"] == 1
    assert controller.stats["stun.dropped.bad-fingerprint"] == 1
    shared.datagramReceived(bindingResponse(request, MAPPED), SERVER)
    assert result == [IPv4Address("UDP", *MAPPED)]


def test_failover_to_the_next_server_after_a_timeout() -> None:
    clock, controller, shared, transport, result = resolving(stunServers=[SERVER, OTHER])
    clock.advance(39.4)
    assert all(addr == SERVER for _, addr in transport.written)
    transport.clear()
    clock.advance(0.1)
    (request, addr), = transport.stunRequests()
    assert addr == OTHER
    shared.datagramReceived(bindingResponse(request, MAPPED), OTHER)
    assert result == [IPv4Address("UDP", *MAPPED)]
    assert clock.getDelayedCalls() == []


def test_every_server_times_out_gives_stuntimeout_naming_them() -> None:
    clock, controller, shared, transport, result = resolving(stunServers=[SERVER, OTHER])
    clock.advance(39.5)
    assert result == []
    clock.advance(39.5)
    assert result[0].check(STUNTimeout)
    assert result[0].value.servers == (SERVER, OTHER)


def test_error_response_moves_on_at_once_and_last_error_wins() -> None:
    clock, controller, shared, transport, result = resolving(stunServers=[SERVER, OTHER])
    (request, _), = transport.stunRequests()
    transport.clear()
    shared.datagramReceived(bindingResponse(request, error=(500, "Server Error")), SERVER)
    (request2, addr2), = transport.stunRequests()
    assert addr2 == OTHER and clock.seconds() == 0
    shared.datagramReceived(bindingResponse(request2, error=(403, "Forbidden")), OTHER)
    assert result[0].check(STUNErrorResponse)
    assert (result[0].value.code, result[0].value.reason, result[0].value.server) == (403, "Forbidden", OTHER)
    assert clock.getDelayedCalls() == []


def test_error_then_timeout_reports_the_error() -> None:
    clock, controller, shared, transport, result = resolving(stunServers=[SERVER, OTHER])
    (request, _), = transport.stunRequests()
    shared.datagramReceived(bindingResponse(request, error=(401, "Unauthorized")), SERVER)
    clock.advance(39.5)
    assert result[0].check(STUNErrorResponse) and result[0].value.code == 401


def test_300_try_alternate_redirects_once_per_server() -> None:
    clock, controller, shared, transport, result = resolving(stunServers=[SERVER])
    (request, _), = transport.stunRequests()
    transport.clear()
    shared.datagramReceived(bindingResponse(request, error=(300, "Try Alternate"), alternate=OTHER), SERVER)
    (request2, addr2), = transport.stunRequests()
    assert addr2 == OTHER
    transport.clear()
    # the alternate redirects back: not followed again
    shared.datagramReceived(bindingResponse(request2, error=(300, "Try Alternate"), alternate=SERVER), OTHER)
    assert transport.written == []
    assert result[0].check(STUNErrorResponse) and result[0].value.code == 300


def test_cancel_stops_retransmitting_and_leaves_no_timer() -> None:
    clock = Clock()
    controller = makeController(clock, stunServers=[SERVER])
    shared, transport = sharedDatagramSocket(controller)
    d = controller.resolvePublicAddress(None, shared, HOP)
    result = outcome(d)
    clock.advance(0.5)
    d.cancel()
    assert result[0].check(CancelledError)
    assert clock.getDelayedCalls() == []
    sent = len(transport.written)
    clock.advance(60)
    assert len(transport.written) == sent
    assert controller.pendingTransactionCount == 0


def test_unknown_domain_raises_synchronously() -> None:
    clock = Clock()
    controller = NATTraversalController({"a.example": NATSettings(stunServers=[SERVER])}, reactor=clock)
    shared, _ = sharedDatagramSocket(controller)
    with pytest.raises(NATTraversalError):
        controller.resolvePublicAddress("b.example", shared, HOP)
    with pytest.raises(NATTraversalError):
        controller.resolvePublicAddress("a.example", shared, ("198.51.100.1", "5060"))
    assert clock.getDelayedCalls() == []


def test_next_hop_is_the_stun_server_when_none_configured() -> None:
    clock, controller, shared, transport, result = resolving()
    (request, addr), = transport.stunRequests()
    assert addr == HOP
    shared.datagramReceived(bindingResponse(request, MAPPED), HOP)
    assert result == [IPv4Address("UDP", *MAPPED)]


def test_credentials_sign_requests_and_unsigned_responses_are_dropped() -> None:
    clock, controller, shared, transport, result = resolving(stunServers=[SERVER], username="alice", password="s3cret")
    (request, _), = transport.stunRequests()
    key = stun.shortTermKey("s3cret")
    assert request.get(stun.USERNAME) is not None and request.verifyIntegrity(key)
    shared.datagramReceived(bindingResponse(request, ("6.6.6.6", 1)), SERVER)
    shared.datagramReceived(bindingResponse(request, ("6.6.6.6", 1), key=b"wrong"), SERVER)
    assert result == [] and controller.stats["stun.dropped.bad-integrity"] == 2
    shared.datagramReceived(bindingResponse(request, MAPPED, key=key), SERVER)
    assert result == [IPv4Address("UDP", *MAPPED)]


def test_at_most_ten_outstanding_per_socket_and_server() -> None:
    clock = Clock()
    controller = makeController(clock, stunServers=[SERVER])
    shared, transport = sharedDatagramSocket(controller)
    results = [outcome(controller.resolvePublicAddress(None, shared, HOP)) for _ in range(12)]
    first = transport.stunRequests()
    assert len(first) == 10
    transport.clear()
    shared.datagramReceived(bindingResponse(first[0][0], MAPPED), SERVER)
    assert results[0] == [IPv4Address("UDP", *MAPPED)]
    assert len(transport.stunRequests()) == 1  # the eleventh starts in the freed slot
    controller.freeResources()
    assert all(r and isinstance(r[0], Failure) and r[0].check(CancelledError) for r in results[1:])
    assert clock.getDelayedCalls() == []


def test_ipv6_socket_and_server() -> None:
    clock = Clock()
    server = ("2001:db8::7", 3478)
    controller = makeController(clock, stunServers=[("2001:DB8:0::7", 3478)])
    shared, transport = sharedDatagramSocket(controller, host="2001:db8::10")
    result = outcome(controller.resolvePublicAddress(None, shared, ("2001:db8::1", 5060)))
    (request, addr), = transport.stunRequests()
    assert addr == server
    # Twisted gives IPv6 sources as 4-tuples
    shared.datagramReceived(bindingResponse(request, ("2001:db8::99", 5062)), ("2001:db8::7", 3478, 0, 0))
    assert result == [IPv6Address("UDP", "2001:db8::99", 5062)]


def test_free_resources_for_one_observer_cancels_only_its_resolutions() -> None:
    clock = Clock()
    controller = makeController(clock, stunServers=[SERVER])
    shared, _ = sharedDatagramSocket(controller)
    mine, theirs = object(), object()
    a = outcome(controller.resolvePublicAddress(None, shared, HOP, observer=mine))
    b = outcome(controller.resolvePublicAddress(None, shared, HOP, observer=theirs))
    controller.freeResources(mine)
    assert a[0].check(CancelledError) and b == []
    controller.freeResources()
    assert b[0].check(CancelledError)
    assert clock.getDelayedCalls() == []


def test_rto_is_learned_from_answers_and_forgotten_after_a_timeout() -> None:
    clock = Clock()
    controller = makeController(clock, stunServers=[SERVER])
    shared, transport = sharedDatagramSocket(controller)
    outcome(controller.resolvePublicAddress(None, shared, HOP))
    clock.advance(0.4)  # answered before any retransmission: a valid RTT sample (Karn's rule)
    (request, _), = transport.stunRequests()
    shared.datagramReceived(bindingResponse(request, MAPPED), SERVER)
    # RFC 6298: SRTT = 0.4, RTTVAR = 0.2, RTO = SRTT + 4 RTTVAR = 1.2 s for the next transaction
    transport.clear()
    outcome(controller.resolvePublicAddress(None, shared, HOP))
    clock.advance(1.19)
    assert len(transport.written) == 1
    clock.advance(0.02)
    assert len(transport.written) == 2
    clock.advance(100)  # it times out: the estimate is dropped, the next one starts at the configured 0.5 s
    transport.clear()
    result = outcome(controller.resolvePublicAddress(None, shared, HOP))
    clock.advance(0.5)
    assert len(transport.written) == 2
    clock.advance(39.0)
    assert result[0].check(STUNTimeout) and result[0].value.elapsed == pytest.approx(39.5)
    controller.freeResources()


def test_a_response_with_unknown_comprehension_required_attributes_fails_that_server() -> None:
    """RFC 8489 §6.3.3: discarded, and the transaction has failed: the next server is asked at once."""
    clock, controller, shared, transport, result = resolving(stunServers=[SERVER, OTHER])
    (request, _), = transport.stunRequests()
    transport.clear()
    shared.datagramReceived(bindingResponse(request, ("6.6.6.6", 6), extra=[stun.RawAttribute(0x7F00, b"zz")]), SERVER)
    assert result == [] and controller.stats["stun.dropped.unknown-comprehension-required"] == 1
    (request2, addr2), = transport.stunRequests()
    assert addr2 == OTHER
    shared.datagramReceived(bindingResponse(request2, MAPPED, extra=[stun.RawAttribute(0xC000, b"ok")]), OTHER)
    assert result == [IPv4Address("UDP", *MAPPED)]  # comprehension-optional ones are fine
    assert clock.getDelayedCalls() == []
