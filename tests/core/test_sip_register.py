"""
core.sip.register and core.sip.clienttransaction: the REGISTER client's pure parts, RFC 3261 §10.2 and §17.1.2.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twisted_sipnat.core.sip import SIPURI, Headers, NameAddress, Request, Response, SIPParseError, Via, parse
from twisted_sipnat.core.sip import responseTo as sipResponseTo
from twisted_sipnat.core.sip.clienttransaction import (
    T2,
    TIMER_F,
    NonInviteClientTransaction,
    Retransmit,
    TimedOut,
)
from twisted_sipnat.core.sip.register import (
    MAX_EXPIRES,
    buildRegister,
    contactOf,
    grantedExpires,
    minExpires,
    parseAOR,
    readMessage,
    registrarKeepalive,
)
from twisted_sipnat.errors import InvalidSettingsError

AOR = parseAOR("alice@example.com")


def register(cseq: int = 1, branch: str = "abc123", expires: int = 3600,
             contact: Tuple[str, int] = ("198.51.100.7", 40000)) -> Request:
    return buildRegister(AOR, contact, ("10.0.0.2", 5060), callId="call-1", cseq=cseq, branch=branch,
                         fromTag="tag1", expires=expires)


def responseTo(request: Request, code: int, extra: Optional[List[Tuple[str, str]]] = None) -> Response:
    response = sipResponseTo(request, code)
    for name, value in extra or []:
        response.headers.add(name, value)
    return response


# ---- building -------------------------------------------------------------------------------------------------


def test_theRegisterIsWhatRFC3261Section10_2Asks() -> None:
    request = parse(register().toBytes())
    assert isinstance(request, Request)
    assert (request.method, request.uri) == ("REGISTER", "sip:example.com")  # §10.2: no user part
    assert NameAddress.parse(request.headers.get("To") or "").sipURI == AOR
    sender = NameAddress.parse(request.headers.get("From") or "")
    assert sender.sipURI == AOR and sender.tag == "tag1"
    via = Via.parse(request.headers.get("Via") or "")
    assert via.branch == "z9hG4bKabc123" and via.hasParam("rport") and via.hasParam("keep")
    assert (via.host, via.port) == ("10.0.0.2", 5060)
    assert request.headers.get("Max-Forwards") == "70"
    assert request.headers.get("CSeq") == "1 REGISTER"
    assert request.headers.get("Expires") == "3600"
    assert contactOf(request) == SIPURI("sip", "198.51.100.7", user="alice", port=40000)


def test_anIPv6ContactAndViaAreBracketed() -> None:
    request = buildRegister(AOR, ("2001:db8::7", 4000), ("2001:db8::2", 5060), callId="c", cseq=1, branch="b",
                            fromTag="t", expires=60)
    assert "Contact: <sip:alice@[2001:db8::7]:4000>" in request.toBytes().decode()
    assert Via.parse(request.headers.get("Via") or "").host == "2001:db8::2"


@pytest.mark.parametrize("text", ["example.com", "sip:example.com", "alice@", "sip:alice@exa mple.com", "tel:+1"])
def test_anAORWithoutUserOrDomainIsABadOption(text: str) -> None:
    with pytest.raises(InvalidSettingsError) as info:
        parseAOR(text)
    assert info.value.key == "register"


def test_anAORKeepsItsScheme() -> None:
    assert str(parseAOR("sips:bob@example.org")) == "sips:bob@example.org"
    assert str(parseAOR("sip:bob@example.org")) == "sip:bob@example.org"


# ---- the transaction ------------------------------------------------------------------------------------------


def sendTimes(provisionalAt: Optional[float] = None, step: float = 0.125) -> List[float]:
    """When the transaction sends, driven as a shell drives it, with a 1xx arriving at ``provisionalAt``."""
    request = register()
    txn = NonInviteClientTransaction(request, 0.0)
    times = [0.0]
    now = 0.0
    while not txn.done:
        wake = txn.nextWake()
        assert wake is not None
        if provisionalAt is not None and now <= provisionalAt < wake:
            assert txn.responseReceived(responseTo(request, 100)) is None
            provisionalAt = None
        now = wake
        outcome = txn.timerDue(now)
        if isinstance(outcome, Retransmit):
            assert outcome.data == txn.data
            times.append(now)
        else:
            assert isinstance(outcome, TimedOut) and now == TIMER_F
    return times


def test_timerEDoublesToT2AndTimerFEndsItAt32Seconds() -> None:
    # RFC 3261 §17.1.2.2: 0, 0.5, 1.5, 3.5, 7.5, then every T2 = 4 s; Timer F at 64 x T1 = 32 s.
    assert sendTimes() == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]


def test_afterAProvisionalResponseTimerEFiresEveryT2() -> None:
    # A 100 Trying at 0.2 s: Proceeding; the retransmission already due at 0.5 s goes, then every T2.
    assert sendTimes(provisionalAt=0.2) == [0.0, 0.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5]


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.none(), st.floats(min_value=0.0, max_value=40.0)))
def test_noRetransmissionIsEverFurtherApartThanT2NorAfterTimerF(provisionalAt: Optional[float]) -> None:
    times = sendTimes(provisionalAt)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(0 < gap <= T2 for gap in gaps)
    assert times[-1] < TIMER_F
    assert times[:2] == [0.0, 0.5]


def test_theFinalResponseEndsItAndIsReturnedOnce() -> None:
    request = register()
    txn = NonInviteClientTransaction(request, 0.0)
    ok = responseTo(request, 200)
    assert txn.responseReceived(ok) is ok
    assert txn.done and txn.final is ok and txn.nextWake() is None
    assert txn.responseReceived(ok) is None  # a retransmitted 200 is absorbed
    assert txn.timerDue(100.0) is None


def test_timersBeforeTheirTimeDoNothing() -> None:
    txn = NonInviteClientTransaction(register(), 10.0)
    assert txn.timerDue(10.4) is None
    assert txn.sends == 1


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r.headers.set("Via", "SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKother;rport"),
        lambda r: r.headers.set("CSeq", "2 REGISTER"),
        lambda r: r.headers.set("CSeq", "1 OPTIONS"),
        lambda r: r.headers.set("CSeq", "garbage"),
        lambda r: r.headers.set("Call-ID", "someone-else"),
        lambda r: r.headers.set("Via", "not a via"),
        lambda r: r.headers.remove("Via"),
    ],
    ids=["branch", "cseq-number", "cseq-method", "cseq-malformed", "call-id", "via-malformed", "no-via"],
)
def test_aResponseOfAnotherTransactionIsNotOurs(change: object) -> None:
    # RFC 3261 §17.1.3: the top Via branch and the CSeq method decide; the number and Call-ID must agree too.
    request = register()
    txn = NonInviteClientTransaction(request, 0.0)
    response = responseTo(request, 200)
    change(response)  # type: ignore[operator]
    assert not txn.matches(response)
    assert txn.responseReceived(response) is None and not txn.done


@settings(max_examples=200, deadline=None)
@given(
    cseq=st.integers(min_value=0, max_value=2**31 - 1),
    branch=st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=24),
    code=st.integers(min_value=100, max_value=699),
    expires=st.integers(min_value=0, max_value=MAX_EXPIRES),
)
def test_aResponseToTheRequestOffTheWireMatches(cseq: int, branch: str, code: int, expires: int) -> None:
    request = register(cseq, branch, expires)
    txn = NonInviteClientTransaction(request, 0.0)
    response = readMessage(responseTo(parse(txn.data), code).toBytes())  # type: ignore[arg-type]
    assert isinstance(response, Response)
    assert txn.matches(response)
    assert (txn.responseReceived(response) is response) == (code >= 200)


def test_aRequestWithoutABranchCannotStartATransaction() -> None:
    request = register()
    request.headers.set("Via", "SIP/2.0/UDP 10.0.0.2:5060")
    with pytest.raises(ValueError):
        NonInviteClientTransaction(request, 0.0)


# ---- reading responses --------------------------------------------------------------------------------------------


def test_readMessageRefusesWhatIsNotUTF8() -> None:
    with pytest.raises(SIPParseError):
        readMessage(b"SIP/2.0 200 OK\r\nCall-ID: \xff\xfe\r\nContent-Length: 0\r\n\r\n")
    with pytest.raises(SIPParseError):
        readMessage(b"SIP/2.0 200 \xc3(\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(readMessage("SIP/2.0 200 D\u00e9j\u00e0\r\nContent-Length: 0\r\n\r\n".encode()), Response)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_readMessageRaisesNothingButSIPParseError(data: bytes) -> None:
    try:
        readMessage(data)
    except SIPParseError:
        pass


def ok(*headers: Tuple[str, str]) -> Response:
    return Response(200, "OK", Headers(list(headers)))


def test_grantedExpiresIsOurContactsExpiresFirst() -> None:
    ours = SIPURI("sip", "198.51.100.7", user="alice", port=40000)
    response = ok(
        ("Contact", "<sip:alice@203.0.113.9:5060>;expires=3600, <sip:alice@198.51.100.7:40000>;expires=120"),
        ("Expires", "900"),
    )
    assert grantedExpires(response, 3600, ours) == 120
    assert grantedExpires(response, 3600) == 3600  # without ours: the first Contact with expires


def test_grantedExpiresFallsBackToExpiresThenToWhatWasAsked() -> None:
    ours = SIPURI("sip", "198.51.100.7", user="alice", port=40000)
    assert grantedExpires(ok(("Contact", "<sip:alice@203.0.113.9>;expires=60"), ("Expires", "900")), 30, ours) == 900
    assert grantedExpires(ok(("Contact", "<sip:alice@198.51.100.7:40000>")), 30, ours) == 30
    assert grantedExpires(ok(("Expires", "junk")), 30) == 30
    assert grantedExpires(ok(("Expires", "99999999999999")), 30) == MAX_EXPIRES
    assert grantedExpires(ok(("m", "<sip:alice@198.51.100.7:40000>;EXPIRES=7")), 30, ours) == 7


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80).filter(lambda t: "\r" not in t and "\n" not in t),
       st.text(max_size=20).filter(lambda t: "\r" not in t and "\n" not in t))
def test_grantedExpiresNeverRaisesOnWhatCameOffTheWire(contact: str, expires: str) -> None:
    response = ok(("Contact", contact), ("Expires", expires), ("Flow-Timer", expires), ("Via", contact),
                  ("Min-Expires", expires))
    response.code = 423
    assert 0 <= grantedExpires(response, 60, AOR) <= MAX_EXPIRES
    keep = registrarKeepalive(response)
    assert keep is None or keep > 0
    found = minExpires(response)
    assert found is None or 0 <= found <= MAX_EXPIRES


def test_registrarKeepaliveIsFlowTimerThenViaKeep() -> None:
    via = ("Via", "SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKx;rport=4000;received=198.51.100.7;keep=30")
    assert registrarKeepalive(ok(via, ("Flow-Timer", "120"))) == 120
    assert registrarKeepalive(ok(via)) == 30
    assert registrarKeepalive(ok(via, ("Flow-Timer", "0"))) == 30  # zero is unusable: the Via's keep
    assert registrarKeepalive(ok(("Via", "SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKx;keep"))) is None
    assert registrarKeepalive(ok()) is None


def test_minExpiresIsReadFromA423Only() -> None:
    assert minExpires(Response(423, "Interval Too Brief", Headers([("Min-Expires", "600")]))) == 600
    assert minExpires(Response(400, "Bad", Headers([("Min-Expires", "600")]))) is None
    assert minExpires(Response(423, "Interval Too Brief")) is None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(min_value=0.0, max_value=3.0),
                          st.sampled_from(["timer", "100", "200", "486", "stray"])), max_size=40))
def test_anyInterleavingOfTimersAndResponsesKeepsTheRules(steps: List[Tuple[float, str]]) -> None:
    # Whatever arrives when: at most one final response is ever returned, nothing is sent once it is over
    # or at Timer F, and there are never more than the 11 sends of RFC 3261 Timer E within Timer F.
    request = register()
    txn = NonInviteClientTransaction(request, 0.0)
    now, finals, sends = 0.0, 0, 1
    stray = responseTo(request, 200)
    stray.headers.set("CSeq", "9 REGISTER")
    for delay, what in steps:
        now += delay
        if what == "timer":
            before = txn.done
            outcome = txn.timerDue(now)
            if isinstance(outcome, Retransmit):
                assert not before and now < TIMER_F
                sends += 1
            elif isinstance(outcome, TimedOut):
                assert not before and now >= TIMER_F and finals == 0
        else:
            response = stray if what == "stray" else responseTo(request, int(what))
            got = txn.responseReceived(response)
            if got is not None:
                finals += 1
                assert got.code >= 200 and what != "stray"
        wake = txn.nextWake()
        assert (wake is None) == txn.done
    assert finals <= 1 and sends <= 11 and txn.sends == sends
