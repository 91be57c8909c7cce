"""The per-flow registration machine: challenges, 423, 439, outbound and the Contact rewrite, all bounded."""

from __future__ import annotations

import itertools
from typing import Optional

from hypothesis import given, settings
from hypothesis import strategies as st

from twisted_sipnat.core.sip import NameAddress, Request, Response, Via, responseTo
from twisted_sipnat.core.sip.digest import Credentials
from twisted_sipnat.core.sip.register import parseAOR
from twisted_sipnat.core.sip.registration import (
    MAX_RETRIES,
    Refused,
    Registered,
    Registration,
    Retry,
    reflexiveAddress,
)

INSTANCE = "urn:uuid:00000000-0000-4000-8000-000000000001"
CONTACT = ("198.51.100.7", 40000)
SENT_BY = ("10.0.0.2", 5060)


def machine(outbound: bool = True, password: Optional[str] = "secret") -> Registration:
    counter = itertools.count(1)
    return Registration(parseAOR("alice@example.com"), expires=600, callId="c", fromTag="t",
                        token=lambda: f"tok{next(counter)}",
                        credentials=Credentials("alice", password) if password is not None else None,
                        instance=INSTANCE if outbound else None, regId=1 if outbound else None)


def answer(request: Request, code: int, *headers: tuple[str, str], received: Optional[tuple[str, int]] = None
           ) -> Response:
    response = responseTo(request, code)
    for name, value in headers:
        response.headers.add(name, value)
    if received is not None:
        via = Via.parse(response.headers.get("Via") or "").receivedFrom(*received)
        response.headers.set("Via", str(via))
    return response


def test_outboundRegisterCarriesInstanceRegIdObAndSupported() -> None:
    reg = machine()
    reg.begin()
    request = reg.request(CONTACT, SENT_BY)
    contact = NameAddress.parse(request.headers.get("Contact") or "")
    assert contact.instance == f"<{INSTANCE}>" and contact.regId == 1
    assert contact.sipURI.params == (("ob", None),)
    assert request.headers.getAll("Supported") == ["outbound", "path"]


def test_401ThenAuthThen200WithRequireOutbound() -> None:
    reg = machine()
    reg.begin()
    first = reg.request(CONTACT, SENT_BY)
    assert "Authorization" not in first.headers
    decision = reg.final(answer(first, 401, ("WWW-Authenticate", 'Digest realm="example.com", nonce="n", qop="auth"')))
    assert isinstance(decision, Retry) and decision.contact == CONTACT
    second = reg.request(decision.contact, SENT_BY)
    assert 'username="alice"' in (second.headers.get("Authorization") or "")
    assert second.headers.get("CSeq") == "2 REGISTER"
    ok = answer(second, 200, ("Require", "outbound"), ("Flow-Timer", "29"),
                ("Contact", f'<sip:alice@192.0.2.1:1;ob>;reg-id=1;+sip.instance="<{INSTANCE}>";expires=300'))
    done = reg.final(ok)
    assert isinstance(done, Registered)
    assert (done.outbound, done.flowTimer, done.expires) == (True, 29, 300)  # instance and reg-id, not the address


def test_wrongPasswordOneRetryThenRefusedNamingTheCode() -> None:
    reg = machine(password="wrong")
    reg.begin()
    challenge = ("Proxy-Authenticate", 'Digest realm="r", nonce="n", qop="auth"')
    assert isinstance(reg.final(answer(reg.request(CONTACT, SENT_BY), 407, challenge)), Retry)
    second = reg.request(CONTACT, SENT_BY)
    assert "Proxy-Authorization" in second.headers
    refused = reg.final(answer(second, 407, challenge))
    assert isinstance(refused, Refused) and refused.code == 407


def test_staleNonceIsRetriedWithTheNewNonce() -> None:
    reg = machine()
    reg.begin()
    reg.final(answer(reg.request(CONTACT, SENT_BY), 401, ("WWW-Authenticate", 'Digest realm="r", nonce="a"')))
    stale = reg.final(answer(reg.request(CONTACT, SENT_BY), 401,
                             ("WWW-Authenticate", 'Digest realm="r", nonce="b", stale=true')))
    assert isinstance(stale, Retry)
    assert 'nonce="b"' in (reg.request(CONTACT, SENT_BY).headers.get("Authorization") or "")


def test_423RaisesExpiresOnce() -> None:
    reg = machine()
    reg.begin()
    decision = reg.final(answer(reg.request(CONTACT, SENT_BY), 423, ("Min-Expires", "1200")))
    assert isinstance(decision, Retry) and reg.expires == 1200
    assert reg.request(CONTACT, SENT_BY).headers.get("Expires") == "1200"
    again = reg.final(answer(reg.request(CONTACT, SENT_BY), 423, ("Min-Expires", "2400")))
    assert isinstance(again, Refused) and again.code == 423


def test_439RegistersAgainWithoutOutbound() -> None:
    reg = machine()
    reg.begin()
    decision = reg.final(answer(reg.request(CONTACT, SENT_BY), 439))
    assert isinstance(decision, Retry) and not reg.outbound
    retry = reg.request(CONTACT, SENT_BY)
    contact = NameAddress.parse(retry.headers.get("Contact") or "")
    assert contact.regId is None and contact.sipURI.params == () and "Supported" not in retry.headers
    assert contact.instance == f"<{INSTANCE}>"  # the instance stays (RFC 5626 §4.2.1 drops reg-id and ;ob only)
    assert isinstance(reg.final(answer(retry, 439)), Refused)  # a second 439 without outbound: a plain error


def test_withoutOutboundTheContactIsRewrittenOnceToTheReflexiveAddress() -> None:
    reg = machine(outbound=False)
    reg.begin()
    nat = ("203.0.113.9", 61000)
    decision = reg.final(answer(reg.request(CONTACT, SENT_BY), 200, received=nat))
    assert isinstance(decision, Retry) and decision.contact == nat
    rewritten = reg.request(decision.contact, SENT_BY)
    assert "203.0.113.9:61000" in (rewritten.headers.get("Contact") or "")
    # the registrar now reports yet another address: no second rewrite in the same registration
    done = reg.final(answer(rewritten, 200, received=("203.0.113.9", 62000)))
    assert isinstance(done, Registered) and done.reflexive == ("203.0.113.9", 62000)
    # a refresh asking for the old address binds the rewritten one at once
    reg.begin()
    refresh = reg.request(CONTACT, SENT_BY)
    assert "203.0.113.9:61000" in (refresh.headers.get("Contact") or "")
    assert isinstance(reg.final(answer(refresh, 200, received=nat)), Registered)


def test_withOutboundTheAddressIsNotRewritten() -> None:
    reg = machine()
    reg.begin()
    done = reg.final(answer(reg.request(CONTACT, SENT_BY), 200, received=("203.0.113.9", 61000)))
    assert isinstance(done, Registered) and done.reflexive == ("203.0.113.9", 61000) and not done.outbound


def test_reflexiveAddressNeedsRport() -> None:
    reg = machine()
    request = reg.request(CONTACT, SENT_BY)
    assert reflexiveAddress(responseTo(request, 200)) is None  # rport offered but not filled in


@settings(max_examples=60)
@given(st.lists(st.sampled_from([
    (401, ("WWW-Authenticate", 'Digest realm="r", nonce="n", qop="auth"')),
    (401, ("WWW-Authenticate", 'Digest realm="r", nonce="n2", qop="auth", stale=true')),
    (407, ("Proxy-Authenticate", 'Digest realm="p", nonce="n"')),
    (407, ("Proxy-Authenticate", 'Digest realm="p", nonce="s", stale=true')),
    (423, ("Min-Expires", "7200")),
    (439, ("X", "y")),
    (200, ("X", "y")),
]), min_size=1, max_size=40))
def test_noSequenceOfAnswersLoops(answers: list[tuple[int, tuple[str, str]]]) -> None:
    """Whatever a registrar (or a forger) answers, a registration ends within MAX_RETRIES + 1 requests."""
    reg = machine(outbound=False)
    reg.begin()
    sent = 0
    contact = CONTACT
    for code, header in itertools.cycle(answers):
        request = reg.request(contact, SENT_BY)
        sent += 1
        decision = reg.final(answer(request, code, header, received=("203.0.113.1", sent)))
        if not isinstance(decision, Retry):
            break
        contact = decision.contact
    assert sent <= MAX_RETRIES + 1
