"""twisted_sipnat.service.sipedge: the edge's SIP side over UDP and TCP on a Clock, with fake transports."""

from __future__ import annotations

from typing import List

import pytest
from twisted.internet.task import Clock

from tests.sipedgekit import asRequest, asResponse, register, request
from twisted_sipnat.core.sip import Via
from twisted_sipnat.errors import InvalidSettingsError
from twisted_sipnat.service.edge import EdgeRole

from .sipedgesupport import EdgeHarness, edgeLogs, named, taken

BOB = ("198.51.100.7", 40001)
ALICE = ("192.0.2.50", 5070)
OUTBOUND = '<sip:bob@10.0.0.1:5060;ob>;+sip.instance="<urn:uuid:1>";reg-id=1'


def test_oneTimerWhateverTheNumberOfBindings(clock: Clock) -> None:
    harness = EdgeHarness(clock)
    for i in range(50):
        harness.datagram(register(user=f"u{i}", contacts=[f"<sip:u{i}@10.0.0.1>"], expires=str(100 + i)),
                         (f"198.51.100.{i}", 5060))
    assert len(harness.edge.registry) == 50
    assert len(clock.getDelayedCalls()) == 1
    assert clock.getDelayedCalls()[0].getTime() == 100
    with edgeLogs() as events:
        clock.advance(125)
    assert len(harness.edge.registry) == 24
    assert len(named(events, "sipnat.edge.expired")) == 26
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(1000)
    assert len(harness.edge.registry) == 0
    assert clock.getDelayedCalls() == [], "no bindings, no timer"
    harness.stop()


def test_stopCancelsTheTimerAndForgets(clock: Clock) -> None:
    harness = EdgeHarness(clock)
    harness.datagram(register(), BOB)
    assert len(clock.getDelayedCalls()) == 1
    harness.stop()
    assert len(harness.edge.registry) == 0
    assert harness.datagram(register(cseq=2), BOB) == [], "a datagram the closing port still delivers is ignored"
    assert clock.getDelayedCalls() == []


def test_udpRegistrationThenProxiedMessageArrivesOverTheFlow(clock: Clock) -> None:
    harness = EdgeHarness(clock)
    assert asResponse(harness.datagram(register(), BOB)[0]).code == 200
    assert harness.datagram(request("MESSAGE", body=b"hello"), ALICE) == []
    forwarded = asRequest(harness.udp.to(BOB)[-1])
    assert forwarded.method == "MESSAGE" and forwarded.uri == "sip:bob@10.0.0.1:5060"
    vias = forwarded.headers.getAll("Via")
    answer = (f"SIP/2.0 200 OK\r\nVia: {vias[0]}\r\nVia: {vias[1]}\r\nFrom: <sip:alice@example.com>;tag=a1\r\n"
              "To: <sip:bob@example.com>;tag=b\r\nCall-ID: call1@test\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n")
    back = harness.datagram(answer.encode(), BOB)
    assert back == []
    relayed = asResponse(harness.udp.to(ALICE)[-1])
    assert relayed.code == 200 and len(relayed.headers.getAll("Via")) == 1
    harness.stop()


def test_tcpRegistrationIsProxiedOverItsConnectionAndAClosedOneIs430(clock: Clock) -> None:
    harness = EdgeHarness(clock)
    proto, transport = harness.connect(BOB)
    proto.dataReceived(register(transport="TCP", contacts=[OUTBOUND], extra=["Supported: outbound"]))
    response = asResponse(taken(transport))
    assert response.code == 200 and response.headers.getAll("Require") == ["outbound"]
    assert harness.figures().get("sipnat_flows", transport="tcp") == 1
    harness.datagram(request(), ALICE)
    forwarded = asRequest(taken(transport))
    assert forwarded.method == "INVITE"
    assert Via.parse(forwarded.headers.getAll("Via")[0]).transport == "TCP"
    harness.close(proto)
    assert harness.figures().get("sipnat_flows", transport="tcp") == 0
    answer = asResponse(harness.datagram(request(branch="z9hG4bKcall2"), ALICE)[0])
    assert answer.code == 430, "RFC 5626 §5.3: the flow is gone"
    harness.stop()


def test_responseFromATCPCalleeGoesBackOverTheCallersConnection(clock: Clock) -> None:
    harness = EdgeHarness(clock)
    harness.datagram(register(), BOB)
    caller, callerTransport = harness.connect(ALICE)
    caller.dataReceived(request().replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP"))
    forwarded = asRequest(harness.udp.to(BOB)[-1])
    vias = forwarded.headers.getAll("Via")
    answer = (f"SIP/2.0 180 Ringing\r\nVia: {vias[0]}, {vias[1]}\r\nFrom: <sip:alice@example.com>;tag=a1\r\n"
              "To: <sip:bob@example.com>;tag=b\r\nCall-ID: call1@test\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    harness.datagram(answer.encode(), BOB)
    assert asResponse(taken(callerTransport)).code == 180
    harness.stop()


def test_rateLimitDropsAndSaysSoOncePerInterval(clock: Clock) -> None:
    harness = EdgeHarness(clock, sipRate=1.0, sipBurst=5)
    with edgeLogs() as events:
        answers = [harness.datagram(request("OPTIONS", "sip:example.com"), ALICE) for _ in range(100)]
        assert sum(1 for a in answers if a) == 5
        clock.advance(10)
    lines = named(events, "sipnat.edge.rate-limited")
    assert len(lines) == 2, "the first drop at once, the rest in one line when the interval is over"
    figures = harness.figures()
    assert figures.get("sipnat_sip_requests_total", result="rate_limited") == 95
    assert figures.get("sipnat_sip_requests_total", result="answered") == 5
    harness.stop()
    assert clock.getDelayedCalls() == []


def test_figures(clock: Clock) -> None:
    harness = EdgeHarness(clock)
    harness.datagram(register(), BOB)
    harness.datagram(register(user="carol", contacts=["<sip:carol@10.0.0.3>"]), ALICE)
    harness.datagram(b"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP x;branch=z9hG4bK1\r\nbroken\r\n\r\n", BOB)
    figures = harness.figures()
    assert figures.get("sipnat_registrations") == 2
    assert figures.get("sipnat_flows", transport="udp") == 2
    assert figures.get("sipnat_sip_requests_total", result="answered") == 2
    assert figures.get("sipnat_sip_requests_total", result="malformed") == 1
    harness.stop()


def test_sipRateZeroFromOptionsMeansNoLimit() -> None:
    from twisted_sipnat.service.options import EdgeOptions, edgeArguments

    sub = EdgeOptions()
    sub.parseOptions(["--sip-rate", "0", "--max-registrations", "10", "--min-expires", "30"])
    arguments = edgeArguments(sub, 1)
    assert arguments["sipRate"] is None
    assert arguments["maxRegistrations"] == 10 and arguments["minExpires"] == 30


@pytest.mark.parametrize(
    ("argv", "key"),
    [
        (["--min-expires", "0"], "min-expires"),
        (["--max-registrations", "many"], "max-registrations"),
        (["--min-expires", "600", "--default-expires", "300"], "default-expires"),
        (["--sip-rate", "-1"], "sip-rate"),
        (["--sip-burst", "0"], "sip-burst"),
    ],
)
def test_badRegistrarOptionsAreOneLineNamingTheOption(argv: List[str], key: str) -> None:
    from twisted_sipnat.service.options import EdgeOptions, edgeArguments

    sub = EdgeOptions()
    sub.parseOptions(argv)
    with pytest.raises(InvalidSettingsError) as info:
        edgeArguments(sub, 1)
    assert info.value.key == key


def test_edgeRoleRefusesABadRate() -> None:
    with pytest.raises(InvalidSettingsError) as info:
        EdgeRole(Clock(), udp=(0, "127.0.0.1"), sipRate=-1.0)
    assert info.value.key == "sip-rate"


# -- what the tests of the removed service.registrar and service.sipstream asked, on the new classes ----------


def test_bareRportIsFilledBehindAPortPreservingNat(clock: Clock) -> None:
    """RFC 3581 §4: the source port equals the Via port (a port-preserving NAT): rport is still filled."""
    harness = EdgeHarness(clock)
    data = register(via="SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK1;rport")
    via = Via.parse(asResponse(harness.datagram(data, ("203.0.113.1", 5060))[0]).headers.get("Via") or "")
    assert (via.received, via.rport) == ("203.0.113.1", 5060)
    harness.stop()


def test_anExpiredRegistrationIsForgottenAndTakenAgain(clock: Clock) -> None:
    harness = EdgeHarness(clock)
    harness.datagram(register(expires="60"), BOB)
    clock.advance(61)
    assert harness.edge.registry.lookup("sip:bob@example.com", clock.seconds()) == []
    assert len(harness.edge.registry) == 0
    assert asResponse(harness.datagram(register(expires="60", cseq=2, branch="z9hG4bKr2"), BOB)[0]).code == 200
    assert len(harness.edge.registry) == 1
    harness.stop()
    assert clock.getDelayedCalls() == []


def test_aUTF8CharacterSplitBetweenReadsWaitsForItsRest(clock: Clock) -> None:
    harness = EdgeHarness(clock)
    proto, transport = harness.connect(BOB)
    data = register(transport="TCP").replace(b"To: <sip:bob@example.com>", 'To: "Zoë" <sip:bob@example.com>'.encode())
    cut = data.index("ë".encode()) + 1
    proto.dataReceived(data[:cut])
    proto.dataReceived(data[cut:])
    assert asResponse(taken(transport)).code == 200
    assert not transport.disconnecting
    harness.stop()


def test_bytesThatAreNotUTF8GetA400NotATraceback(clock: Clock) -> None:
    harness = EdgeHarness(clock)
    proto, transport = harness.connect(BOB)
    proto.dataReceived(register(transport="TCP").replace(b"REGISTER sip:example.com", b"REGISTER sip:\xff\xfe"))
    assert asResponse(taken(transport)).code == 400
    harness.stop()


def test_expiresZeroOverTCPUnregisters(clock: Clock) -> None:
    harness = EdgeHarness(clock)
    proto, transport = harness.connect(BOB)
    proto.dataReceived(register(transport="TCP"))
    proto.dataReceived(register(transport="TCP", expires="0", cseq=2, branch="z9hG4bKr2"))
    assert taken(transport).count(b"SIP/2.0 200 OK") == 2
    assert len(harness.edge.registry) == 0
    harness.stop()
