"""
Property tests for twisted_sipnat.core.stun: round trips for every attribute type, and no exception but
STUNDecodeError from any bytes.
"""

from __future__ import annotations

import ipaddress
from typing import List

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from twisted_sipnat import stun

hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: str(ipaddress.IPv6Address(int(a)))),
)
ports = st.integers(0, 0xFFFF)
texts = st.text(max_size=40)
blobs = st.binary(max_size=40)
tids = st.binary(min_size=12, max_size=12)
unknownTypes = st.integers(0, 0xFFFF).filter(lambda t: t not in stun.ATTRIBUTE_CLASSES)
algorithms = st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=12))

attributes = st.one_of(
    st.builds(stun.MappedAddress, hosts, ports),
    st.builds(stun.XorMappedAddress, hosts, ports),
    st.builds(stun.AlternateServer, hosts, ports),
    st.builds(stun.ResponseOrigin, hosts, ports),
    st.builds(stun.OtherAddress, hosts, ports),
    st.builds(stun.Username, texts),
    st.builds(stun.Userhash, st.binary(min_size=32, max_size=32)),
    st.builds(stun.Realm, texts),
    st.builds(stun.Nonce, texts),
    st.builds(stun.Software, texts),
    st.builds(stun.AlternateDomain, texts),
    st.builds(stun.ErrorCode, st.integers(300, 699), texts),
    st.builds(stun.UnknownAttributes, st.lists(st.integers(0, 0xFFFF), max_size=9).map(tuple)),
    st.builds(stun.PasswordAlgorithms, st.lists(algorithms, max_size=4).map(tuple)),
    st.builds(stun.PasswordAlgorithm, st.integers(0, 0xFFFF), st.binary(max_size=12)),
    st.builds(stun.ChangeRequest, st.booleans(), st.booleans()),
    st.builds(stun.ResponsePort, ports),
    st.builds(stun.Padding, blobs),
    st.builds(stun.RawAttribute, unknownTypes, blobs),
)
messages = st.builds(
    stun.Message,
    st.integers(0, 0xFFF),
    st.sampled_from([stun.REQUEST, stun.INDICATION, stun.SUCCESS, stun.ERROR]),
    tids,
    st.lists(attributes, max_size=8),
)
keys = st.one_of(st.none(), st.binary(max_size=80))


@given(messages, keys, st.booleans(), st.booleans())
@settings(deadline=None)
def test_roundTrip(message: stun.Message, key: bytes | None, fingerprint: bool, sha256: bool) -> None:
    data = message.encode(key, fingerprint, sha256)
    assert stun.isSTUN(data) == (data[0] < 4)
    assert stun.peekHeader(data) == (message.method, message.messageClass, message.transactionId)
    decoded = stun.decode(data)
    computed = len(decoded.attributes) - (key is not None) - fingerprint
    assert decoded.attributes[:computed] == message.attributes
    assert (decoded.method, decoded.messageClass, decoded.transactionId) == (
        message.method, message.messageClass, message.transactionId)
    assert decoded.verifyFingerprint() == fingerprint
    assert decoded.hasIntegrity == (key is not None)
    if key is not None:
        assert decoded.verifyIntegrity(key)
        assert not decoded.verifyIntegrity(key + b"!")
    assert decoded.encode(key, fingerprint, sha256) == data


@given(st.binary(max_size=200))
@settings(deadline=None)
def test_randomBytes(data: bytes) -> None:
    try:
        decoded = stun.decode(data)
    except stun.STUNDecodeError:
        decoded = None
    header = stun.peekHeader(data)
    # peekHeader applies decode's header checks; isSTUN those plus RFC 7983's first-byte rule.
    assert stun.isSTUN(data) == (header is not None and data[0] < 4)
    if header is not None:
        assert header[2] == data[8:20]
        assert header[:2] == stun.splitMessageType(int.from_bytes(data[:2], "big"))
    if decoded is not None:
        assert header == (decoded.method, decoded.messageClass, decoded.transactionId)


@given(st.binary(min_size=20, max_size=20), st.binary(max_size=60).map(lambda b: b[: len(b) - len(b) % 4]))
@settings(deadline=None)
def test_headerChecksAgreeWithDecode(header: bytes, body: bytes) -> None:
    """Random headers with the cookie and a matching length: peekHeader says None exactly when decode's header
    checks fail, whatever the attributes."""
    data = header[:2] + len(body).to_bytes(2, "big") + stun.MAGIC_COOKIE.to_bytes(4, "big") + header[8:] + body
    peeked = stun.peekHeader(data)
    assert (peeked is None) == bool(data[0] & 0xC0)
    assert stun.isSTUN(data) == (data[0] < 4)
    try:
        m = stun.decode(data)
    except stun.STUNDecodeError:
        return
    assert peeked == (m.method, m.messageClass, m.transactionId)


@given(st.binary(max_size=120).map(lambda b: b[: len(b) - len(b) % 4]), tids, st.integers(0, 0x3FFF))
@settings(deadline=None)
def test_randomBodiesWithValidHeader(body: bytes, tid: bytes, msgType: int) -> None:
    """Random attribute soup behind a valid header: exercises every attribute parser's error paths."""
    data = msgType.to_bytes(2, "big") + len(body).to_bytes(2, "big") + stun.MAGIC_COOKIE.to_bytes(4, "big")
    try:
        m = stun.decode(data + tid + body)
    except stun.STUNDecodeError:
        return
    assert m.verifyIntegrity(b"k") in (True, False)
    assert m.verifyFingerprint() == (m.hasFingerprint and stun.endsWithValidFingerprint(data + tid + body))
    assert isinstance(m.unknownComprehensionRequired, tuple)
    assert set(m.unknownComprehensionRequired) <= set(m.unknownRequired(tolerate=()))
    assert not set(m.unknownComprehensionRequired) & stun.RFC3489_RESERVED


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(messages).encode(draw(keys), draw(st.booleans())))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "extend", "length", "attrlen"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[draw(st.integers(0, len(data))):]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=8))
        elif op == "length" and len(data) >= 4:
            data[2:4] = draw(st.integers(0, 0xFFFF)).to_bytes(2, "big")
        elif op == "attrlen" and len(data) >= 24:
            data[22:24] = draw(st.integers(0, 0xFFFF)).to_bytes(2, "big")
    return bytes(data)


@given(mutated())
@settings(deadline=None, max_examples=500)
def test_mutatedMessages(data: bytes) -> None:
    try:
        m = stun.decode(data)
    except stun.STUNDecodeError:
        return
    assert isinstance(m, stun.Message)
    m.verifyIntegrity(b"key")
    m.verifyFingerprint()
    m.mappedAddress  # noqa: B018 -- accessors must not raise either
    m.errorCode  # noqa: B018


@given(st.lists(messages, min_size=1, max_size=4), st.data())
@settings(deadline=None)
def test_framerAnyChunking(batch: List[stun.Message], data: st.DataObject) -> None:
    wire = [m.encode() for m in batch]
    stream = b"".join(wire)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    framer = stun.StreamFramer()
    out: List[bytes] = []
    last = 0
    for cut in [*cuts, len(stream)]:
        out.extend(framer.feed(stream[last:cut]))
        last = cut
    assert out == wire
    assert framer.buffered == 0


@given(tids, st.one_of(st.none(), texts), st.one_of(st.none(), texts), keys, st.booleans())
@settings(deadline=None)
def test_fastBindingRequest(tid: bytes, software: str | None, username: str | None, key: bytes | None,
                            fingerprint: bool) -> None:
    attrs: List[stun.Attribute] = []
    if username is not None:
        attrs.append(stun.Username(username))
    if software is not None:
        attrs.append(stun.Software(software))
    expected = stun.Message(stun.BINDING, stun.REQUEST, tid, attrs).encode(key, fingerprint)
    assert stun.encodeBindingRequest(tid, software, username, key, fingerprint) == expected


@given(st.text(max_size=30))
@settings(deadline=None)
def test_opaqueStringIdempotent(text: str) -> None:
    assume(text)
    once = stun.opaqueString(text)
    assert stun.opaqueString(once) == once
