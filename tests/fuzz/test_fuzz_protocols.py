"""
Fuzzing the shared-socket shells and the controller's entry point with hypothesis:

- ``SharedDatagramProtocol.datagramReceived`` with a recording SIP protocol, a controller that has a
  resolution and a keepalive transaction pending, and the STUN responder on or off;
- ``SharedStreamProtocol.dataReceived`` (on ``twisted.internet.testing.StringTransport``) with SIP messages and
  keepalive-looking CRLFs in any chunking, in the client and the server role, and with arbitrary bytes;
- ``NATTraversalController.dataReceived`` with STUN-shaped bytes, real responses mutated, and anything else.

Every property also asserts that nothing was logged with a traceback (``log_failure``): an exception caught by a
``try``/``log.failure`` is still a bug.  No SIP byte may be lost, altered or reordered.
"""

from __future__ import annotations

import random
from typing import Any, List, Tuple

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from tests.addresses import HOP, SERVER
from twisted_sipnat import NATSettings, NATTraversalController, SharedStreamFactory, stun
from twisted_sipnat.core.responder import AMPLIFICATION_FLOOR
from twisted_sipnat.core.sipframing import IncomingSplitter, Pong, SIPData
from twisted_sipnat.testing import bindingResponse, sharedDatagramSocket

from .stunstrategies import builtMessage, mutatedVector, stunLike
from .support import (
    DatagramRecorder,
    Observer,
    StreamRecorder,
    assertNoLoggedFailure,
    ciSettings,
    fuzzSettings,
    watchingLogs,
)

OTHERS = [SERVER, HOP, ("198.51.100.7", 3479), ("203.0.113.66", 3478), ("2001:db8::1", 3478)]

# -- SIP-ish material ------------------------------------------------------------------------------------------

startLines = st.sampled_from([
    b"INVITE sip:bob@example.com SIP/2.0",
    b"REGISTER sip:example.com SIP/2.0",
    b"SIP/2.0 200 OK",
    b"OPTIONS sip:a@b SIP/2.0",
])


@st.composite
def sipMessage(draw: st.DrawFn) -> bytes:
    """A framable SIP message: Content-Length (long or compact form, odd spacing) matching a body that may hold
    CRLFCRLF, CRLFs and STUN-looking bytes."""
    body = draw(st.one_of(
        st.just(b""),
        st.binary(max_size=60),
        st.lists(st.sampled_from([b"\r\n", b"\r\n\r\n", b"v=0", b"\x00\x01", b"x"]), max_size=8).map(b"".join),
    ))
    name = draw(st.sampled_from([b"Content-Length", b"content-length", b"l", b"CONTENT-LENGTH"]))
    spacing = draw(st.sampled_from([b": ", b":", b" : ", b":\t"]))
    headers = [b"Via: SIP/2.0/TCP 192.0.2.10;branch=z9hG4bK" + draw(st.binary(min_size=1, max_size=4)).hex().encode(),
               b"Call-ID: " + draw(st.binary(min_size=1, max_size=8)).hex().encode()]
    headers.insert(draw(st.integers(0, len(headers))), name + spacing + str(len(body)).encode())
    return draw(startLines) + b"\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + body


def chunked(data: bytes, cuts: List[int]) -> List[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]


# -- UDP ---------------------------------------------------------------------------------------------------------

sipDatagram = st.one_of(
    sipMessage(),
    st.binary(max_size=80),
    st.sampled_from([b"\r\n", b"\r\n\r\n", b"\r\n\r\n\r\n", b"\n", b" \r\n"]),
)


def udpSetup(responder: bool, password: Any = None, dropKeepalives: bool = False) -> Tuple[Any, ...]:
    clock = Clock()
    controller = NATTraversalController(
        NATSettings(stunServers=[SERVER], password=password, username="u" if password else None),
        reactor=clock, rng=random.Random(3),
    )
    sip = DatagramRecorder()
    shared, transport = sharedDatagramSocket(controller, sip, stunResponder=responder, clock=clock,
                                             dropKeepalives=dropKeepalives)
    results: List[Any] = []
    controller.resolvePublicAddress(None, shared, HOP).addBoth(results.append)
    observer = Observer()
    controller.refreshNATBinding(shared, observer, HOP)
    clock.advance(25)  # the keepalive's Binding transaction is in flight too
    requests = [m for m, _ in transport.stunRequests()]
    transport.clear()
    return clock, controller, shared, transport, sip, results, observer, requests


@st.composite
def udpTraffic(draw: st.DrawFn) -> List[Tuple[str, Any, Any]]:
    """A list of (kind, payload, source): SIP datagrams, STUN-shaped junk, and answers to the pending requests
    (possibly mutated, possibly from the wrong place)."""
    items = st.one_of(
        st.tuples(st.just("sip"), sipDatagram, st.sampled_from(OTHERS)),
        st.tuples(st.just("stun"), stunLike, st.sampled_from(OTHERS)),
        st.tuples(st.just("answer"), st.tuples(st.integers(0, 1), st.integers(0, 3), st.binary(max_size=3)),
                  st.sampled_from(OTHERS)),
    )
    return draw(st.lists(items, max_size=12))


def answerFor(request: stun.Message, how: int, noise: bytes) -> bytes:
    data = bindingResponse(request, ("203.0.113.1", 40000))
    if how == 1:
        data = bindingResponse(request, error=(420, "Unknown Attribute"))
    elif how == 2 and noise:  # flip a byte somewhere after the header
        i = 20 + noise[0] % (len(data) - 20)
        data = data[:i] + bytes([data[i] ^ (noise[-1] | 1)]) + data[i + 1 :]
    elif how == 3:
        data = bindingResponse(request, ("203.0.113.1", 40000), corruptFingerprint=True)
    return data


def checkDatagrams(responder: bool, traffic: List[Tuple[str, Any, Any]], password: Any = None,
                   dropKeepalives: bool = False) -> None:
    with watchingLogs() as logs:
        clock, controller, shared, transport, sip, results, observer, requests = udpSetup(
            responder, password, dropKeepalives)
        expected: List[Tuple[bytes, Any]] = []
        for kind, payload, source in traffic:
            if kind == "answer":
                which, how, noise = payload
                data = answerFor(requests[which % len(requests)], how, noise)
            else:
                data = payload
            before = len(transport.written)
            shared.datagramReceived(data, source)
            keepalive = bool(data) and not data.strip(b"\r\n")  # CRLF-only: RFC 5626 "crlf" keepalive
            # RFC 3489 requests (no magic cookie, RFC 8489 §12.2) are the responder's, when there is one
            classic = responder and stun.isClassicSTUN(data)
            if not stun.isSTUN(data) and not classic and not (dropKeepalives and keepalive):
                expected.append((data, source))
            for written, to in transport.written[before:]:
                assert to[0] == source[0], "never another IP (RESPONSE-PORT may name another port)"
                assert len(written) <= max(len(data), AMPLIFICATION_FLOOR)
                assert responder, "no STUN server role, yet something was answered"
        assert sip.received == expected  # every SIP datagram, unchanged, in order; no STUN among them
        clock.advance(60)
        controller.freeResources()
        assert clock.getDelayedCalls() == []
    assertNoLoggedFailure(logs)


@ciSettings
@given(st.booleans(), st.booleans(), udpTraffic())
def test_datagram_protocol(responder: bool, dropKeepalives: bool, traffic: List[Tuple[str, Any, Any]]) -> None:
    checkDatagrams(responder, traffic, dropKeepalives=dropKeepalives)


@ciSettings
@given(st.booleans(), udpTraffic())
def test_datagram_protocol_with_credentials(responder: bool, traffic: List[Tuple[str, Any, Any]]) -> None:
    checkDatagrams(responder, traffic, password="secret")


@pytest.mark.fuzz
@fuzzSettings
@given(st.booleans(), st.booleans(), st.booleans(), udpTraffic())
def test_datagram_protocol_long(responder: bool, credentials: bool, dropKeepalives: bool,
                                traffic: List[Tuple[str, Any, Any]]) -> None:
    checkDatagrams(responder, traffic, password="secret" if credentials else None, dropKeepalives=dropKeepalives)


# -- streams -------------------------------------------------------------------------------------------------------


def streamSetup(server: bool) -> Tuple[Any, ...]:
    clock = Clock()
    controller = NATTraversalController(NATSettings(tcpKeepaliveInterval=10), reactor=clock, rng=random.Random(4))
    factory = SharedStreamFactory(Factory.forProtocol(StreamRecorder), controller=controller, pongResponder=server)
    shared = factory.buildProtocol(IPv4Address("TCP", *HOP))
    transport = StringTransport(peerAddress=IPv4Address("TCP", *HOP))
    shared.makeConnection(transport)
    return clock, controller, shared, transport


@st.composite
def sipStream(draw: st.DrawFn) -> Tuple[List[bytes], List[int], List[int]]:
    """Messages, how many CRLFs precede each (and trail the last), and the cut points."""
    messages = draw(st.lists(sipMessage(), min_size=1, max_size=5))
    gaps = draw(st.lists(st.integers(0, 5), min_size=len(messages) + 1, max_size=len(messages) + 1))
    cuts = draw(st.lists(st.integers(0, 4000), max_size=30))
    return messages, gaps, cuts


def checkStream(server: bool, stream: Tuple[List[bytes], List[int], List[int]]) -> None:
    messages, gaps, cuts = stream
    wire = b"".join(b"\r\n" * gap + message for gap, message in zip(gaps, messages, strict=False)) + b"\r\n" * gaps[-1]
    with watchingLogs() as logs:
        clock, controller, shared, transport = streamSetup(server)
        observer = Observer()
        controller.refreshNATBinding(shared, observer)
        for chunk in chunked(wire, cuts):
            shared.dataReceived(chunk)
        assert shared.wrappedProtocol.received == b"".join(messages)
        assert not transport.disconnecting
        if server:  # every CRLFCRLF between messages was a ping, answered with one CRLF, and nothing else
            assert transport.value() == b"\r\n" * sum(gap // 2 for gap in gaps)
            assert shared.stats["pings.received"] == sum(gap // 2 for gap in gaps)
        else:  # every CRLF between messages was a pong
            assert shared.stats["pongs.received"] == sum(gaps)
            assert transport.value() == b""
        controller.freeResources()
        assert clock.getDelayedCalls() == []
    assertNoLoggedFailure(logs)


@ciSettings
@given(st.booleans(), sipStream())
def test_stream_protocol_keeps_every_sip_byte(server: bool, stream: Tuple[List[bytes], List[int], List[int]]) -> None:
    checkStream(server, stream)


@pytest.mark.fuzz
@fuzzSettings
@given(st.booleans(), sipStream())
def test_stream_protocol_keeps_every_sip_byte_long(server: bool,
                                                   stream: Tuple[List[bytes], List[int], List[int]]) -> None:
    checkStream(server, stream)


def checkStreamJunk(server: bool, chunks: List[bytes]) -> None:
    with watchingLogs() as logs:
        clock, controller, shared, transport = streamSetup(server)
        controller.refreshNATBinding(shared, Observer())
        for chunk in chunks:
            shared.dataReceived(chunk)
            clock.advance(3)
        received = shared.wrappedProtocol.received
        total = b"".join(chunks)
        assert len(received) <= len(total)
        if transport.disconnecting:  # closed for a framing error, which is counted and logged without traceback
            assert shared.stats["framing.errors"] == 1
            assert [e for e in logs.events if e.get("sipnat_event") == "stream.framing-error"]
        else:  # only CRLFs were taken out (a CR at the very end waits for the next byte, an unfinished header
            # block, the stream's tail, is held by the splitter until it is whole)
            if shared.splitter.pendingCR:
                total = total[:-1]
            total = total[: len(total) - shared.splitter.buffered]
            assert received.replace(b"\r\n", b"") == total.replace(b"\r\n", b"")
        controller.freeResources()
        assert clock.getDelayedCalls() == []
    assertNoLoggedFailure(logs)


junkChunks = st.lists(
    st.one_of(st.binary(max_size=100), sipMessage(), st.sampled_from([b"\r", b"\n", b"\r\n", b"l: 99999999999999\r\n"])),
    max_size=10,
)


@ciSettings
@given(st.booleans(), junkChunks)
def test_stream_protocol_on_arbitrary_bytes(server: bool, chunks: List[bytes]) -> None:
    checkStreamJunk(server, chunks)


@pytest.mark.fuzz
@fuzzSettings
@given(st.booleans(), junkChunks)
def test_stream_protocol_on_arbitrary_bytes_long(server: bool, chunks: List[bytes]) -> None:
    checkStreamJunk(server, chunks)


# -- controller.dataReceived ---------------------------------------------------------------------------------------

controllerInput = st.lists(
    st.tuples(
        st.one_of(stunLike, builtMessage(), mutatedVector(), st.sampled_from([b"\r\n", b"", b"\r\n\r\n"]),
                  st.tuples(st.integers(0, 1), st.integers(0, 3), st.binary(max_size=3))),
        st.one_of(st.sampled_from(OTHERS + [None]), st.tuples(st.text(max_size=5), st.integers(0, 70000)),
                  st.just(("2001:db8::1", 3478, 0, 0))),
    ),
    max_size=10,
)


def checkController(items: List[Tuple[Any, Any]], stream: bool) -> None:
    with watchingLogs() as logs:
        clock, controller, shared, transport, sip, results, observer, requests = udpSetup(False)
        tcpClock, tcpController, tcpShared, tcpTransport = streamSetup(False)
        tcpController.refreshNATBinding(tcpShared, Observer())
        tcpClock.advance(10)
        for payload, addr in items:
            data = answerFor(requests[payload[0] % len(requests)], payload[1], payload[2]) \
                if isinstance(payload, tuple) else payload
            assert controller.dataReceived(data, shared, addr) in (True, False)
            assert tcpController.dataReceived(data, tcpShared, None) in (True, False)
        for c, k in ((controller, clock), (tcpController, tcpClock)):
            k.advance(60)
            c.freeResources()
            assert k.getDelayedCalls() == []
    assertNoLoggedFailure(logs)


@ciSettings
@given(controllerInput)
def test_controller_data_received_never_raises(items: List[Tuple[Any, Any]]) -> None:
    checkController(items, False)


@pytest.mark.fuzz
@fuzzSettings
@given(controllerInput)
def test_controller_data_received_never_raises_long(items: List[Tuple[Any, Any]]) -> None:
    checkController(items, False)


# -- the server role in both directions ----------------------------------------------------------------------------

serverSteps = st.lists(
    st.one_of(
        st.tuples(st.just("in"), st.integers(0, 4)),  # that many CRLFs arrive (pairs are pings)
        st.tuples(st.just("msg-in"), sipMessage()),
        st.tuples(st.just("out"), st.integers(1, 70)),  # the SIP stack writes that many bytes of its queue
        st.tuples(st.just("queue"), sipMessage()),
        st.tuples(st.just("idle"), st.booleans()),
    ),
    max_size=25,
)


def checkServerBothWays(steps: List[Tuple[str, Any]]) -> None:
    """An edge answering pings while its SIP stack writes partial messages: every pong lands between whole
    outgoing messages, one per ping, and both SIP streams arrive intact."""
    with watchingLogs() as logs:
        clock, controller, shared, transport = streamSetup(True)
        queue = bytearray()
        written = bytearray()
        incoming = bytearray()
        pendingCRLF = 0
        pings = 0
        for kind, value in steps:
            if kind == "in":
                shared.dataReceived(b"\r\n" * value)
                pendingCRLF += value
                pings += pendingCRLF // 2
                pendingCRLF %= 2
            elif kind == "msg-in":
                shared.dataReceived(value)
                incoming += value
                pendingCRLF = 0  # a lone CRLF before a message is noise
            elif kind == "queue":
                queue += value
            elif kind == "out" and queue:
                chunk, queue = bytes(queue[:value]), queue[value:]
                written += chunk
                shared.wrappedProtocol.transport.write(chunk)
            elif kind == "idle":
                controller.socketIdle(value, shared)
        controller.socketIdle(True, shared)
        if queue:  # finish the message in progress: held pongs go out right after it
            written += queue
            shared.wrappedProtocol.transport.write(bytes(queue))
        events = IncomingSplitter(role="client").feed(transport.value())
        assert b"".join(e.data for e in events if type(e) is SIPData) == bytes(written)
        assert sum(1 for e in events if type(e) is Pong) <= pings
        assert shared.wrappedProtocol.received == bytes(incoming)
        assert not transport.disconnecting
    assertNoLoggedFailure(logs)


@ciSettings
@given(serverSteps)
def test_server_role_pongs_only_between_whole_messages(steps: List[Tuple[str, Any]]) -> None:
    checkServerBothWays(steps)


@pytest.mark.fuzz
@fuzzSettings
@given(serverSteps)
def test_server_role_pongs_only_between_whole_messages_long(steps: List[Tuple[str, Any]]) -> None:
    checkServerBothWays(steps)
