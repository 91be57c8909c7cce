"""What the client role answers to a request on a flow (core.sip.uas), and its OPTIONS pings (core.sip.ping)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from twisted_sipnat.core.sip import Request, Response, parse
from twisted_sipnat.core.sip.clienttransaction import NonInviteClientTransaction
from twisted_sipnat.core.sip.ping import buildOptions, pingAnswered
from twisted_sipnat.core.sip.register import parseAOR
from twisted_sipnat.core.sip.uas import answerRequest


def request(method: str, cseqMethod: str = "", drop: str = "") -> Request:
    lines = [
        f"{method} sip:alice@198.51.100.7:5060 SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKabc",
        "From: <sip:bob@example.com>;tag=9",
        "To: <sip:alice@example.com>",
        "Call-ID: c1@example.com",
        f"CSeq: 7 {cseqMethod or method}",
        "Max-Forwards: 70",
    ]
    lines = [line for line in lines if not (drop and line.startswith(drop + ":"))]
    message = parse(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(message, Request)
    return message


def test_optionsIsAnsweredWithWhatTheUASupports() -> None:
    response = answerRequest(request("OPTIONS"), toTag="t1")
    assert response is not None and response.code == 200
    headers = response.headers
    assert "outbound" in (headers.get("Supported") or "")
    assert "OPTIONS" in (headers.get("Allow") or "") and headers.get("Accept") == "application/sdp"
    assert headers.get("To") == "<sip:alice@example.com>;tag=t1" and headers.get("CSeq") == "7 OPTIONS"
    assert headers.get("Via") == "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKabc"


def test_anythingElseIsTemporarilyUnavailableAndAckIsNeverAnswered() -> None:
    for method in ("INVITE", "MESSAGE", "SUBSCRIBE", "BYE"):
        response = answerRequest(request(method))
        assert response is not None and response.code == 480, method
    assert answerRequest(request("ACK")) is None


def test_aRequestMissingWhatAResponseCopiesIsNotAnswered() -> None:
    for header in ("Via", "From", "To", "Call-ID", "CSeq"):
        assert answerRequest(request("OPTIONS", drop=header)) is None, header
    assert answerRequest(request("OPTIONS", cseqMethod="INVITE")) is None


@given(method=st.from_regex(r"[A-Za-z][A-Za-z0-9.!%*_+`'~-]{0,30}", fullmatch=True))
def test_everyMethodGetsOneAnswerThatSerialisesAndParses(method: str) -> None:
    response = answerRequest(request(method))
    if method == "ACK":
        assert response is None
        return
    assert response is not None and response.code in (200, 480)
    again = parse(response.toBytes())
    assert isinstance(again, Response) and again.code == response.code


def test_anOptionsPingIsAddressedToTheHopAndAnyFinalResponseAnswersIt() -> None:
    ping = buildOptions(parseAOR("alice@example.com"), ("192.0.2.1", 5060), ("10.0.0.2", 5062), callId="c",
                        cseq=3, branch="b1", fromTag="f")
    assert ping.method == "OPTIONS" and ping.uri == "sip:192.0.2.1:5060"
    assert ping.headers.get("CSeq") == "3 OPTIONS" and "rport" in (ping.headers.get("Via") or "")
    txn = NonInviteClientTransaction(ping, 0.0)
    for code, final in ((100, False), (200, True), (404, True), (483, True), (503, True)):
        response = Response(code, "x", ping.headers)
        assert txn.matches(response)
        assert pingAnswered(response) is final
