"""
Issue 13, the edge's SIP side: each failure found against the old edge (``twisted.protocols.sip``'s
``RegisterProxy`` and a Twisted-parsed TCP stream) as a test through the real ``SharedDatagramProtocol`` /
``SharedStreamFactory`` path, on a Clock.

- "Edge, SIP over TCP, goes deaf": legal compact and spaced Content-Length forms were never answered, and junk
  left the connection open, deaf and silent;
- "Edge, UDP, unbounded registrar": a REGISTER flood grew the registry and the pending timers without bound;
  malformed datagrams logged a line each; nothing rate-limited SIP;
- "Real clients against the edge registrar": de-registration, granted expiry, ``Require: outbound``, 404 and
  query answers over UDP, the TCP Via, and what a proxied request looks like.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock

from tests.service.sipedgesupport import EdgeHarness, edgeLogs, named, taken
from tests.sipedgekit import asRequest, asResponse, register, request
from twisted_sipnat.core.sip import NameAddress, Via

BOB = ("198.51.100.7", 40001)
ALICE = ("192.0.2.50", 5070)
AOR = "sip:bob@example.com"


def _bindings(harness: EdgeHarness) -> int:
    return len(harness.edge.registry.lookup(AOR, harness.clock.seconds()))


# -- Edge, SIP over TCP, goes deaf ----------------------------------------------------------------------------


def _write(proto: Any, data: bytes, chunk: int) -> None:
    """``data`` as TCP may deliver it: whole, or cut into ``chunk``-byte reads."""
    for at in range(0, len(data), chunk or len(data)):
        proto.dataReceived(data[at : at + (chunk or len(data))])


@pytest.mark.parametrize("chunk", [0, 1, 13], ids=["whole", "byte-by-byte", "13-byte-reads"])
@pytest.mark.parametrize("length", [b"l: 0", b"Content-Length : 0", b"Content-Length\t: 0", b"content-length:0"])
def test_tcpAnswersEveryLegalContentLengthFormAndStaysInStep(clock: Clock, length: bytes, chunk: int) -> None:
    harness = EdgeHarness(clock)
    proto, transport = harness.connect(BOB)
    _write(proto, register(transport="TCP").replace(b"Content-Length: 0", length), chunk)
    assert asResponse(taken(transport)).code == 200
    _write(proto, b"\r\n\r\n", chunk)
    assert taken(transport) == b"\r\n", "pings still answered"
    _write(proto, register(transport="TCP", cseq=2, branch="z9hG4bKr2"), chunk)
    assert asResponse(taken(transport)).code == 200, "the next REGISTER on the connection is answered too"
    assert not transport.disconnecting
    harness.stop()


def test_tcpTwoMessagesInOneReadAreBothAnswered(clock: Clock) -> None:
    harness = EdgeHarness(clock)
    proto, transport = harness.connect(BOB)
    proto.dataReceived(register(transport="TCP") + register(transport="TCP", cseq=2, branch="z9hG4bKr2"))
    assert taken(transport).count(b"SIP/2.0 200 OK\r\n") == 2
    harness.stop()


@pytest.mark.parametrize(
    ("junk", "answered"),
    [
        (register(transport="TCP").replace(b"Content-Length: 0\r\n", b""), True),  # §18.3: mandatory on a stream
        (register(transport="TCP").replace(b"Max-Forwards: 70", b"X-Long: " + b"a" * 20000), True),
        (register(transport="TCP").replace(b"Max-Forwards: 70", b"Max-Forwards 70"), True),
        (register(transport="TCP").replace(b"REGISTER sip:example.com SIP/2.0", b"REGISTER  sip:example.com"), False),
        # these three the stream's framer itself cannot get past (RFC 3261 §18.3): still a 400, then closed
        (register(transport="TCP").replace(b"Content-Length: 0", b"Content-Length: abc"), True),
        (register(transport="TCP").replace(b"Content-Length: 0", b"Content-Length: 0\r\nl: 5"), True),
        (register(transport="TCP").replace(b"Max-Forwards: 70", b"X-Big: " + b"a" * 70000), True),
    ],
    ids=["no-content-length", "20kb-header-line", "no-colon", "bad-start-line", "content-length-not-digits",
         "two-content-lengths", "header-block-over-64kb"],
)
@pytest.mark.parametrize("chunk", [0, 1], ids=["whole", "byte-by-byte"])
def test_tcpJunkGets400ThenTheConnectionIsClosedAndLogged(clock: Clock, junk: bytes, answered: bool,
                                                          chunk: int) -> None:
    harness = EdgeHarness(clock)
    proto, transport = harness.connect(BOB)
    with edgeLogs() as events:
        _write(proto, junk + register(transport="TCP", cseq=2), chunk)
    data = taken(transport)
    if answered:
        assert asResponse(data).code == 400
        assert data.count(b"SIP/2.0 ") == 1, "nothing after the bad message is read"
    else:
        assert data == b"", "no readable start line: no response can be formed"
    assert transport.disconnecting, "never left open and deaf"
    lines = named(events, "sipnat.edge.malformed")
    assert len(lines) == 1 and "connection closed" in lines[0]["detail"]
    assert harness.figures().get("sipnat_sip_requests_total", result="malformed") == 1
    harness.stop()


# -- Edge, UDP, unbounded registrar ---------------------------------------------------------------------------


def test_registerFloodIsBoundedWithOneTimerAnd503(clock: Clock) -> None:
    """12,000 spoofed REGISTERs from 12,000 sources: 10,000 bindings, 2,000 refused with 503, one timer."""
    harness = EdgeHarness(clock, maxRegistrations=10000)
    codes = []
    for i in range(12000):
        source = (f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 5060)
        data = register(user=f"u{i}", contacts=[f"<sip:u{i}@{source[0]}>"], expires="3600", callId=f"f{i}")
        codes.append(asResponse(harness.datagram(data, source)[0]).code)
    assert codes.count(200) == 10000 and codes.count(503) == 2000
    refused = asResponse(harness.datagram(register(user="late", contacts=["<sip:late@10.9.9.9>"]), ("10.9.9.9", 1))[0])
    assert refused.code == 503 and refused.headers.get("Retry-After") is not None
    assert len(harness.edge.registry) == 10000
    assert len(clock.getDelayedCalls()) == 1, "one timer, not one per binding"
    assert harness.figures().get("sipnat_registrations") == 10000
    clock.advance(3600)
    assert len(harness.edge.registry) == 0
    harness.stop()


def test_malformedDatagramsAreTalliedNotLoggedEach(clock: Clock) -> None:
    harness = EdgeHarness(clock, sipRate=None)
    junk = register().replace(b"To: <sip:bob@example.com>", b"To <sip:bob@example.com>")
    with edgeLogs() as events:
        for i in range(1000):
            harness.datagram(junk, (f"203.0.113.{i % 200}", 5060))
        clock.advance(10)
    assert len(named(events, "sipnat.edge.malformed")) == 2
    assert harness.figures().get("sipnat_sip_requests_total", result="malformed") == 1000
    harness.stop()
    assert clock.getDelayedCalls() == []


def test_spoofedRequestsFromOneSourceAreRateLimited(clock: Clock) -> None:
    harness = EdgeHarness(clock, sipRate=10.0, sipBurst=20)
    answered = sum(1 for _ in range(1000) if harness.datagram(request("OPTIONS", "sip:example.com"), ALICE))
    assert answered == 20
    assert harness.figures().get("sipnat_sip_requests_total", result="rate_limited") == 980
    harness.stop()


# -- Real clients against the edge registrar -------------------------------------------------------------------


@pytest.mark.parametrize(
    "removal",
    [
        {"expires": "0"},
        {"contacts": ["<sip:bob@10.0.0.1:5060>;expires=0"]},
        {"contacts": ["*"], "expires": "0"},
    ],
    ids=["Expires-0", "contact-expires-0", "Contact-star"],
)
def test_deregistrationOverUDPIsAnswered200AndRemoves(clock: Clock, removal: dict) -> None:  # type: ignore[type-arg]
    harness = EdgeHarness(clock)
    harness.datagram(register(), BOB)
    assert _bindings(harness) == 1
    answers = harness.datagram(register(cseq=2, branch="z9hG4bKr2", **removal), BOB)
    assert len(answers) == 1 and asResponse(answers[0]).code == 200
    assert _bindings(harness) == 0
    harness.stop()


@pytest.mark.parametrize(("asked", "granted"), [("120", 120), ("1800", 1800), ("999999", 7200)])
def test_requestedExpiryIsGrantedWithinBounds(clock: Clock, asked: str, granted: int) -> None:
    harness = EdgeHarness(clock)
    response = asResponse(harness.datagram(register(expires=asked), BOB)[0])
    assert [NameAddress.parse(c).expires for c in response.headers.getAll("Contact")] == [granted]
    harness.stop()


def test_tooShortExpiryIs423(clock: Clock) -> None:
    harness = EdgeHarness(clock, minExpires=300)
    response = asResponse(harness.datagram(register(expires="30"), BOB)[0])
    assert response.code == 423 and response.headers.get("Min-Expires") == "300"
    harness.stop()


def test_outboundRegistrationGetsRequireOutbound(clock: Clock) -> None:
    harness = EdgeHarness(clock, flowTimer=29)
    contact = '<sip:bob@10.0.0.1:5060;ob>;reg-id=1;+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'
    response = asResponse(harness.datagram(register(contacts=[contact], extra=["Supported: path, outbound"]), BOB)[0])
    assert response.code == 200
    assert response.headers.getAll("Require") == ["outbound"]
    assert response.headers.get("Flow-Timer") == "29"
    harness.stop()


def test_foreignDomainIs404OverUDPAndTCP(clock: Clock) -> None:
    harness = EdgeHarness(clock)
    foreign = register(uri="sip:elsewhere.example")
    assert asResponse(harness.datagram(foreign, BOB)[0]).code == 404
    proto, transport = harness.connect(BOB)
    proto.dataReceived(register(uri="sip:elsewhere.example", transport="TCP"))
    assert asResponse(taken(transport)).code == 404
    assert len(harness.edge.registry) == 0
    harness.stop()


def test_queryForAnUnregisteredUserIs200WithoutContactOverUDP(clock: Clock) -> None:
    harness = EdgeHarness(clock)
    answers = harness.datagram(register(user="nobody", contacts=[]), BOB)
    response = asResponse(answers[0])
    assert response.code == 200 and response.headers.getAll("Contact") == []
    harness.stop()


def test_tcpResponseViaHasReceivedAndRport(clock: Clock) -> None:
    harness = EdgeHarness(clock)
    proto, transport = harness.connect(BOB)
    proto.dataReceived(register(transport="TCP"))
    via = Via.parse(asResponse(taken(transport)).headers.get("Via") or "")
    assert via.received == BOB[0]
    assert via.rport == BOB[1], "rport=N, not a bare rport"
    harness.stop()


def test_proxiedRequestHasABranchTheContactAsRequestURIAndMaxForwards69(clock: Clock) -> None:
    harness = EdgeHarness(clock)
    harness.datagram(register(), BOB)
    harness.datagram(request("INVITE"), ALICE)
    forwarded = asRequest(harness.udp.to(BOB)[-1])
    top = Via.parse(forwarded.headers.getAll("Via")[0])
    assert (top.branch or "").startswith("z9hG4bK") and len(top.branch or "") > 12
    assert forwarded.uri == "sip:bob@10.0.0.1:5060"
    assert forwarded.headers.get("Max-Forwards") == "69"
    harness.stop()


def test_theAnswerToASpoofedQueryIsBounded(clock: Clock) -> None:
    """Every 200 lists all of an AOR's bindings: --max-contacts keeps a small query's answer small."""
    harness = EdgeHarness(clock)
    for i in range(50):
        harness.datagram(register(contacts=[f"<sip:bob@10.0.{i}.1:5060;transport=udp>"], callId=f"c{i}"), BOB)
    assert _bindings(harness) == 10
    query = register(contacts=[], callId="spoofed")
    answer = harness.datagram(query, ("192.0.2.99", 9))[0]
    assert len(answer.split(b"\r\nContact: ")) - 1 == 10
    assert len(answer) < 4 * len(query)
    harness.stop()
