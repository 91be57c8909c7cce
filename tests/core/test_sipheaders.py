"""Flow-Timer / Via keep reading and ``;keep`` writing, on twisted.protocols.sip messages and raw bytes."""

from __future__ import annotations

from typing import Any, List

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twisted_sipnat.core.sipheaders import (
    MAX_KEEPALIVE_INTERVAL,
    InvalidHeaderError,
    MissingViaError,
    addKeepToVia,
    answerKeep,
    flowTimer,
    keepaliveInterval,
    parseFlowTimer,
    parseKeepParameter,
    viaKeep,
)

OK = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK1;rport=5060;received=203.0.113.1\r\n"
    b"To: <sip:alice@example.com>;tag=1\r\n"
    b"From: <sip:alice@example.com>;tag=2\r\n"
    b"Call-ID: abc\r\n"
    b"CSeq: 1 REGISTER\r\n"
    b"%s"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

REGISTER = (
    b"REGISTER sip:example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK77;rport\r\n"
    b"To: <sip:alice@example.com>\r\n"
    b"From: <sip:alice@example.com>;tag=9\r\n"
    b"Call-ID: r1\r\n"
    b"CSeq: 1 REGISTER\r\n"
    b"Content-Length: 5\r\n"
    b"\r\n"
    b"Via: "
)


def _parsed(raw: bytes) -> Any:
    from twisted.protocols import sip

    messages: List[Any] = []
    parser = sip.MessagesParser(messages.append)
    parser.dataReceived(raw)
    parser.dataDone()
    assert len(messages) == 1
    return messages[0]


# ---- strict parsers --------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, seconds", [("120", 120), (" 30 ", 30), ("1", 1), ("0086400", 86400)])
def test_parseFlowTimer(text: str, seconds: int) -> None:
    assert parseFlowTimer(text) == seconds


@pytest.mark.parametrize("bad", ["", "abc", "-5", "0", "1.5", "86401", "9" * 40, "12 3", "+3", "\u0663"])
def test_parseFlowTimerRefusesBadValues(bad: str) -> None:
    with pytest.raises(InvalidHeaderError) as info:
        parseFlowTimer(bad)
    assert info.value.header == "Flow-Timer"
    assert info.value.value == bad


def test_parseKeepParameter() -> None:
    assert parseKeepParameter(None) is None
    assert parseKeepParameter("") is None
    assert parseKeepParameter("30") == 30
    with pytest.raises(InvalidHeaderError) as info:
        parseKeepParameter("x")
    assert info.value.header == "keep"


# ---- reading raw bytes -----------------------------------------------------------------------------------


def test_flowTimerFromRawResponse() -> None:
    raw = OK % b"Flow-Timer: 120\r\n"
    assert flowTimer(raw) == 120
    assert keepaliveInterval(raw) == 120
    assert keepaliveInterval(raw.decode()) == 120


def test_flowTimerHeaderNameIsCaseInsensitive() -> None:
    assert keepaliveInterval(OK % b"FLOW-timer:45\r\n") == 45


def test_noIntervalIsNone() -> None:
    assert keepaliveInterval(OK % b"") is None


@pytest.mark.parametrize("value", [b"0", b"abc", b"-1", b"99999999999999999999", b""])
def test_badFlowTimerIsNone(value: bytes) -> None:
    assert keepaliveInterval(OK % (b"Flow-Timer: " + value + b"\r\n")) is None


def test_firstUsableFlowTimerWins() -> None:
    assert flowTimer(OK % b"Flow-Timer: junk\r\nFlow-Timer: 60\r\n") == 60


def test_viaKeepFromRawResponse() -> None:
    raw = OK.replace(b"rport=5060", b"rport=5060;keep=30") % b""
    assert viaKeep(raw) == 30
    assert keepaliveInterval(raw) == 30


def test_flowTimerBeatsViaKeep() -> None:
    raw = OK.replace(b"rport=5060", b"rport=5060;keep=30") % b"Flow-Timer: 100\r\n"
    assert keepaliveInterval(raw) == 100


def test_compactViaAndMixedCase() -> None:
    raw = b"SIP/2.0 200 OK\r\nv: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK1;KEEP=15\r\nl: 0\r\n\r\n"
    assert keepaliveInterval(raw) == 15


def test_onlyTopViaCounts() -> None:
    raw = (
        b"SIP/2.0 200 OK\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.10;branch=a, SIP/2.0/UDP 198.51.100.1;branch=b;keep=20\r\n"
        b"Via: SIP/2.0/UDP 198.51.100.2;branch=c;keep=40\r\n\r\n"
    )
    assert viaKeep(raw) is None
    first = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP [2001:db8::1]:5060;branch=a;keep=20, SIP/2.0/UDP x;keep=9\r\n\r\n"
    assert viaKeep(first) == 20


def test_bareKeepInResponseIsNone() -> None:
    assert viaKeep(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;keep;branch=x\r\n\r\n") is None


def test_foldedHeaderAndBareLf() -> None:
    raw = b"SIP/2.0 200 OK\nVia: SIP/2.0/UDP h\n ;branch=x;keep=25\nFlow-Timer:\n  70\n\nbody"
    assert viaKeep(raw) == 25
    assert flowTimer(raw) == 70


def test_headersInBodyAreIgnored() -> None:
    raw = b"SIP/2.0 200 OK\r\nContent-Length: 15\r\n\r\nFlow-Timer: 12\r\n"
    assert keepaliveInterval(raw) is None


@given(st.binary(max_size=400))
def test_garbageNeverRaises(data: bytes) -> None:
    result = keepaliveInterval(data)
    assert result is None or 1 <= result <= MAX_KEEPALIVE_INTERVAL


@given(st.text(max_size=300))
def test_garbageTextNeverRaises(data: str) -> None:
    result = keepaliveInterval(data)
    assert result is None or 1 <= result <= MAX_KEEPALIVE_INTERVAL


def test_wrongTypeIsTypeError() -> None:
    with pytest.raises(TypeError):
        keepaliveInterval(42)  # type: ignore[arg-type]


# ---- reading twisted.protocols.sip messages --------------------------------------------------------------


def test_flowTimerFromTwistedResponse() -> None:
    message = _parsed(OK % b"Flow-Timer: 120\r\n")
    assert keepaliveInterval(message) == 120


def test_viaKeepFromTwistedResponse() -> None:
    message = _parsed((OK % b"").replace(b";received", b";keep=33;received"))
    assert keepaliveInterval(message) == 33


def test_builtTwistedResponse() -> None:
    from twisted.protocols import sip

    response = sip.Response(200)
    response.addHeader("v", "SIP/2.0/UDP 192.0.2.10;branch=z;keep=18")
    assert keepaliveInterval(response) == 18
    response.addHeader("Flow-Timer", "90")
    assert keepaliveInterval(response) == 90
    response.headers["flow-timer"] = ["nonsense"]
    assert keepaliveInterval(response) == 18


def test_twistedResponseWithoutHeaders() -> None:
    from twisted.protocols import sip

    assert keepaliveInterval(sip.Response(200)) is None


# ---- writing ;keep ---------------------------------------------------------------------------------------


def test_addKeepToRawRequest() -> None:
    out = addKeepToVia(REGISTER)
    assert isinstance(out, bytes)
    assert b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK77;rport;keep\r\n" in out
    assert out.endswith(b"\r\n\r\nVia: "), "the body is untouched"
    assert addKeepToVia(out) == out, "idempotent"


def test_addKeepToStrRequest() -> None:
    out = addKeepToVia(REGISTER.decode())
    assert isinstance(out, str)
    assert ";rport;keep\r\n" in out


def test_addKeepOnlyTopViaOfCommaList() -> None:
    raw = b"OPTIONS sip:x SIP/2.0\r\nv: SIP/2.0/UDP a;branch=1 , SIP/2.0/UDP b;branch=2\r\nVia: SIP/2.0/UDP c\r\n\r\n"
    out = addKeepToVia(raw)
    assert b"v: SIP/2.0/UDP a;branch=1;keep, SIP/2.0/UDP b;branch=2\r\n" in out
    assert b"Via: SIP/2.0/UDP c\r\n" in out


def test_addKeepSkipsACommaInsideAQuotedParameterWithAnEscapedQuote() -> None:
    raw = b'OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a;x="q\\",z";branch=1, SIP/2.0/UDP b\r\n\r\n'
    out = addKeepToVia(raw)
    assert b'Via: SIP/2.0/UDP a;x="q\\",z";branch=1;keep, SIP/2.0/UDP b\r\n' in out


def test_addKeepToFoldedVia() -> None:
    raw = b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a\r\n ;branch=1\r\nTo: <sip:x>\r\n\r\n"
    out = addKeepToVia(raw)
    assert out == b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a\r\n ;branch=1;keep\r\nTo: <sip:x>\r\n\r\n"
    assert viaKeep(out) is None  # a bare offer, not an interval


def test_addKeepWithoutViaIsTypedError() -> None:
    with pytest.raises(MissingViaError):
        addKeepToVia(b"OPTIONS sip:x SIP/2.0\r\nTo: <sip:x>\r\n\r\nVia: x")


def test_addKeepToTwistedRequest() -> None:
    from twisted.protocols import sip

    request = sip.Request("REGISTER", "sip:example.com")
    request.addHeader("via", sip.Via("192.0.2.10", 5060, rport=None, branch="z9hG4bK1").toString())
    request.addHeader("via", "SIP/2.0/UDP 198.51.100.1;branch=z9hG4bK2")
    assert addKeepToVia(request) is request
    assert request.headers["via"][0].endswith(";keep")
    assert request.headers["via"][1] == "SIP/2.0/UDP 198.51.100.1;branch=z9hG4bK2"
    # The result still parses with Twisted's own Via parser, keep as a bare parameter.
    assert sip.parseViaHeader(request.headers["via"][0]).otherParams == {"keep": None}
    text = request.toString()
    assert ";keep\r\n" in text


def test_addKeepToTwistedRequestWithoutVia() -> None:
    from twisted.protocols import sip

    with pytest.raises(MissingViaError):
        addKeepToVia(sip.Request("REGISTER", "sip:example.com"))


@given(st.binary(max_size=300))
def test_addKeepGarbageIsTypedErrorOrBytes(data: bytes) -> None:
    try:
        out = addKeepToVia(data)
    except MissingViaError:
        return
    assert isinstance(out, bytes)
    assert b"keep" in out.lower()


# ---- answering ;keep (the edge's side of RFC 6223) --------------------------------------------------------


def test_answerKeepFillsTheOffer() -> None:
    raw = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=1;keep;rport=5, SIP/2.0/UDP b;keep\r\nVia: SIP/2.0/UDP c;keep\r\n\r\n"
    out = answerKeep(raw, 30)
    assert out == raw.replace(b"a;branch=1;keep;rport=5", b"a;branch=1;keep=30;rport=5")
    assert viaKeep(out) == 30
    assert answerKeep(out, 45) == out, "an answered offer stays answered"
    assert answerKeep(raw.decode(), 30) == out.decode()


def test_answerKeepWithoutOfferOrVia() -> None:
    raw = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=1;keepalive\r\n\r\n"
    assert answerKeep(raw, 30) == raw
    assert answerKeep(b"SIP/2.0 200 OK\r\n\r\n", 30) == b"SIP/2.0 200 OK\r\n\r\n"


def test_answerKeepOnTwistedResponse() -> None:
    from twisted.protocols import sip

    response = sip.Response(200)
    response.addHeader("via", "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK1;rport=5060;KEEP")
    answerKeep(response, 25)
    assert keepaliveInterval(response) == 25
    assert sip.parseViaHeader(response.headers["via"][0]).otherParams == {"keep": "25"}


def test_answerKeepRefusesABadInterval() -> None:
    with pytest.raises(InvalidHeaderError):
        answerKeep(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;keep\r\n\r\n", 0)
