"""
Tests for twisted_sipnat.core.responder: the sans-IO STUN Binding server, RFC 5780 and the rate limit.
"""

from __future__ import annotations

import json
import struct
from typing import List, Optional, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.data import dataPath
from twisted_sipnat import stun
from twisted_sipnat.core.responder import (
    AMPLIFICATION_FLOOR,
    DEFAULT_RESPONDER_BURST,
    DEFAULT_RESPONDER_RATE,
    BindingResponder,
    RateLimit,
    Reply,
)
from twisted_sipnat.errors import InvalidSettingsError

TID = bytes(range(1, 13))
CLIENT = ("198.51.100.7", 40000)
PRIMARY = ("192.0.2.1", 3478)
ALTERNATE = ("192.0.2.2", 3479)
VECTORS = json.loads(dataPath("rfc5769.json").read_text())


def request(attributes: Optional[List[stun.Attribute]] = None, fingerprint: bool = True, method: int = stun.BINDING,
            messageClass: int = stun.REQUEST) -> bytes:
    return stun.Message(method, messageClass, TID, attributes or []).encode(None, fingerprint)


def answer(responder: BindingResponder, data: bytes, source: Tuple[str, int] = CLIENT,
           receivedOn: Optional[Tuple[str, int]] = None) -> Tuple[stun.Message, Reply]:
    reply = responder.respond(data, source, receivedOn)
    assert reply is not None
    return stun.decode(reply.data), reply


class TestBinding:
    def test_success(self) -> None:
        m, reply = answer(BindingResponder(software="twisted_sipnat/0.1.0"), request())
        assert (m.method, m.messageClass, m.transactionId) == (stun.BINDING, stun.SUCCESS, TID)
        assert m.mappedAddress == CLIENT
        assert m.get(stun.XOR_MAPPED_ADDRESS) is not None
        assert m.software == "twisted_sipnat/0.1.0"
        assert m.verifyFingerprint()
        assert reply.sendFrom is None
        assert m.otherAddress is None and m.responseOrigin is None

    def test_ipv6(self) -> None:
        m, _ = answer(BindingResponder(), request(), ("2001:db8::42", 5060))
        assert m.mappedAddress == ("2001:db8::42", 5060)

    def test_ipv4Mapped(self) -> None:
        m, _ = answer(BindingResponder(), request(), ("::ffff:198.51.100.7", 5060))
        assert m.mappedAddress == ("198.51.100.7", 5060)

    def test_fingerprintInKind(self) -> None:
        m, _ = answer(BindingResponder(), request(fingerprint=False))
        assert not m.hasFingerprint
        assert m.attributes == [stun.XorMappedAddress(*CLIENT)]

    def test_noSoftwareByDefault(self) -> None:
        m, _ = answer(BindingResponder(), request())
        assert m.software is None

    def test_badFingerprintDropped(self) -> None:
        data = bytearray(request())
        data[-1] ^= 1
        assert BindingResponder().respond(bytes(data), CLIENT) is None

    def test_integrityIgnored(self) -> None:
        data = stun.Message(stun.BINDING, stun.REQUEST, TID, [stun.Username("u")]).encode(b"key")
        m, _ = answer(BindingResponder(), data)
        assert m.messageClass == stun.SUCCESS and not m.hasIntegrity

    def test_rfc5769Request(self) -> None:
        """The RFC 5769 request carries ICE's PRIORITY, comprehension-required and unknown here: 420."""
        m, _ = answer(BindingResponder(), bytes.fromhex(VECTORS["sampleRequest"]["hex"]))
        assert m.errorCode == (420, "Unknown Attribute")
        assert m.get(stun.UNKNOWN_ATTRIBUTES) == stun.UnknownAttributes((0x0024,))
        assert m.transactionId == bytes.fromhex("b7e7a701bc34d686fa87dfae")

    @pytest.mark.parametrize("messageClass", [stun.INDICATION, stun.SUCCESS, stun.ERROR])
    def test_nonRequestsIgnored(self, messageClass: int) -> None:
        assert BindingResponder().respond(request(messageClass=messageClass), CLIENT) is None

    @pytest.mark.parametrize(
        "data",
        [b"", b"\x00\x01", b"REGISTER sip:example.org SIP/2.0\r\n\r\n", b"\r\n\r\n",
         struct.pack("!HHI12s", 0x4001, 0, 0x2112A442, TID),
         struct.pack("!HHI12s", 0x4001, 0, 0x2112A443, TID),  # no cookie, and not even RFC 3489's leading bits
         struct.pack("!HHI12s", 0x0001, 2, 0x2112A443, TID) + b"\0\0"],  # RFC 3489 lengths are multiples of 4
    )
    def test_notSTUNIgnored(self, data: bytes) -> None:
        assert BindingResponder().respond(data, CLIENT) is None

    @pytest.mark.parametrize(
        "data",
        [
            struct.pack("!HHI12s", 0x0001, 8, 0x2112A442, TID),  # length past the end
            struct.pack("!HHI12s", 0x0001, 4, 0x2112A442, TID) + b"\0\0\0",  # length not matching
        ],
    )
    def test_insensibleLengthIsSilentlyDiscarded(self, data: bytes) -> None:
        """RFC 8489 §6.3: a message whose length is not sensible is silently discarded."""
        assert BindingResponder().respond(data, CLIENT) is None

    def test_malformedAttributeGets400(self) -> None:
        data = struct.pack("!HHI12s", 0x0001, 8, 0x2112A442, TID) + struct.pack("!HH", 0x0020, 4) + b"\0\0\0\0"
        m, _ = answer(BindingResponder(), data)
        assert m.messageClass == stun.ERROR and m.method == stun.BINDING
        assert m.errorCode == (400, "Bad Request")
        assert m.transactionId == TID

    def test_unsupportedMethodIsSilentlyDiscarded(self) -> None:
        """RFC 8489 §6.3: a method the server does not support is silently discarded."""
        assert BindingResponder().respond(request(method=0x0003), CLIENT) is None

    def test_unknownComprehensionRequired(self) -> None:
        data = request([stun.RawAttribute(0x0042, b"x"), stun.RawAttribute(0x8042, b"y"),
                        stun.RawAttribute(0x0043, b"")])
        m, _ = answer(BindingResponder(), data)
        assert m.errorCode == (420, "Unknown Attribute")
        assert m.get(stun.UNKNOWN_ATTRIBUTES) == stun.UnknownAttributes((0x0042, 0x0043))
        assert m.verifyFingerprint()

    def test_rfc3489TypesInARequestGet420(self) -> None:
        """A client tolerates RFC 3489's reserved types in a response; the server still lists them as not
        understood (RFC 8489 §6.3.1), in the order they came, e.g. a RESPONSE-ADDRESS it will not honour."""
        data = request([stun.RawAttribute(stun.RESPONSE_ADDRESS, bytes(8)), stun.RawAttribute(0x0042, b""),
                        stun.RawAttribute(stun.SOURCE_ADDRESS, bytes(8))])
        m, _ = answer(BindingResponder(), data)
        assert m.errorCode == (420, "Unknown Attribute")
        assert m.get(stun.UNKNOWN_ATTRIBUTES) == stun.UnknownAttributes(
            (stun.RESPONSE_ADDRESS, 0x0042, stun.SOURCE_ADDRESS))

    def test_defaultRateLimit(self) -> None:
        limit = RateLimit()
        assert (limit.perSourceRate, limit.burst) == (DEFAULT_RESPONDER_RATE, DEFAULT_RESPONDER_BURST) == (20.0, 40)
        assert sum(limit.allow("192.0.2.9", 0.0) for _ in range(50)) == 40

    def test_unknownOptionalIgnored(self) -> None:
        m, _ = answer(BindingResponder(), request([stun.RawAttribute(0x8042, b"y")]))
        assert m.messageClass == stun.SUCCESS

    @pytest.mark.parametrize("attribute,attrType", [(stun.Padding(bytes(16)), stun.PADDING)])
    def test_unsupportedRFC5780(self, attribute: stun.Attribute, attrType: int) -> None:
        m, _ = answer(BindingResponder(primary=PRIMARY, alternate=ALTERNATE), request([attribute]))
        assert m.errorCode == (420, "Unknown Attribute")
        assert m.get(stun.UNKNOWN_ATTRIBUTES) == stun.UnknownAttributes((attrType,))

    def test_badSource(self) -> None:
        assert BindingResponder().respond(request(), ("not-an-ip", 5060)) is None
        assert BindingResponder().respond(request(), ("192.0.2.1", 70000)) is None


class TestRFC5780:
    def test_changeRequestWithoutAlternate(self) -> None:
        for flags in [(True, False), (False, True), (True, True)]:
            m, _ = answer(BindingResponder(), request([stun.ChangeRequest(*flags)]))
            assert m.errorCode == (420, "Unknown Attribute")
            assert m.get(stun.UNKNOWN_ATTRIBUTES) == stun.UnknownAttributes((stun.CHANGE_REQUEST,))

    def test_noChangeWithoutAlternate(self) -> None:
        m, reply = answer(BindingResponder(), request([stun.ChangeRequest(False, False)]))
        assert m.messageClass == stun.SUCCESS and reply.sendFrom is None

    @pytest.mark.parametrize(
        "receivedOn,flags,origin,other",
        [
            (None, (False, False), PRIMARY, ALTERNATE),
            (PRIMARY, (False, False), PRIMARY, ALTERNATE),
            (PRIMARY, (True, False), ("192.0.2.2", 3478), ALTERNATE),
            (PRIMARY, (False, True), ("192.0.2.1", 3479), ALTERNATE),
            (PRIMARY, (True, True), ALTERNATE, ALTERNATE),
            (ALTERNATE, (False, False), ALTERNATE, PRIMARY),
            (ALTERNATE, (True, True), PRIMARY, PRIMARY),
            (("192.0.2.2", 3478), (False, True), ("192.0.2.2", 3479), ("192.0.2.1", 3479)),
            (("192.0.2.1", 3479), (True, False), ("192.0.2.2", 3479), ("192.0.2.2", 3478)),
        ],
    )
    def test_changeMatrix(self, receivedOn: Optional[Tuple[str, int]], flags: Tuple[bool, bool],
                          origin: Tuple[str, int], other: Tuple[str, int]) -> None:
        responder = BindingResponder(software="s", primary=PRIMARY, alternate=ALTERNATE)
        m, reply = answer(responder, request([stun.ChangeRequest(*flags)]), receivedOn=receivedOn)
        assert m.messageClass == stun.SUCCESS
        assert m.mappedAddress == CLIENT
        assert m.responseOrigin == origin
        assert m.otherAddress == other
        here = receivedOn if receivedOn is not None else PRIMARY
        assert reply.sendFrom == (None if origin == here else origin)

    def test_withoutChangeRequest(self) -> None:
        m, reply = answer(BindingResponder(primary=PRIMARY, alternate=ALTERNATE), request())
        assert (m.responseOrigin, m.otherAddress, reply.sendFrom) == (PRIMARY, ALTERNATE, None)

    def test_ipv6Alternate(self) -> None:
        responder = BindingResponder(primary=("2001:db8::1", 3478), alternate=("2001:db8::2", 3479))
        m, reply = answer(responder, request([stun.ChangeRequest(True, True)]), ("2001:db8::99", 1))
        assert reply.sendFrom == ("2001:db8::2", 3479)
        assert m.responseOrigin == ("2001:db8::2", 3479)
        assert len(reply.data) <= AMPLIFICATION_FLOOR

    @pytest.mark.parametrize(
        "primary,alternate",
        [(None, ALTERNATE), (PRIMARY, ("192.0.2.1", 3479)), (PRIMARY, ("192.0.2.2", 3478))],
    )
    def test_badConfiguration(self, primary: Optional[Tuple[str, int]], alternate: Tuple[str, int]) -> None:
        with pytest.raises(InvalidSettingsError):
            BindingResponder(primary=primary, alternate=alternate)


class TestAmplification:
    def test_longSoftwareDropped(self) -> None:
        responder = BindingResponder(software="x" * 200)
        small = request(fingerprint=False)
        m, reply = answer(responder, small)
        assert m.software is None and len(reply.data) <= AMPLIFICATION_FLOOR
        big = request([stun.RawAttribute(0x8042, bytes(300))])
        m, reply = answer(responder, big)
        assert m.software == "x" * 200 and len(reply.data) <= len(big)

    def test_manyUnknownAttributesTruncated(self) -> None:
        attributes: List[stun.Attribute] = [stun.RawAttribute(t, b"") for t in range(0x0100, 0x0100 + 200)]
        data = request(attributes)
        m, reply = answer(BindingResponder(software="s"), data)
        listed = m.get(stun.UNKNOWN_ATTRIBUTES)
        assert isinstance(listed, stun.UnknownAttributes) and listed.types == tuple(range(0x0100, 0x0100 + 200))
        assert len(reply.data) <= len(data)

    def test_unknownListCutToBudget(self) -> None:
        # 30 empty unknown attributes: a 148-byte request; the answer (ERROR-CODE, 60 bytes of types,
        # FINGERPRINT) is 116 bytes, within the bound, and lists them all.
        data = request([stun.RawAttribute(t, b"") for t in range(0x0100, 0x0100 + 30)])
        m, reply = answer(BindingResponder(), data)
        assert len(reply.data) <= max(len(data), AMPLIFICATION_FLOOR)
        assert m.errorCode is not None and m.errorCode[0] == 420
        assert m.get(stun.UNKNOWN_ATTRIBUTES) == stun.UnknownAttributes(tuple(range(0x0100, 0x0100 + 30)))


class TestRateLimit:
    def test_burstThenRefill(self) -> None:
        limit = RateLimit(perSourceRate=2.0, burst=3)
        assert [limit.allow("192.0.2.1", 0.0) for _ in range(4)] == [True, True, True, False]
        assert limit.allow("192.0.2.2", 0.0)  # another source has its own bucket
        assert not limit.allow("192.0.2.1", 0.4)
        assert limit.allow("192.0.2.1", 0.5)  # 0.5 s x 2/s = one token (0.4 s earlier gave 0.8)
        assert not limit.allow("192.0.2.1", 0.5)
        assert [limit.allow("192.0.2.1", 100.0) for _ in range(4)] == [True, True, True, False]

    def test_clockBackwards(self) -> None:
        # a step back refills nothing at once, and refilling resumes from the new time at once
        limit = RateLimit(perSourceRate=1.0, burst=1)
        assert limit.allow("h", 10.0)
        assert not limit.allow("h", 5.0)
        assert not limit.allow("h", 5.5)
        assert limit.allow("h", 6.0)

    def test_clientSurvivesAnHourStepBack(self) -> None:
        # the figure: a client asking once every 5 s got 39 of 100 answers after a 1 h step back
        limit = RateLimit(perSourceRate=1.0, burst=2)
        answers = [limit.allow("h", 3600.0 + 5 * i if i < 10 else 5 * i) for i in range(100)]
        assert answers.count(True) == 100

    def test_boundedMemory(self) -> None:
        limit = RateLimit(perSourceRate=1.0, burst=1, maxSources=100)
        for i in range(1000):
            limit.allow(f"10.0.{i // 256}.{i % 256}", 0.0)
        assert len(limit) == 100

    def test_evictsLeastRecentlySeen(self) -> None:
        limit = RateLimit(perSourceRate=0.001, burst=1, maxSources=2)
        assert limit.allow("a", 0.0) and limit.allow("b", 0.0)
        assert not limit.allow("a", 0.0)  # "a" is now the most recent
        assert limit.allow("c", 0.0)  # evicts "b"
        assert not limit.allow("a", 0.0)  # "a" was kept, still empty
        assert limit.allow("b", 0.0)  # "b" was forgotten: a fresh bucket

    @pytest.mark.parametrize("args", [(0.0, 1), (-1.0, 1), (1.0, 0), (1.0, 1, 0), (1.0, 1.5)])
    def test_validation(self, args: Tuple[float, ...]) -> None:
        with pytest.raises(InvalidSettingsError):
            RateLimit(*args)  # type: ignore[arg-type]

    def test_responderRateLimited(self) -> None:
        responder = BindingResponder(rateLimit=RateLimit(perSourceRate=1.0, burst=2))
        data = request()
        assert responder.respond(data, CLIENT, now=0.0) is not None
        assert responder.respond(data, CLIENT, now=0.0) is not None
        assert responder.respond(data, CLIENT, now=0.0) is None
        assert responder.respond(data, ("198.51.100.8", 1), now=0.0) is not None
        assert responder.respond(data, CLIENT, now=1.0) is not None

    def test_responsesDoNotSpendTokens(self) -> None:
        responder = BindingResponder(rateLimit=RateLimit(perSourceRate=1.0, burst=1))
        for _ in range(5):
            assert responder.respond(request(messageClass=stun.SUCCESS), CLIENT) is None
        assert responder.respond(request(), CLIENT) is not None


# ---------------------------------------------------------------------------------------------------------
# Properties

sources = st.one_of(
    st.tuples(st.ip_addresses(v=4).map(str), st.integers(0, 0xFFFF)),
    st.tuples(st.ip_addresses(v=6).map(str), st.integers(0, 0xFFFF)),
)
responders = st.sampled_from(
    [
        BindingResponder(),
        BindingResponder(software="twisted_sipnat/0.1.0 " * 4),
        BindingResponder(software="s", primary=("2001:db8::1", 3478), alternate=("2001:db8::2", 3479)),
        BindingResponder(software="s", primary=PRIMARY, alternate=ALTERNATE),
    ]
)
attributes = st.one_of(
    st.builds(stun.ChangeRequest, st.booleans(), st.booleans()),
    st.builds(stun.Software, st.text(max_size=20)),
    st.builds(stun.RawAttribute, st.integers(0, 0xFFFF).filter(lambda t: t not in stun.ATTRIBUTE_CLASSES),
              st.binary(max_size=8)),
    st.builds(stun.ResponsePort, st.integers(0, 0xFFFF)),
    st.builds(stun.Username, st.text(max_size=10)),
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    message = stun.Message(
        draw(st.sampled_from([stun.BINDING, stun.BINDING, 0x002, 0xFFF])),
        draw(st.sampled_from([stun.REQUEST, stun.REQUEST, stun.INDICATION, stun.SUCCESS])),
        draw(st.binary(min_size=12, max_size=12)),
        draw(st.lists(attributes, max_size=6)),
    )
    data = bytearray(message.encode(draw(st.one_of(st.none(), st.just(b"k"))), draw(st.booleans())))
    for _ in range(draw(st.integers(0, 2))):
        if data and draw(st.booleans()):
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        else:
            del data[draw(st.integers(0, len(data))):]
    return bytes(data)


def checkReply(data: bytes, reply: Optional[Reply]) -> None:
    if reply is None:
        return
    assert len(reply.data) <= max(len(data), AMPLIFICATION_FLOOR)
    if data[4:8] != struct.pack("!I", stun.MAGIC_COOKIE):
        # An RFC 3489 request: answered without cookie, the 128-bit transaction ID echoed, no FINGERPRINT.
        m = stun.decodeClassic(reply.data)
        assert reply.data[4:20] == data[4:20] and not m.hasFingerprint
    else:
        m = stun.decode(reply.data)
    assert m.messageClass in (stun.SUCCESS, stun.ERROR)
    assert m.transactionId == data[8:20]
    if m.hasFingerprint:
        assert m.verifyFingerprint()


@given(responders, st.one_of(st.binary(max_size=160), requests()), sources, st.one_of(st.none(), sources))
@settings(deadline=None, max_examples=400)
def test_anyBytes(responder: BindingResponder, data: bytes, source: Tuple[str, int],
                  receivedOn: Optional[Tuple[str, int]]) -> None:
    reply = responder.respond(data, source, receivedOn, now=0.0)
    checkReply(data, reply)


@given(responders, st.binary(min_size=12, max_size=12), st.binary(max_size=140).map(lambda b: b[: len(b) // 4 * 4]),
       sources)
@settings(deadline=None)
def test_validHeaderAnyBody(responder: BindingResponder, tid: bytes, body: bytes, source: Tuple[str, int]) -> None:
    data = struct.pack("!HHI12s", 0x0001, len(body), stun.MAGIC_COOKIE, tid) + body
    reply = responder.respond(data, source)
    if reply is None and source[1]:
        # A Binding request header always earns an answer (success, 400 or 420) -- unless its FINGERPRINT is
        # wrong, which means the datagram is not STUN meant for us, or it came from port 0 (no way back).  Even
        # when the attributes before it do not decode, a FINGERPRINT is the last 8 bytes (RFC 8489 §14.7).
        assert data[-8:-4] == b"\x80\x28\x00\x04" and not stun.endsWithValidFingerprint(data)
    checkReply(data, reply)
