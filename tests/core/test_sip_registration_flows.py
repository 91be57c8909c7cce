"""
The registration machine once per flow (RFC 5626 §4.2, §6): the same instance, reg-ids 1, 2, ...; each flow reads
its own binding's lifetime from a 2xx listing every binding of the instance, and a 439 on one flow leaves the
others' outbound alone.
"""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from twisted_sipnat.core.sip import NameAddress, responseTo
from twisted_sipnat.core.sip.register import parseAOR
from twisted_sipnat.core.sip.registration import Refused, Registered, Registration, Retry

INSTANCE = "urn:uuid:00000000-0000-4000-8000-000000000002"


def flow(regId: int) -> Registration:
    counter = itertools.count(1)
    return Registration(parseAOR("alice@example.com"), expires=600, callId=f"c{regId}", fromTag="t",
                        token=lambda: f"tok{next(counter)}", instance=INSTANCE, regId=regId)


def contactLine(regId: int, expires: int) -> str:
    return f'<sip:alice@192.0.2.9:5060;ob>;reg-id={regId};+sip.instance="<{INSTANCE}>";expires={expires}'


@given(n=st.integers(1, 8), lifetimes=st.lists(st.integers(60, 7200), min_size=8, max_size=8))
def test_eachFlowReadsItsOwnBindingFromA200ListingAll(n: int, lifetimes: list[int]) -> None:
    flows = [flow(regId) for regId in range(1, n + 1)]
    for regId, reg in enumerate(flows, 1):
        reg.begin()
        request = reg.request(("192.0.2.9", 5060), ("192.0.2.9", 5060))
        contact = NameAddress.parse(request.headers.get("Contact") or "")
        assert (contact.instance, contact.regId) == (f"<{INSTANCE}>", regId), "the same instance, its own reg-id"
        response = responseTo(request, 200)
        response.headers.add("Require", "outbound")
        for other in range(1, n + 1):  # RFC 3261 §10.3: the 2xx lists every binding of the AOR
            response.headers.add("Contact", contactLine(other, lifetimes[other - 1]))
        decision = reg.final(response)
        assert isinstance(decision, Registered) and decision.outbound
        assert decision.expires == lifetimes[regId - 1], "its own binding, by instance and reg-id (RFC 5626 §6)"


def test_a439OnOneFlowDropsOutboundOnThatFlowOnly() -> None:
    first, second = flow(1), flow(2)
    for reg in (first, second):
        reg.begin()
    refused = first.request(("192.0.2.9", 5060), ("192.0.2.9", 5060))
    assert isinstance(first.final(responseTo(refused, 439)), Retry)
    assert not first.outbound and second.outbound
    again = first.request(("192.0.2.9", 5060), ("192.0.2.9", 5060))
    assert NameAddress.parse(again.headers.get("Contact") or "").regId is None
    kept = second.request(("192.0.2.9", 5060), ("192.0.2.9", 5060))
    assert NameAddress.parse(kept.headers.get("Contact") or "").regId == 2


def test_flowsKeepTheirOwnCallIdAndCSeq() -> None:
    first, second = flow(1), flow(2)
    for _ in range(3):
        first.begin()
        first.request(("192.0.2.9", 5060), ("192.0.2.9", 5060))
    second.begin()
    request = second.request(("192.0.2.9", 5060), ("192.0.2.9", 5060))
    assert (first.cseq, second.cseq) == (3, 1)
    assert request.headers.get("Call-ID") == "c2", "RFC 3261 §10.2.4: one Call-ID per registration, per flow"
    assert isinstance(second.final(responseTo(request, 403)), Refused) and first.cseq == 3
