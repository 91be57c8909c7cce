"""
SharedDatagramProtocol: RFC 7983 demultiplexing on one UDP port, SIP datagrams byte for byte and in order, the
SIP protocol writing through the shared socket, the responder role, and malformed input never stopping it.
"""

from __future__ import annotations

from typing import Any, List, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from twisted_sipnat import (
    NATSettings,
    NATTraversalController,
    NATTraversalError,
    SharedStreamFactory,
    stun,
)
from twisted_sipnat.testing import bindingResponse, sharedDatagramSocket

PEER = ("198.51.100.1", 5060)


class SIPRecorder(DatagramProtocol):
    def __init__(self) -> None:
        self.received: List[Tuple[bytes, Any]] = []

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.received.append((datagram, addr))


def test_non_stun_datagrams_reach_the_sip_protocol_unchanged_and_in_order() -> None:
    sip = SIPRecorder()
    shared, transport = sharedDatagramSocket(NATTraversalController(NATSettings(), reactor=Clock()), sip)
    datagrams = [b"REGISTER sip:x SIP/2.0\r\n\r\n", b"\r\n\r\n", b"\x05\x00garbage", b"SIP/2.0 200 OK\r\n\r\n"]
    for d in datagrams:
        shared.datagramReceived(d, PEER)
    assert sip.received == [(d, PEER) for d in datagrams]


def test_keepalive_datagrams_can_be_dropped() -> None:
    sip = SIPRecorder()
    shared, _ = sharedDatagramSocket(None, sip, dropKeepalives=True)
    shared.datagramReceived(b"\r\n\r\n", PEER)
    shared.datagramReceived(b"OPTIONS sip:x SIP/2.0\r\n\r\n", PEER)
    assert sip.received == [(b"OPTIONS sip:x SIP/2.0\r\n\r\n", PEER)]
    assert shared.stats["keepalive.datagrams"] == 1


def test_the_sip_protocol_writes_through_the_shared_socket() -> None:
    sip = SIPRecorder()
    shared, transport = sharedDatagramSocket(None, sip)
    assert sip.transport.sharedSocket is shared
    sip.transport.write(b"INVITE sip:b SIP/2.0\r\n\r\n", PEER)
    assert transport.written == [(b"INVITE sip:b SIP/2.0\r\n\r\n", PEER)]
    assert sip.transport.getHost() == IPv4Address("UDP", "192.0.2.10", 5060)


def test_stun_responses_go_to_the_controller_not_the_sip_protocol() -> None:
    clock = Clock()
    controller = NATTraversalController(NATSettings(), reactor=clock)
    sip = SIPRecorder()
    shared, transport = sharedDatagramSocket(controller, sip)
    result: List[Any] = []
    # the SIP protocol itself can be passed as the socket: it means the shared socket
    controller.resolvePublicAddress(None, sip, PEER).addBoth(result.append)
    (request, addr), = transport.stunRequests()
    shared.datagramReceived(bindingResponse(request, ("203.0.113.1", 1)), addr)
    assert result == [IPv4Address("UDP", "203.0.113.1", 1)] and sip.received == []


def test_responder_answers_binding_requests_with_the_senders_address() -> None:
    shared, transport = sharedDatagramSocket(None, SIPRecorder(), stunResponder=True)
    request = stun.Message(stun.BINDING, stun.REQUEST)
    shared.datagramReceived(request.encode(), ("203.0.113.5", 4242))
    (data, addr), = transport.written
    response = stun.decode(data)
    assert addr == ("203.0.113.5", 4242)
    assert response.messageClass == stun.SUCCESS and response.transactionId == request.transactionId
    assert response.mappedAddress == ("203.0.113.5", 4242)
    assert response.hasFingerprint and response.verifyFingerprint()


def test_responder_does_not_answer_what_the_controller_consumed() -> None:
    clock = Clock()
    controller = NATTraversalController(NATSettings(), reactor=clock)
    shared, transport = sharedDatagramSocket(controller, stunResponder=True)
    controller.resolvePublicAddress(None, shared, PEER)
    (request, addr), = transport.stunRequests()
    transport.clear()
    shared.datagramReceived(bindingResponse(request, ("203.0.113.1", 1)), addr)
    assert transport.written == []  # a response is never answered


@given(st.lists(st.binary(max_size=120), max_size=20))
@settings(max_examples=200, deadline=None)
def test_no_datagram_stops_the_protocol(datagrams: List[bytes]) -> None:
    sip = SIPRecorder()
    controller = NATTraversalController(NATSettings(), reactor=Clock())
    shared, transport = sharedDatagramSocket(controller, sip, stunResponder=True)
    controller.resolvePublicAddress(None, shared, PEER)
    for d in datagrams:
        shared.datagramReceived(d, PEER)
    assert [d for d, _ in sip.received] == [d for d in datagrams if not stun.isSTUN(d)]
    shared.datagramReceived(b"OPTIONS sip:x SIP/2.0\r\n\r\n", PEER)  # still alive
    assert sip.received[-1][0] == b"OPTIONS sip:x SIP/2.0\r\n\r\n"


def test_resolve_refuses_a_stream_socket() -> None:
    controller = NATTraversalController(NATSettings(), reactor=Clock())
    factory = SharedStreamFactory(Factory.forProtocol(Protocol), controller=controller)
    shared = factory.buildProtocol(IPv4Address("TCP", *PEER))
    shared.makeConnection(StringTransport())
    with pytest.raises(NATTraversalError, match="UDP"):
        controller.resolvePublicAddress(None, shared, PEER)
