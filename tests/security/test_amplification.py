"""
Amplification: what the STUN server role (``SharedDatagramProtocol(stunResponder=True)`` and
``BindingResponder``) sends back is never more than needed, bad input earns a small answer or none, and the
per-source rate limit caps what one address gets, without touching other sources.

Sizes are measured on what the shell actually writes to the (fake) socket.
"""

from __future__ import annotations

import struct
from typing import Any, Tuple

import pytest
from fuzz.support import ciSettings
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from twisted_sipnat import stun
from twisted_sipnat.core.responder import AMPLIFICATION_FLOOR, BindingResponder, RateLimit
from twisted_sipnat.testing import sharedDatagramSocket

CLIENT = ("198.51.100.7", 40000)
VICTIM = ("198.51.100.50", 5060)

def serverSocket(**kwargs: Any) -> Tuple[Any, Any, Clock]:
    clock = Clock()
    shared, transport = sharedDatagramSocket(None, None, clock=clock, **kwargs)
    return shared, transport, clock


text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
optionalAttribute = st.one_of(
    text.map(stun.Software),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40).map(stun.Username),
    st.tuples(st.integers(0x8000, 0xFFFF).filter(lambda t: t not in (stun.FINGERPRINT, stun.SOFTWARE,
                                                                     stun.ALTERNATE_SERVER, stun.RESPONSE_ORIGIN,
                                                                     stun.OTHER_ADDRESS, stun.PASSWORD_ALGORITHMS,
                                                                     stun.ALTERNATE_DOMAIN)),
              st.binary(max_size=40)).map(lambda tv: stun.RawAttribute(*tv)),
)


@st.composite
def bindingRequest(draw: st.DrawFn) -> bytes:
    attributes = draw(st.lists(optionalAttribute, max_size=4))
    key = draw(st.one_of(st.none(), st.binary(min_size=1, max_size=16)))
    return stun.Message(stun.BINDING, stun.REQUEST, None, attributes).encode(key=key, fingerprint=draw(st.booleans()))


sources = st.one_of(st.just(CLIENT), st.just(("2001:db8::7", 5060)), st.just(("::ffff:198.51.100.7", 1)))


@ciSettings
@given(bindingRequest(), sources)
def test_answers_are_never_larger_than_needed(request: bytes, source: Tuple[str, int]) -> None:
    shared, transport, clock = serverSocket(stunResponder=True)
    shared.datagramReceived(request, source)
    (answer, to), = transport.written
    assert to == source
    assert len(answer) <= max(len(request), AMPLIFICATION_FLOOR)
    message = stun.decode(answer)
    decodedRequest = stun.decode(request)
    # Exactly what is needed: the mapped address, FINGERPRINT in kind, SOFTWARE only if it fits the bound.
    expected = {stun.XOR_MAPPED_ADDRESS} | ({stun.FINGERPRINT} if decodedRequest.hasFingerprint else set())
    assert {a.type for a in message.attributes} - {stun.SOFTWARE} == expected


def test_worst_ratio_is_the_bare_request() -> None:
    """The smallest possible request (20 bytes, nothing in it) gets the largest ratio: XOR-MAPPED-ADDRESS and
    SOFTWARE; never above the 128-byte floor."""
    shared, transport, clock = serverSocket(stunResponder=True)
    bare = stun.Message(stun.BINDING, stun.REQUEST).encode(fingerprint=False)
    shared.datagramReceived(bare, ("2001:db8::7", 5060))
    (answer, _), = transport.written
    assert len(bare) == 20 and len(answer) <= AMPLIFICATION_FLOOR
    assert len(answer) / len(bare) <= AMPLIFICATION_FLOOR / 20


def test_bad_fingerprint_gets_no_answer() -> None:
    shared, transport, clock = serverSocket(stunResponder=True)
    data = stun.Message(stun.BINDING, stun.REQUEST).encode()
    shared.datagramReceived(data[:-1] + bytes([data[-1] ^ 0xFF]), CLIENT)
    assert transport.written == []


@pytest.mark.parametrize("count", [1, 10, 300])
def test_unknown_comprehension_required_gets_a_small_420(count: int) -> None:
    """An attacker packing unknown comprehension-required attributes gets them listed in UNKNOWN-ATTRIBUTES only
    as far as the request's own size allows."""
    shared, transport, clock = serverSocket(stunResponder=True)
    attributes = [stun.RawAttribute(0x7000 + i, b"") for i in range(count)]
    data = stun.Message(stun.BINDING, stun.REQUEST, None, attributes).encode()
    shared.datagramReceived(data, CLIENT)
    (answer, _), = transport.written
    message = stun.decode(answer)
    assert message.errorCode is not None and message.errorCode[0] == 420
    assert len(answer) <= max(len(data), AMPLIFICATION_FLOOR)


def test_undecodable_request_gets_a_small_400() -> None:
    shared, transport, clock = serverSocket(stunResponder=True)
    data = bytearray(stun.Message(stun.BINDING, stun.REQUEST, None, [stun.Software("x" * 400)]).encode(
        fingerprint=False))
    data[22:24] = struct.pack("!H", 404)  # the attribute now overruns the message
    shared.datagramReceived(bytes(data), CLIENT)
    (answer, _), = transport.written
    message = stun.decode(answer)
    assert message.errorCode is not None and message.errorCode[0] == 400
    assert len(answer) <= AMPLIFICATION_FLOOR  # no echo of anything


@pytest.mark.parametrize("klass", [stun.INDICATION, stun.SUCCESS, stun.ERROR])
def test_non_requests_get_no_answer(klass: int) -> None:
    shared, transport, clock = serverSocket(stunResponder=True)
    shared.datagramReceived(stun.Message(stun.BINDING, klass).encode(), CLIENT)
    assert transport.written == []


def limitedSocket(rate: float, burst: int) -> Tuple[Any, Any, Clock]:
    clock = Clock()
    responder = BindingResponder(software="t", rateLimit=RateLimit(rate, burst))
    shared, transport = sharedDatagramSocket(None, None, responder=responder, clock=clock)
    return shared, transport, clock


def flood(shared: Any, clock: Clock, source: Tuple[str, int], n: int, within: float) -> None:
    for _ in range(n):
        shared.datagramReceived(stun.Message(stun.BINDING, stun.REQUEST).encode(), source)
        clock.advance(within / n)


def answersTo(transport: Any, host: str) -> int:
    return sum(1 for _, to in transport.written if to[0] == host)


@pytest.mark.parametrize("rate,burst", [(20.0, 40), (1.0, 5), (100.0, 1)])
def test_rate_limit_caps_answers_to_one_address(rate: float, burst: int) -> None:
    shared, transport, clock = limitedSocket(rate, burst)
    flood(shared, clock, VICTIM, 1000, within=1.0)
    answered = answersTo(transport, VICTIM[0])
    assert answered <= burst + rate * 1.0 + 1, answered  # the burst plus one second of refill
    assert answered >= burst
    # Another source is not affected by the flood.
    other = ("203.0.113.9", 1234)
    flood(shared, clock, other, burst, within=0.0)
    assert answersTo(transport, other[0]) == burst
    assert shared.stats["stun.requests.unanswered"] == 1000 - answered


def test_rate_limit_memory_is_bounded_under_spoofed_sources() -> None:
    clock = Clock()
    limit = RateLimit(20.0, 40, maxSources=1000)
    responder = BindingResponder(rateLimit=limit)
    shared, transport = sharedDatagramSocket(None, None, responder=responder, clock=clock)
    request = stun.Message(stun.BINDING, stun.REQUEST).encode()
    for i in range(100_000):
        shared.datagramReceived(request, (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 5060))
    assert len(limit) == 1000


def test_server_role_socket_is_rate_limited_by_default() -> None:
    shared, transport, clock = serverSocket(stunResponder=True)
    flood(shared, clock, VICTIM, 1000, within=1.0)
    assert answersTo(transport, VICTIM[0]) < 1000
