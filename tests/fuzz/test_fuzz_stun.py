"""
Fuzzing the STUN codec and the STUN server with hypothesis: ``stun.decode`` raises ``STUNDecodeError`` and
nothing else on any bytes, and every accessor of a message it accepts works; ``BindingResponder.respond``
never raises and never answers with more than the amplification bound.

The unmarked tests run ``CI_EXAMPLES`` each; the ``fuzz``-marked ones ``SIPNAT_FUZZ_EXAMPLES``.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twisted_sipnat import stun
from twisted_sipnat.core.responder import AMPLIFICATION_FLOOR, BindingResponder, RateLimit

from .stunstrategies import SEEDS, stunLike
from .support import ciSettings, fuzzSettings

KEY = stun.shortTermKey("VOkJxbRl1RmTxUk/WvJxBt")


def checkDecode(data: bytes) -> None:
    try:
        message = stun.decode(data)
    except stun.STUNDecodeError as e:
        # The facts a caller logs when it drops the datagram: what is wrong, and the bytes it is wrong about
        # (the whole input, or the attribute value inside it).
        assert isinstance(e.reason, str) and e.reason and str(e) == e.reason
        assert isinstance(e.data, bytes) and e.data in data
        return
    # Everything a receiver reads from an accepted message must work too.
    assert len(message.transactionId) == 12
    assert message.messageClass in (stun.REQUEST, stun.INDICATION, stun.SUCCESS, stun.ERROR)
    for accessor in ("mappedAddress", "alternateServer", "otherAddress", "responseOrigin", "errorCode",
                     "changeRequest", "software", "unknownComprehensionRequired", "hasIntegrity",
                     "hasFingerprint"):
        getattr(message, accessor)
    assert message.verifyIntegrity(KEY) in (True, False)
    assert message.verifyFingerprint() in (True, False)
    repr(message)
    assert stun.isSTUN(data) or data[0] >= 4  # decode accepts only what the demultiplexer calls STUN


def checkRespond(data: bytes, port: int) -> None:
    responder = BindingResponder(software="fuzz", rateLimit=RateLimit(10.0, 5))
    reply = responder.respond(data, ("192.0.2.7", port), now=0.0)
    if reply is None:
        return
    assert len(reply.data) <= max(len(data), AMPLIFICATION_FLOOR)
    # what we send is well-formed: an RFC 3489 answer (its 128-bit transaction ID echoed) to an RFC 3489 request
    classic = stun.isClassicSTUN(data)
    answer = stun.decodeClassic(reply.data) if classic else stun.decode(reply.data)
    assert answer.transactionId == data[8:20]
    if classic:
        assert reply.data[4:8] == data[4:8] and not answer.hasFingerprint
    assert answer.messageClass in (stun.SUCCESS, stun.ERROR)


def test_seeds_decode() -> None:
    assert len(SEEDS) >= 4
    for seed in SEEDS:
        stun.decode(seed)


@ciSettings
@given(stunLike)
def test_decode_raises_only_stundecodeerror(data: bytes) -> None:
    checkDecode(data)


@pytest.mark.fuzz
@fuzzSettings
@given(stunLike)
def test_decode_raises_only_stundecodeerror_long(data: bytes) -> None:
    checkDecode(data)


@ciSettings
@given(stunLike, st.integers(1, 65535))
def test_responder_never_raises_and_stays_within_the_bound(data: bytes, port: int) -> None:
    checkRespond(data, port)


@pytest.mark.fuzz
@fuzzSettings
@given(stunLike, st.integers(1, 65535))
def test_responder_never_raises_and_stays_within_the_bound_long(data: bytes, port: int) -> None:
    checkRespond(data, port)
