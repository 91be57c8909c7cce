"""
twisted_sipnat.core.registrar: RFC 3261 §10.3 step by step, RFC 5626 §6 outbound bindings, the bound on the
table and expiry by ``now``.
"""

from __future__ import annotations

from typing import List, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.sipedgekit import TCP_FLOW, UDP_FLOW, register
from twisted_sipnat.core.registrar import Flow, Registrar, aorOf
from twisted_sipnat.core.sip import SIPURI, NameAddress, Request, Response, Via, parse
from twisted_sipnat.errors import InvalidSettingsError

AOR = "sip:bob@example.com"
OUTBOUND = '<sip:bob@10.0.0.1:5060;ob>;+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";reg-id=1'


def _registrar(**kw: object) -> Registrar:
    return Registrar(["example.com"], **kw)  # type: ignore[arg-type]


def _send(registrar: Registrar, data: bytes, now: float = 0.0, flow: Flow = UDP_FLOW) -> Response:
    message = parse(data)
    assert isinstance(message, Request)
    return registrar.register(message, flow, now).response


def _contacts(response: Response) -> List[NameAddress]:
    return [NameAddress.parse(v) for v in response.headers.getAll("Contact")]


def test_settingsAreChecked() -> None:
    with pytest.raises(InvalidSettingsError) as info:
        _registrar(minExpires=100, defaultExpires=50)
    assert info.value.key == "default-expires"
    with pytest.raises(InvalidSettingsError):
        _registrar(maxRegistrations=0)
    with pytest.raises(InvalidSettingsError):
        _registrar(flowTimer=0)


# -- step 1: the Request-URI names a served domain ------------------------------------------------------------


def test_step1ForeignDomainIs404AndStoresNothing() -> None:
    registrar = _registrar()
    response = _send(registrar, register(uri="sip:other.example"))
    assert response.code == 404
    assert len(registrar) == 0


def test_step1DomainIsCaseInsensitive() -> None:
    registrar = _registrar()
    assert _send(registrar, register(uri="sip:EXAMPLE.com")).code == 200


def test_step1NonSIPRequestURIIs416() -> None:
    assert _send(_registrar(), register(uri="tel:+1555")).code == 416


# -- step 2: Require ------------------------------------------------------------------------------------------


def test_step2UnsupportedRequireIs420WithUnsupported() -> None:
    response = _send(_registrar(), register(extra=["Require: path, outbound"]))
    assert response.code == 420
    assert response.headers.get("Unsupported") == "path"


# -- step 5: the AOR ------------------------------------------------------------------------------------------


def test_step5ToInAForeignDomainIs404() -> None:
    registrar = _registrar()
    data = register().replace(b"To: <sip:bob@example.com>", b"To: <sip:bob@elsewhere.example>")
    assert _send(registrar, data).code == 404
    assert len(registrar) == 0


def test_step5AORIsCanonical() -> None:
    assert aorOf(SIPURI.parse("sip:%62ob@EXAMPLE.COM:5060;transport=tcp?x=y")) == AOR
    registrar = _registrar()
    data = register().replace(b"To: <sip:bob@example.com>", b"To: \"Bob\" <sip:%62ob@Example.COM;user=ip>")
    assert _send(registrar, data).code == 200
    assert [b.aor for b in registrar.lookup(AOR, 1)] == [AOR]


# -- step 6: Contact * and expiry -----------------------------------------------------------------------------


def test_step6WildcardNeedsExpiresZero() -> None:
    registrar = _registrar()
    _send(registrar, register())
    assert _send(registrar, register(contacts=["*"], cseq=2)).code == 400
    assert _send(registrar, register(contacts=["*"], expires="30", cseq=2)).code == 400
    assert len(registrar) == 1


def test_step6WildcardWithAnotherContactIs400() -> None:
    registrar = _registrar()
    response = _send(registrar, register(contacts=["*", "<sip:bob@10.0.0.2>"], expires="0"))
    assert response.code == 400


def test_step6WildcardRemovesEveryBinding() -> None:
    registrar = _registrar()
    _send(registrar, register(contacts=["<sip:bob@10.0.0.1>", "<sip:bob@10.0.0.2>"]))
    assert len(registrar.lookup(AOR, 1)) == 2
    response = _send(registrar, register(contacts=["*"], expires="0", cseq=2), 2)
    assert response.code == 200
    assert response.headers.getAll("Contact") == []
    assert len(registrar) == 0


@pytest.mark.parametrize(
    ("contact", "expires", "granted"),
    [
        ("<sip:bob@10.0.0.1>;expires=120", "300", 120),  # the parameter wins
        ("<sip:bob@10.0.0.1>", "300", 300),  # else the header
        ("<sip:bob@10.0.0.1>", None, 3600),  # else the default
        ("<sip:bob@10.0.0.1>;expires=99999", None, 7200),  # cut to maxExpires
        ("<sip:bob@10.0.0.1>;expires=4294967295", None, 7200),
    ],
)
def test_step6ExpiryPerContact(contact: str, expires: Optional[str], granted: int) -> None:
    registrar = _registrar()
    response = _send(registrar, register(contacts=[contact], expires=expires))
    assert response.code == 200
    assert [c.expires for c in _contacts(response)] == [granted]
    assert registrar.lookup(AOR, 0)[0].expiresAt == granted


def test_step6BelowMinExpiresIs423WithMinExpires() -> None:
    registrar = _registrar(minExpires=120, defaultExpires=3600)
    response = _send(registrar, register(expires="30"))
    assert response.code == 423
    assert response.headers.get("Min-Expires") == "120"
    assert len(registrar) == 0


def test_step6MalformedExpiresIs400() -> None:
    assert _send(_registrar(), register(expires="soon")).code == 400
    assert _send(_registrar(), register(contacts=["<sip:bob@10.0.0.1>;expires=x"])).code == 400


@pytest.mark.parametrize("how", ["header", "param", "wildcard"])
def test_step6ExpiryZeroRemovesTheBinding(how: str) -> None:
    registrar = _registrar()
    _send(registrar, register(contacts=["<sip:bob@10.0.0.1:5060>"]))
    if how == "header":
        data = register(contacts=["<sip:bob@10.0.0.1:5060>"], expires="0", cseq=2)
    elif how == "param":
        data = register(contacts=["<sip:bob@10.0.0.1:5060>;expires=0"], cseq=2)
    else:
        data = register(contacts=["*"], expires="0", cseq=2)
    response = _send(registrar, data, 1)
    assert response.code == 200
    assert registrar.lookup(AOR, 1) == []
    assert registrar.nextWakeup() is None


def test_step6RemovalMatchesWithURIEquality() -> None:
    """§19.1.4: an escaped user and a differently cased host are the same Contact."""
    registrar = _registrar()
    _send(registrar, register(contacts=["<sip:bob@HOST.example:5060;transport=udp>"]))
    _send(registrar, register(contacts=["<sip:%62ob@host.example:5060;transport=UDP>;expires=0"], cseq=2))
    assert len(registrar) == 0


# -- step 7: Call-ID and CSeq ---------------------------------------------------------------------------------


def test_step7SameCallIdLowerCSeqFailsAndChangesNothing() -> None:
    registrar = _registrar()
    _send(registrar, register(cseq=5))
    response = _send(registrar, register(cseq=4, expires="0", branch="z9hG4bKold"))
    assert response.code == 500
    assert len(registrar) == 1


def test_step7SameCSeqAndBranchIsARetransmission() -> None:
    registrar = _registrar()
    first = _send(registrar, register(expires="600"))
    again = _send(registrar, register(expires="600"), 10)
    assert first.code == again.code == 200
    assert _contacts(again)[0].expires == 590, "nothing refreshed"


def test_step7SameCSeqOtherBranchFails() -> None:
    registrar = _registrar()
    _send(registrar, register())
    assert _send(registrar, register(branch="z9hG4bKother", expires="0")).code == 500


def test_step7OtherCallIdReplaces() -> None:
    registrar = _registrar()
    _send(registrar, register(cseq=9, expires="600"))
    response = _send(registrar, register(callId="other", cseq=1, expires="100"))
    assert response.code == 200
    assert [c.expires for c in _contacts(response)] == [100]


def test_step7AllOrNothing() -> None:
    """One contact refused (423) fails the request: the other contact is not added either."""
    registrar = _registrar()
    response = _send(registrar, register(contacts=["<sip:bob@10.0.0.1>;expires=600", "<sip:bob@10.0.0.2>;expires=5"]))
    assert response.code == 423
    assert len(registrar) == 0


# -- step 8 and queries ---------------------------------------------------------------------------------------


def test_queryWithoutContactListsBindings() -> None:
    registrar = _registrar()
    empty = _send(registrar, register(contacts=[]))
    assert empty.code == 200 and empty.headers.getAll("Contact") == []
    _send(registrar, register(contacts=["<sip:bob@10.0.0.1>", "<sip:bob@10.0.0.2>"], expires="600"))
    listed = _send(registrar, register(contacts=[], cseq=2), 100)
    assert sorted(c.uri for c in _contacts(listed)) == ["sip:bob@10.0.0.1", "sip:bob@10.0.0.2"]
    assert {c.expires for c in _contacts(listed)} == {500}
    assert len(registrar) == 2


def test_twoHundredListsEveryBindingOfTheAOR() -> None:
    registrar = _registrar()
    _send(registrar, register(contacts=["<sip:bob@10.0.0.1>"], expires="600"))
    response = _send(registrar, register(contacts=["<sip:bob@10.0.0.2>"], expires="300", callId="c2"), 60)
    assert sorted((c.uri, c.expires) for c in _contacts(response)) == [
        ("sip:bob@10.0.0.1", 540), ("sip:bob@10.0.0.2", 300)]


def test_flowTimerAndKeep() -> None:
    registrar = _registrar(flowTimer=30)
    data = register(via="SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKk;keep")
    response = _send(registrar, data)
    assert response.headers.get("Flow-Timer") == "30"
    assert Via.parse(response.headers.get("Via") or "").keep == 30


# -- RFC 5626 §6 outbound -------------------------------------------------------------------------------------


def test_outboundBindingRequiresOutboundAndIsKeyedByInstanceAndRegId() -> None:
    registrar = _registrar()
    response = _send(registrar, register(contacts=[OUTBOUND], extra=["Supported: outbound, path"]))
    assert response.code == 200
    assert response.headers.getAll("Require") == ["outbound"]
    # A new Contact URI with the same instance and reg-id replaces the binding (a new flow after a rebinding).
    moved = OUTBOUND.replace("10.0.0.1:5060", "10.0.0.9:5062")
    response = _send(registrar, register(contacts=[moved], extra=["Supported: outbound"], cseq=2), 5, TCP_FLOW)
    bindings = registrar.lookup(AOR, 5)
    assert [str(b.uri) for b in bindings] == ["sip:bob@10.0.0.9:5062;ob"]
    assert bindings[0].outbound and bindings[0].flow == TCP_FLOW


def test_regIdWithoutSupportedOutboundIsAPlainBinding() -> None:
    registrar = _registrar()
    response = _send(registrar, register(contacts=[OUTBOUND]))
    assert response.headers.getAll("Require") == []
    assert not registrar.lookup(AOR, 0)[0].outbound


def test_regIdOnTwoContactsIs400() -> None:
    second = OUTBOUND.replace("reg-id=1", "reg-id=2").replace("10.0.0.1", "10.0.0.2")
    response = _send(_registrar(), register(contacts=[OUTBOUND, second], extra=["Supported: outbound"]))
    assert response.code == 400


def test_flowClosedMarksBindingsGone() -> None:
    registrar = _registrar()
    _send(registrar, register(contacts=[OUTBOUND], extra=["Supported: outbound"]), flow=TCP_FLOW)
    assert registrar.flowCounts() == {"tcp": 1}
    registrar.flowClosed(TCP_FLOW)
    assert registrar.lookup(AOR, 1)[0].flowGone
    assert registrar.flowCounts() == {}


# -- the bound ------------------------------------------------------------------------------------------------


def test_fullRegistrarRefusesNewBindingsWith503ButRefreshesAndRemoves() -> None:
    registrar = _registrar(maxRegistrations=3)
    for i in range(3):
        assert _send(registrar, register(user=f"u{i}", contacts=[f"<sip:u{i}@10.0.0.1>"], expires="600")).code == 200
    refused = _send(registrar, register(user="new", contacts=["<sip:new@10.0.0.1>"]), 100)
    assert refused.code == 503
    assert refused.headers.get("Retry-After") == "500", "until the first binding expires"
    assert len(registrar) == 3 and registrar.refused == 1
    refresh = register(user="u0", contacts=["<sip:u0@10.0.0.1>"], expires="600", cseq=2)
    assert _send(registrar, refresh, 100).code == 200
    remove = register(user="u1", contacts=["<sip:u1@10.0.0.1>"], expires="0", cseq=2)
    assert _send(registrar, remove, 100).code == 200
    assert _send(registrar, register(user="new", contacts=["<sip:new@10.0.0.1>"], cseq=2), 100).code == 200
    assert len(registrar) == 3


# -- expiry ---------------------------------------------------------------------------------------------------


def test_expiryByNow() -> None:
    registrar = _registrar()
    _send(registrar, register(contacts=["<sip:bob@10.0.0.1>;expires=100", "<sip:bob@10.0.0.2>;expires=200"]))
    assert registrar.nextWakeup() == 100
    assert registrar.expire(99) == []
    assert [str(b.uri) for b in registrar.expire(100)] == ["sip:bob@10.0.0.1"]
    assert registrar.nextWakeup() == 200
    registrar.expire(1000)
    assert len(registrar) == 0 and registrar.nextWakeup() is None


def test_refreshesDoNotGrowTheHeap() -> None:
    registrar = _registrar()
    for cseq in range(1, 2000):
        _send(registrar, register(cseq=cseq, branch=f"z9hG4bK{cseq}", expires="600"), cseq)
    assert len(registrar) == 1
    assert len(registrar._heap) <= 2 * len(registrar) + 64
    assert registrar.nextWakeup() == 1999 + 600


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from([0, 60, 120, 600, 3600]), st.integers(0, 50)),
                max_size=40))
def test_tableMatchesAModel(steps: List[tuple]) -> None:  # type: ignore[type-arg]
    """Random registrations, removals and time: the registrar agrees with a dict of (contact -> expiry)."""
    registrar = _registrar(maxRegistrations=4)
    model: dict = {}  # type: ignore[type-arg]
    now = 0.0
    for cseq, (contact, expires, advance) in enumerate(steps, start=1):
        now += advance
        registrar.expire(now)
        model = {k: v for k, v in model.items() if v > now}
        key = f"sip:bob@10.0.0.{contact}"
        response = _send(registrar, register(contacts=[f"<{key}>"], expires=str(expires), cseq=cseq,
                                             branch=f"z9hG4bK{cseq}"), now)
        if expires == 0:
            model.pop(key, None)
            assert response.code == 200
        elif key not in model and len(model) >= 4:
            assert response.code == 503
        else:
            assert response.code == 200
            model[key] = now + expires
        live = {str(b.uri): b.expiresAt for b in registrar.lookup(AOR, now)}
        assert live == model
        wake = registrar.nextWakeup()
        assert wake == (min(model.values()) if model else None)


def test_contactsPerAORAreBoundedWith503() -> None:
    registrar = _registrar(maxContacts=3)
    contacts = [f"<sip:bob@10.0.0.{i}>" for i in range(3)]
    assert _send(registrar, register(contacts=contacts, expires="600")).code == 200
    refused = _send(registrar, register(contacts=["<sip:bob@10.0.0.9>"], cseq=2, branch="z9hG4bK2"), 100)
    assert refused.code == 503 and refused.headers.get("Retry-After") == "500"
    assert _send(registrar, register(contacts=[contacts[0]], expires="600", cseq=3, branch="z9hG4bK3")).code == 200
    swap = [f"{contacts[1]};expires=0", "<sip:bob@10.0.0.9>"]
    assert _send(registrar, register(contacts=swap, cseq=4, branch="z9hG4bK4")).code == 200, "a removal makes room"
    assert len(registrar.lookup(AOR, 0)) == 3
