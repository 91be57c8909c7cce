"""
Issue 13, the STUN responder: the 400 path answers in kind and drops a wrong FINGERPRINT, RFC 3489 clients are
answered (RFC 8489 §12.2), RESPONSE-PORT is honoured over UDP (RFC 5780 §7.5) and ignored over TCP, and what the
responder drops is counted and said in one line per interval.

Every test here fails on the code before the fix (400 without FINGERPRINT, 400 for a wrong FINGERPRINT, no answer
for a cookie-less request, 420 for RESPONSE-PORT, nothing counted or said).  Requests are built byte for byte,
and RFC 3489 answers read byte for byte, so no test depends on the codec it checks.
"""

from __future__ import annotations

import ipaddress
import struct
import zlib
from typing import Any, Dict, List, Tuple

import pytest
from fuzz.support import ciSettings
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

from twisted_sipnat import stun
from twisted_sipnat.core.responder import AMPLIFICATION_FLOOR, BindingResponder, RateLimit
from twisted_sipnat.core.stun import StreamFramer
from twisted_sipnat.service.stunstream import STUNStreamFactory
from twisted_sipnat.testing import sharedDatagramSocket

CLIENT = ("198.51.100.7", 40000)
PRIMARY = ("192.0.2.10", 3478)
ALTERNATE = ("192.0.2.11", 3479)
TID16 = bytes(range(0xA0, 0xB0))  # an RFC 3489 transaction ID: 128 bits, no magic cookie
FP_XOR = 0x5354554E


def fingerprinted(body: bytes, tid: bytes = bytes(range(1, 13)), crcFlip: int = 0) -> bytes:
    """A Binding request header around ``body``, then a FINGERPRINT over it all (``crcFlip`` spoils it)."""
    head = struct.pack("!HHI12s", 0x0001, len(body) + 8, 0x2112A442, tid) + body
    return head + struct.pack("!HHI", 0x8028, 4, (zlib.crc32(head) ^ FP_XOR) ^ crcFlip)


#: An attribute that cannot decode: XOR-MAPPED-ADDRESS of 4 bytes (an address needs 8 or 20).
BROKEN = struct.pack("!HH", 0x0020, 4) + b"\0\0\0\0"


def classicRequest(attributes: bytes = b"", tid: bytes = TID16) -> bytes:
    return struct.pack("!HH", 0x0001, len(attributes)) + tid + attributes


def classicAttributes(data: bytes) -> Dict[int, bytes]:
    """The attributes of an RFC 3489 message, by type, read byte for byte."""
    (length,) = struct.unpack_from("!H", data, 2)
    assert length + 20 == len(data)
    out: Dict[int, bytes] = {}
    pos = 20
    while pos < len(data):
        atype, alen = struct.unpack_from("!HH", data, pos)
        out[atype] = data[pos + 4 : pos + 4 + alen]
        pos += 4 + alen + (-alen & 3)
    return out


def plainAddress(value: bytes) -> Tuple[str, int]:
    family, port = struct.unpack_from("!xBH", value)
    assert family == 1
    return str(ipaddress.IPv4Address(value[4:8])), port


def serverSocket(**kwargs: Any) -> Tuple[Any, Any, Clock]:
    clock = Clock()
    shared, transport = sharedDatagramSocket(None, None, host=PRIMARY[0], port=PRIMARY[1], clock=clock, **kwargs)
    return shared, transport, clock


class LogLines:
    """The text of every log event in the twisted_sipnat namespaces, while in a ``with``."""

    def __init__(self) -> None:
        self.events: List[LogEvent] = []

    def __call__(self, event: LogEvent) -> None:
        if str(event.get("log_namespace", "")).startswith("twisted_sipnat"):
            self.events.append(event)

    def __enter__(self) -> LogLines:
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        globalLogPublisher.removeObserver(self)

    @property
    def lines(self) -> List[str]:
        return [formatEvent(e) for e in self.events]


# ---- the 400 path (RFC 8489 §7.3: answer in kind; a wrong FINGERPRINT is not STUN meant for us) ------------


def test_undecodable_request_with_a_valid_fingerprint_gets_a_400_with_fingerprint() -> None:
    shared, transport, _ = serverSocket(stunResponder=True)
    shared.datagramReceived(fingerprinted(BROKEN), CLIENT)
    (answer, to), = transport.written
    assert to == CLIENT
    message = stun.decode(answer)
    assert message.errorCode == (400, "Bad Request")
    assert message.hasFingerprint and message.verifyFingerprint(), "answered in kind"
    assert len(answer) <= AMPLIFICATION_FLOOR


def test_undecodable_request_with_a_wrong_fingerprint_is_dropped() -> None:
    shared, transport, _ = serverSocket(stunResponder=True)
    shared.datagramReceived(fingerprinted(BROKEN, crcFlip=1), CLIENT)
    assert transport.written == []
    assert shared.responder.malformed == 1


def test_undecodable_request_without_fingerprint_gets_a_400_without() -> None:
    shared, transport, _ = serverSocket(stunResponder=True)
    data = struct.pack("!HHI12s", 0x0001, len(BROKEN), 0x2112A442, bytes(12)) + BROKEN
    shared.datagramReceived(data, CLIENT)
    (answer, _), = transport.written
    message = stun.decode(answer)
    assert message.errorCode == (400, "Bad Request") and not message.hasFingerprint


# ---- RFC 3489 clients (RFC 8489 §12.2, RFC 3489 §11.2.1) -----------------------------------------------------


def test_rfc3489_binding_request_gets_mapped_address_and_its_whole_transaction_id() -> None:
    shared, transport, _ = serverSocket(stunResponder=True)
    request = classicRequest()
    shared.datagramReceived(request, CLIENT)
    (answer, to), = transport.written
    assert to == CLIENT
    assert answer[:2] == b"\x01\x01", "a Binding success response"
    assert answer[4:20] == TID16, "the 128-bit transaction ID echoed, no magic cookie"
    attributes = classicAttributes(answer)
    assert plainAddress(attributes[0x0001]) == CLIENT, "MAPPED-ADDRESS"
    assert 0x0020 not in attributes and 0x8028 not in attributes, "no XOR-MAPPED-ADDRESS, no FINGERPRINT"
    assert 0x8022 not in attributes, "no SOFTWARE: RFC 3489 has none"
    assert len(answer) <= max(len(request), AMPLIFICATION_FLOOR)


def test_rfc3489_with_alternate_gets_source_and_changed_address_and_change_request_is_honoured() -> None:
    responder = BindingResponder(primary=PRIMARY, alternate=ALTERNATE)
    change = struct.pack("!HHI", 0x0003, 4, 0x06)  # CHANGE-REQUEST: change IP and port
    reply = responder.respond(classicRequest(change), CLIENT, receivedOn=PRIMARY)
    assert reply is not None
    attributes = classicAttributes(reply.data)
    assert plainAddress(attributes[0x0001]) == CLIENT
    assert plainAddress(attributes[0x0004]) == ALTERNATE, "SOURCE-ADDRESS: where it is sent from"
    assert plainAddress(attributes[0x0005]) == ALTERNATE, "CHANGED-ADDRESS"
    assert reply.sendFrom == ALTERNATE
    plain = responder.respond(classicRequest(), CLIENT, receivedOn=PRIMARY)
    assert plain is not None and plain.sendFrom is None
    assert plainAddress(classicAttributes(plain.data)[0x0004]) == PRIMARY


def test_rfc3489_response_address_gets_an_even_420() -> None:
    """RESPONSE-ADDRESS would aim the answer at any address: refused (RFC 8489 §12.2), the list padded to 4 bytes."""
    responder = BindingResponder()
    reply = responder.respond(classicRequest(struct.pack("!HHxBH4s", 0x0002, 8, 1, 5060, bytes([203, 0, 113, 9]))),
                              CLIENT)
    assert reply is not None and reply.sendTo is None
    attributes = classicAttributes(reply.data)
    assert attributes[0x0009][2:4] == bytes([4, 20]), "420"
    assert attributes[0x000A] == b"\x00\x02\x00\x02", "RFC 3489 §11.2.11: an odd list repeats a type"
    assert reply.data[4:20] == TID16


def test_the_client_side_still_refuses_rfc3489_messages() -> None:
    """Only a server answers RFC 3489: the codec's client paths and a client's socket refuse such messages."""
    answer = BindingResponder().respond(classicRequest(), CLIENT)
    assert answer is not None
    assert stun.peekHeader(answer.data) is None and not stun.isSTUN(answer.data)
    with pytest.raises(stun.STUNDecodeError):
        stun.decode(answer.data)
    with pytest.raises(stun.STUNDecodeError):
        StreamFramer().feed(answer.data)

    class Controller:
        seen: List[bytes] = []

        def dataReceived(self, data: bytes, sock: Any, addr: Any) -> bool:
            self.seen.append(data)
            return True

        def socketClosed(self, sock: Any) -> None:
            pass

    controller = Controller()
    shared, transport = sharedDatagramSocket(controller, None)
    shared.datagramReceived(answer.data, ("192.0.2.99", 3478))
    assert controller.seen == [] and transport.written == []
    assert shared.stats["dropped.not-stun"] == 1, "as before: a client socket never took these"


# ---- RESPONSE-PORT (RFC 5780 §7.5) ----------------------------------------------------------------------------


def test_response_port_sends_to_the_source_ip_at_that_port() -> None:
    shared, transport, _ = serverSocket(stunResponder=True)
    request = stun.Message(stun.BINDING, stun.REQUEST, None, [stun.ResponsePort(50000)])
    shared.datagramReceived(request.encode(), CLIENT)
    (answer, to), = transport.written
    assert to == (CLIENT[0], 50000), "the source IP, the asked-for port"
    message = stun.decode(answer)
    assert message.messageClass == stun.SUCCESS and message.transactionId == request.transactionId
    assert message.mappedAddress == CLIENT, "XOR-MAPPED-ADDRESS is still where the request came from"
    assert message.verifyFingerprint()


def test_response_port_with_rfc5780_alternates_and_change_request() -> None:
    responder = BindingResponder(primary=PRIMARY, alternate=ALTERNATE)
    shared, transport, _ = serverSocket(responder=responder)
    alternateTransport = type(transport)(*ALTERNATE)
    shared.alternateSockets[ALTERNATE] = alternateTransport
    request = stun.Message(stun.BINDING, stun.REQUEST, None, [stun.ResponsePort(50001), stun.ChangeRequest(True, True)])
    shared.datagramReceived(request.encode(), CLIENT)
    assert transport.written == []
    (answer, to), = alternateTransport.written
    assert to == (CLIENT[0], 50001)
    message = stun.decode(answer)
    assert message.responseOrigin == ALTERNATE and message.otherAddress == ALTERNATE
    assert len(answer) <= AMPLIFICATION_FLOOR


def test_response_port_zero_gets_a_400_at_the_source() -> None:
    shared, transport, _ = serverSocket(stunResponder=True)
    raw = stun.RawAttribute(0x0027, b"\0\0\0\0")
    shared.datagramReceived(stun.Message(stun.BINDING, stun.REQUEST, None, [raw]).encode(), CLIENT)
    (answer, to), = transport.written
    assert to == CLIENT and stun.decode(answer).errorCode == (400, "RESPONSE-PORT 0")


def test_padding_is_still_420() -> None:
    shared, transport, _ = serverSocket(stunResponder=True)
    request = stun.Message(stun.BINDING, stun.REQUEST, None, [stun.Padding(bytes(400)), stun.ResponsePort(50000)])
    shared.datagramReceived(request.encode(), CLIENT)
    (answer, to), = transport.written
    assert to == CLIENT, "a refused request is answered at its source"
    assert stun.decode(answer).errorCode == (420, "Unknown Attribute")


def test_response_port_over_tcp_is_answered_on_the_connection() -> None:
    """RFC 5780 §7.5 is about UDP: over a stream the answer can only go back on the connection."""
    factory = STUNStreamFactory(BindingResponder(), Clock())
    proto = factory.buildProtocol(IPv4Address("TCP", *CLIENT))
    transport = StringTransport(hostAddress=IPv4Address("TCP", *PRIMARY), peerAddress=IPv4Address("TCP", *CLIENT))
    proto.makeConnection(transport)
    request = stun.Message(stun.BINDING, stun.REQUEST, None, [stun.ResponsePort(50000)])
    proto.dataReceived(request.encode())
    (answer,) = StreamFramer().feed(transport.value())
    message = stun.decode(answer)
    assert message.messageClass == stun.SUCCESS and message.mappedAddress == CLIENT


def test_response_port_cannot_steer_to_another_ip_or_past_the_rate_limit() -> None:
    responder = BindingResponder(rateLimit=RateLimit(1.0, 3))
    shared, transport, _ = serverSocket(responder=responder)
    for port in range(50000, 50010):
        shared.datagramReceived(
            stun.Message(stun.BINDING, stun.REQUEST, None, [stun.ResponsePort(port)]).encode(), CLIENT)
    assert [to for _, to in transport.written] == [(CLIENT[0], p) for p in (50000, 50001, 50002)]
    assert responder.rateLimited == 7


# ---- figures and drop lines -----------------------------------------------------------------------------------


def test_two_hundred_requests_from_one_source_are_counted_and_said_once_per_interval() -> None:
    """The issue: 200 requests from one source, 40 answers, nothing said.  Now: counted, and two lines."""
    shared, transport, clock = serverSocket(stunResponder=True)
    with LogLines() as log:
        for _ in range(200):
            shared.datagramReceived(stun.Message(stun.BINDING, stun.REQUEST).encode(), CLIENT)
        assert len(transport.written) == 40
        clock.advance(10)  # the summary timer
        shared.doStop()
    responder = shared.responder
    assert (responder.answered, responder.rateLimited) == (40, 160)
    lines = [line for line in log.lines if "rate-limited" in line]
    assert lines == [
        "dropped 1 rate-limited STUN request from 1 source in the last 0 s",
        "dropped 159 rate-limited STUN requests from 1 source in the last 10 s",
    ]
    assert all(e.get("sipnat_event") == "stun.dropped" for e in log.events if "rate-limited" in formatEvent(e))
    assert clock.getDelayedCalls() == []


def test_a_malformed_flood_is_said_in_one_line_per_interval() -> None:
    shared, transport, clock = serverSocket(responder=BindingResponder())
    with LogLines() as log:
        for i in range(1000):
            shared.datagramReceived(fingerprinted(BROKEN, crcFlip=1), (f"203.0.113.{i % 50}", 5000 + i))
        clock.advance(10)
    assert transport.written == []
    assert shared.responder.malformed == 1000
    lines = [line for line in log.lines if "malformed" in line]
    assert lines == [
        "dropped 1 malformed STUN request from 1 source in the last 0 s",
        "dropped 999 malformed STUN requests from 50 sources in the last 10 s",
    ]


def test_the_stun_role_reports_requests_by_result() -> None:
    from tests.service.support import NetReactor
    from twisted_sipnat.service.figures import Figures
    from twisted_sipnat.service.stunserver import STUNRole

    net = NetReactor()
    role = STUNRole(net, udp=(3478, "127.0.0.1"), rateLimit=(1.0, 2))
    role.startService()
    client = net.listenUDP(0, DatagramProtocol())
    for _ in range(3):
        client.write(stun.Message(stun.BINDING, stun.REQUEST).encode(), ("127.0.0.1", 3478))
    client.write(fingerprinted(BROKEN), ("127.0.0.1", 3478))
    client.write(stun.Message(stun.BINDING, stun.REQUEST, None, [stun.Padding(b"x")]).encode(), ("127.0.0.1", 3478))
    net.run(0.2)
    figures = Figures()
    role.reportFigures(figures)
    assert figures.get("sipnat_stun_requests_total", result="answered") == 2
    assert figures.get("sipnat_stun_requests_total", result="rate_limited") == 3
    client.stopListening()
    role.stopService()
    net.advance(60)
    assert net.getDelayedCalls() == []



# ---- the amplification bound holds for the new answers too ------------------------------------------------------

attributeBodies = st.lists(
    st.tuples(st.sampled_from([0x0001, 0x0002, 0x0003, 0x0006, 0x0008, 0x0027, 0x8022, 0x8028, 0x0042, 0x8042]),
              st.binary(max_size=24)),
    max_size=6,
).map(lambda attrs: b"".join(struct.pack("!HH", t, len(v)) + v + bytes(-len(v) & 3) for t, v in attrs))


@ciSettings
@given(attributeBodies, st.binary(min_size=16, max_size=16), st.booleans(), st.booleans())
def test_rfc3489_and_response_port_answers_stay_within_the_bound(body: bytes, tid: bytes, alternate: bool,
                                                                 stream: bool) -> None:
    responder = BindingResponder(primary=PRIMARY, alternate=ALTERNATE) if alternate else BindingResponder()
    if tid[:4] == b"\x21\x12\xa4\x42":
        tid = b"\0" + tid[1:]
    for data in (classicRequest(body, tid), struct.pack("!HHI12s", 1, len(body), 0x2112A442, tid[4:]) + body):
        reply = responder.respond(data, CLIENT, receivedOn=PRIMARY, stream=stream)
        if reply is None:
            continue
        assert len(reply.data) <= max(len(data), AMPLIFICATION_FLOOR)
        if reply.sendTo is not None:
            assert reply.sendTo[0] == CLIENT[0] and not stream, "RESPONSE-PORT never names another IP"
        if data[4:8] != b"\x21\x12\xa4\x42":
            assert not stream, "no RFC 3489 over a stream"
            assert reply.data[4:20] == tid and 0x8028 not in classicAttributes(reply.data)


def test_a_shared_socket_reports_its_responder_and_stream_requests_count_in_the_responder() -> None:
    """A shared socket reports its responder; STUN/TCP requests are counted by the (shared) responder, which
    the stun role reports once (its stream factory reports the connection table)."""
    from twisted_sipnat.service.figures import Figures

    shared, transport, _ = serverSocket(stunResponder=True)
    shared.datagramReceived(stun.Message(stun.BINDING, stun.REQUEST).encode(), CLIENT)
    shared.datagramReceived(fingerprinted(BROKEN), CLIENT)
    figures = Figures()
    shared.reportFigures(figures)
    assert figures.get("sipnat_stun_requests_total", result="answered") == 1
    assert figures.get("sipnat_stun_requests_total", result="malformed") == 1
    responder = BindingResponder()
    factory = STUNStreamFactory(responder, Clock())
    proto = factory.buildProtocol(IPv4Address("TCP", *CLIENT))
    proto.makeConnection(StringTransport(hostAddress=IPv4Address("TCP", *PRIMARY),
                                         peerAddress=IPv4Address("TCP", *CLIENT)))
    proto.dataReceived(stun.Message(stun.BINDING, stun.REQUEST, None, [stun.RawAttribute(0x0042, b"")]).encode())
    figures = Figures()
    responder.reportFigures(figures)
    assert figures.get("sipnat_stun_requests_total", result="rejected") == 1
