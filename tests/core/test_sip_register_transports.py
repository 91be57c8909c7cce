"""
core.sip over TCP and TLS: a REGISTER's Via and Contact per transport (RFC 3261 §18.1.1, §19.1.1; RFC 5630), the
non-INVITE transaction with no retransmission over a reliable transport (§17.1.2.2), and stream messages read
with Content-Length mandatory (§18.3).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twisted_sipnat.core.sip import SIPURI, NameAddress, SIPParseError, Via, responseTo
from twisted_sipnat.core.sip.clienttransaction import T1, TIMER_F, NonInviteClientTransaction, TimedOut
from twisted_sipnat.core.sip.register import buildRegister, contactOf, grantedExpires, parseAOR, readMessage
from twisted_sipnat.core.sip.registration import Registered, Registration

AOR = parseAOR("alice@example.com")


def register(transport: str, **kw: object) -> object:
    return buildRegister(AOR, ("10.0.0.2", 40000), ("10.0.0.2", 40000), callId="c", cseq=1, branch="b1",
                         fromTag="t", expires=600, transport=transport, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("transport, contact", [
    ("UDP", "<sip:alice@10.0.0.2:40000>"),
    ("tcp", "<sip:alice@10.0.0.2:40000;transport=tcp>"),
    ("TLS", "<sips:alice@10.0.0.2:40000>"),
])
def test_the_via_and_the_contact_name_the_transport(transport: str, contact: str) -> None:
    request = register(transport)
    assert Via.parse(request.headers.get("Via")).transport == transport.upper()  # type: ignore[attr-defined]
    assert request.headers.get("Contact") == contact  # type: ignore[attr-defined]


def test_outbound_on_tcp_keeps_ob_after_the_transport() -> None:
    request = register("TCP", instance="urn:uuid:1", regId=1)
    address = NameAddress.parse(request.headers.get("Contact"))  # type: ignore[attr-defined]
    assert address.sipURI == SIPURI("sip", "10.0.0.2", user="alice", port=40000,
                                    params=(("transport", "tcp"), ("ob", None)))
    assert address.regId == 1


def test_an_unknown_transport_is_refused() -> None:
    with pytest.raises(ValueError):
        register("SCTP")


def test_the_granted_lifetime_is_read_from_our_tcp_contact_only() -> None:
    request = register("TCP")
    response = responseTo(request, 200)  # type: ignore[arg-type]
    response.headers.add("Contact", "<sip:alice@10.0.0.2:40000>;expires=30")  # UDP: another binding (§19.1.4)
    response.headers.add("Contact", "<sip:alice@10.0.0.2:40000;transport=tcp>;expires=300")
    assert grantedExpires(response, 600, contactOf(request)) == 300  # type: ignore[arg-type]


def test_a_registration_on_tls_builds_TLS_requests_and_rewrites_the_contact_keeping_sips() -> None:
    registration = Registration(AOR, expires=600, callId="c", fromTag="t", token=lambda: "x", transport="TLS")
    registration.begin()
    request = registration.request(("10.0.0.2", 40000), ("10.0.0.2", 40000))
    response = responseTo(request, 200)
    response.headers.set("Via", "SIP/2.0/TLS 10.0.0.2:40000;branch=z9hG4bKx;rport=41000;received=203.0.113.9")
    retry = registration.final(response)
    again = registration.request(retry.contact, ("10.0.0.2", 40000))  # type: ignore[union-attr]
    assert again.headers.get("Contact") == "<sips:alice@203.0.113.9:41000>"
    assert isinstance(registration.final(responseTo(again, 200)), Registered)


def test_a_reliable_transaction_is_sent_once_and_times_out_at_Timer_F() -> None:
    txn = NonInviteClientTransaction(register("TCP"), 100.0, reliable=True)  # type: ignore[arg-type]
    assert txn.nextWake() == 100.0 + TIMER_F
    assert txn.timerDue(100.0 + TIMER_F - 0.001) is None and txn.sends == 1
    assert txn.timerDue(100.0 + TIMER_F) == TimedOut(TIMER_F)


@given(st.lists(st.floats(min_value=0, max_value=2 * TIMER_F), max_size=30))
def test_a_reliable_transaction_never_retransmits(times: list[float]) -> None:
    txn = NonInviteClientTransaction(register("TLS"), 0.0, reliable=True)  # type: ignore[arg-type]
    for now in sorted(times):
        outcome = txn.timerDue(now)
        assert outcome is None or (isinstance(outcome, TimedOut) and now >= 64 * T1)
    assert txn.sends == 1


def test_a_stream_message_needs_its_content_length() -> None:
    with pytest.raises(SIPParseError):
        readMessage(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP a:1;branch=z9hG4bKx\r\n\r\n", stream=True)
    message = readMessage(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP a:1;branch=z9hG4bKx\r\nContent-Length: 0\r\n\r\n",
                          stream=True)
    assert message.startLine == "SIP/2.0 200 OK"
