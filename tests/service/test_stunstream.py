"""twisted_sipnat.service.stunstream: STUN over TCP (RFC 8489 §6.2.2) on a StringTransport."""

from __future__ import annotations

from typing import Any, Tuple

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from twisted_sipnat import stun
from twisted_sipnat.core.responder import BindingResponder
from twisted_sipnat.core.stun import StreamFramer
from twisted_sipnat.service.stunstream import STUNStreamFactory, STUNStreamProtocol


def _connection() -> Tuple[STUNStreamProtocol, StringTransport]:
    factory = STUNStreamFactory(BindingResponder(software=None), Clock())
    proto = factory.buildProtocol(IPv4Address("TCP", "192.0.2.10", 40000))
    transport = StringTransport(hostAddress=IPv4Address("TCP", "198.51.100.1", 3478),
                                peerAddress=IPv4Address("TCP", "192.0.2.10", 40000))
    proto.makeConnection(transport)
    return proto, transport


def _answers(transport: StringTransport) -> Any:
    return [stun.decode(m) for m in StreamFramer().feed(transport.value())]


def test_requests_split_and_joined_across_reads_are_each_answered_in_order() -> None:
    proto, transport = _connection()
    first, second = (stun.Message(stun.BINDING, stun.REQUEST) for _ in range(2))
    stream = first.encode() + second.encode()
    proto.dataReceived(stream[:7])  # not even a whole header
    assert transport.value() == b""
    proto.dataReceived(stream[7:30])  # the first whole, the second begun
    proto.dataReceived(stream[30:])
    answers = _answers(transport)
    assert [a.transactionId for a in answers] == [first.transactionId, second.transactionId]
    assert all(a.messageClass == stun.SUCCESS for a in answers)
    assert answers[0].mappedAddress == ("192.0.2.10", 40000), "the TCP peer's address"
    assert not transport.disconnecting


def test_a_stream_that_is_not_stun_is_closed() -> None:
    proto, transport = _connection()
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.disconnecting and transport.value() == b""


def test_a_bad_magic_cookie_at_a_message_boundary_closes_the_connection() -> None:
    proto, transport = _connection()
    request = stun.Message(stun.BINDING, stun.REQUEST)
    proto.dataReceived(request.encode())
    assert len(_answers(transport)) == 1
    bad = bytearray(stun.Message(stun.BINDING, stun.REQUEST).encode())
    bad[4:8] = b"\x00\x00\x00\x00"
    proto.dataReceived(bytes(bad))
    assert transport.disconnecting
    assert len(_answers(transport)) == 1, "nothing more is answered"
