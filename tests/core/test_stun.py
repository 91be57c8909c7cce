"""
Tests for twisted_sipnat.core.stun: RFC 5769 vectors, strict decoding, integrity, fingerprint, keys, framing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
import zlib
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from tests.data import dataPath
from twisted_sipnat import stun

VECTORS_PATH = dataPath("rfc5769.json")
VECTORS: Dict[str, Any] = json.loads(VECTORS_PATH.read_text())
SHORT_KEY = stun.shortTermKey(VECTORS["shortTermPassword"])
TID = bytes.fromhex(VECTORS["transactionId"])


def vector(name: str) -> bytes:
    return bytes.fromhex(VECTORS[name]["hex"])


def build(attributes: List[Tuple[int, bytes]], msgType: int = 0x0001, tid: bytes = TID, cookie: int = 0x2112A442,
          pad: bytes = b"\0") -> bytes:
    """A message assembled by hand (independently of the codec), for malformed and unusual inputs."""
    body = b"".join(
        struct.pack("!HH", t, len(v)) + v + pad * (-len(v) % 4) for t, v in attributes
    )
    return struct.pack("!HHI12s", msgType, len(body), cookie, tid) + body


def sign(data: bytes, key: bytes, attrType: int = stun.MESSAGE_INTEGRITY, algorithm: str = "sha1",
         size: int = 20) -> bytes:
    """Append an integrity attribute computed with the standard library (RFC 8489 §14.5)."""
    length = len(data) - 20 + 4 + size
    signed = data[:2] + struct.pack("!H", length) + data[4:]
    mac = hmac.new(key, signed, algorithm).digest()[:size]
    return signed + struct.pack("!HH", attrType, size) + mac


def addFingerprint(data: bytes) -> bytes:
    data = data[:2] + struct.pack("!H", len(data) - 20 + 8) + data[4:]
    return data + struct.pack("!HHI", stun.FINGERPRINT, 4, zlib.crc32(data) ^ 0x5354554E)


# ---------------------------------------------------------------------------------------------------------
# RFC 5769


class TestRFC5769:
    def test_sampleRequest(self) -> None:
        m = stun.decode(vector("sampleRequest"))
        v = VECTORS["sampleRequest"]
        assert (m.method, m.messageClass, m.transactionId) == (stun.BINDING, stun.REQUEST, TID)
        assert m.software == v["software"]
        assert m.get(stun.USERNAME) == stun.Username(v["username"])
        assert m.get(0x0024) == stun.RawAttribute(0x0024, struct.pack("!I", v["priority"]))
        assert m.get(0x8029) == stun.RawAttribute(0x8029, bytes.fromhex(v["iceControlled"]))
        assert m.hasIntegrity and m.hasFingerprint
        assert m.verifyIntegrity(SHORT_KEY)
        assert m.verifyFingerprint()
        # PRIORITY is comprehension-required and unknown to a plain STUN codec; ICE-CONTROLLED is optional.
        assert m.unknownComprehensionRequired == (0x0024,)

    @pytest.mark.parametrize("name", ["sampleIPv4Response", "sampleIPv6Response"])
    def test_responses(self, name: str) -> None:
        m = stun.decode(vector(name))
        v = VECTORS[name]
        assert (m.method, m.messageClass, m.transactionId) == (stun.BINDING, stun.SUCCESS, TID)
        assert m.software == v["software"]
        assert m.mappedAddress == tuple(v["xorMappedAddress"])
        assert m.verifyIntegrity(SHORT_KEY)
        assert m.verifyFingerprint()
        assert not m.verifyIntegrity(SHORT_KEY + b"x")
        assert m.unknownComprehensionRequired == ()

    def test_longTerm(self) -> None:
        v = VECTORS["sampleLongTermRequest"]
        data = vector("sampleLongTermRequest")
        m = stun.decode(data)
        key = stun.longTermKey(v["username"], v["realm"], v["password"])
        assert key == hashlib.md5(f"{v['username']}:{v['realm']}:{v['password']}".encode()).digest()
        assert m.get(stun.USERNAME) == stun.Username(v["username"])
        assert m.get(stun.NONCE) == stun.Nonce(v["nonce"])
        assert m.get(stun.REALM) == stun.Realm(v["realm"])
        assert m.verifyIntegrity(key)
        assert not m.hasFingerprint and not m.verifyFingerprint()
        # 2.4 pads with zeros, so a zero-padding encoder reproduces it byte for byte.
        assert m.encode(key, fingerprint=False) == data

    @pytest.mark.parametrize("name", ["sampleRequest", "sampleIPv4Response", "sampleIPv6Response"])
    def test_reencodeSpacePadded(self, name: str) -> None:
        """2.1-2.3 pad with spaces; re-encoded with zeros they differ, but carry the same attributes."""
        original = stun.decode(vector(name))
        again = stun.decode(original.encode(SHORT_KEY))
        assert again.attributes[:-2] == original.attributes[:-2]  # all but the recomputed MI and FINGERPRINT
        assert (again.method, again.messageClass, again.transactionId) == (
            original.method, original.messageClass, original.transactionId)
        assert again.verifyIntegrity(SHORT_KEY) and again.verifyFingerprint()

    def test_tamperedVectorFails(self) -> None:
        data = bytearray(vector("sampleIPv4Response"))
        data[30] ^= 0x01  # inside SOFTWARE
        m = stun.decode(bytes(data))
        assert not m.verifyIntegrity(SHORT_KEY)
        assert not m.verifyFingerprint()


# ---------------------------------------------------------------------------------------------------------
# RFC 3489-era servers

#: A Binding success as stund 0.97 sends it to an RFC 5389 client (which put the magic cookie in the first four
#: bytes of the transaction ID, so stund echoes it), written out by hand.  RFC 3489 §11.2 defines the
#: attributes: MAPPED-ADDRESS (0x0001), SOURCE-ADDRESS (0x0004: where the response came from) and CHANGED-ADDRESS
#: (0x0005: the server's other IP and port), each 0x00, family 0x01, port, IPv4 address; then XOR-MAPPED-ADDRESS
#: (RFC 8489 §14.2) and SERVER-NAME (0x8022, which RFC 8489 calls SOFTWARE).  RFC 8489 §18.3.1 reserves 0x0004
#: and 0x0005; they are comprehension-required by number.
STUND_TID = bytes.fromhex("0102030405060708090a0b0c")
STUND_RESPONSE = bytes.fromhex(
    "0101" "0044" "2112a442" "0102030405060708090a0b0c"  # Binding success, 68-byte body, cookie, transaction ID
    "0001" "0008" "00" "01" "9c40" "c6336407"  # MAPPED-ADDRESS 198.51.100.7:40000
    "0004" "0008" "00" "01" "0d96" "c0000201"  # SOURCE-ADDRESS 192.0.2.1:3478
    "0005" "0008" "00" "01" "0d97" "c0000202"  # CHANGED-ADDRESS 192.0.2.2:3479
    "0020" "0008" "00" "01" "bd52" "e721c045"  # XOR-MAPPED-ADDRESS 198.51.100.7:40000 (XOR 0x2112, 0x2112a442)
    "8022" "000f" "566f766964612e6f726720302e3937" "00"  # SERVER-NAME "Vovida.org 0.97", padded to 16
)


class TestRFC3489Server:
    def test_stundResponseDecodes(self) -> None:
        m = stun.decode(STUND_RESPONSE)
        assert (m.method, m.messageClass, m.transactionId) == (stun.BINDING, stun.SUCCESS, STUND_TID)
        assert m.mappedAddress == ("198.51.100.7", 40000)
        assert m.get(stun.MAPPED_ADDRESS) == stun.MappedAddress("198.51.100.7", 40000)
        assert m.software == "Vovida.org 0.97"
        # The reserved types are kept raw, as received ...
        assert m.get(stun.SOURCE_ADDRESS) == stun.RawAttribute(0x0004, bytes.fromhex("00010d96c0000201"))
        assert m.get(stun.CHANGED_ADDRESS) == stun.RawAttribute(0x0005, bytes.fromhex("00010d97c0000202"))
        # ... and a client does not count them as unknown comprehension-required (RFC 8489 §18.3.1 reserves
        # them), while a server that must list what it did not understand still can.
        assert m.unknownComprehensionRequired == ()
        assert m.unknownRequired(tolerate=()) == (stun.SOURCE_ADDRESS, stun.CHANGED_ADDRESS)
        assert not m.hasFingerprint and not m.hasIntegrity
        assert m.encode(fingerprint=False) == STUND_RESPONSE  # zero padding: byte for byte

    def test_everyReservedTypeTolerated(self) -> None:
        reserved = [stun.RESPONSE_ADDRESS, stun.SOURCE_ADDRESS, stun.CHANGED_ADDRESS, stun.PASSWORD,
                    stun.REFLECTED_FROM]
        assert set(reserved) == stun.RFC3489_RESERVED
        assert [stun.attributeName(t) for t in reserved] == [
            "RESPONSE-ADDRESS", "SOURCE-ADDRESS", "CHANGED-ADDRESS", "PASSWORD", "REFLECTED-FROM"]
        m = stun.decode(build([(t, b"\xff" * 3) for t in reserved] + [(0x0024, bytes(4))], msgType=0x0101))
        assert m.unknownComprehensionRequired == (0x0024,)
        assert m.unknownRequired(tolerate=()) == (*reserved, 0x0024)
        assert [a.type for a in m.attributes] == [*reserved, 0x0024]
        assert all(type(a) is stun.RawAttribute for a in m.attributes)

    def test_changeRequestIsRFC5780s(self) -> None:
        """0x0003 is reserved by RFC 8489 too, but RFC 5780 §7.2 defines it again: it stays typed."""
        m = stun.decode(build([(stun.CHANGE_REQUEST, bytes.fromhex("00000006"))]))
        assert m.changeRequest == (True, True)
        assert stun.CHANGE_REQUEST not in stun.RFC3489_RESERVED


# ---------------------------------------------------------------------------------------------------------
# Header


class TestHeader:
    @pytest.mark.parametrize(
        "messageClass,msgType", [(stun.REQUEST, 0x0001), (stun.INDICATION, 0x0011), (stun.SUCCESS, 0x0101),
                                 (stun.ERROR, 0x0111)]
    )
    def test_bindingTypes(self, messageClass: int, msgType: int) -> None:
        assert stun.messageType(stun.BINDING, messageClass) == msgType
        assert stun.splitMessageType(msgType) == (stun.BINDING, messageClass)
        data = stun.Message(stun.BINDING, messageClass, TID).encode(fingerprint=False)
        assert data == struct.pack("!HHI12s", msgType, 0, stun.MAGIC_COOKIE, TID)

    def test_interleavingAllMethods(self) -> None:
        for method in range(0x1000):
            for messageClass in range(4):
                t = stun.messageType(method, messageClass)
                assert t < 0x4000
                assert stun.splitMessageType(t) == (method, messageClass)

    def test_randomTransactionId(self) -> None:
        ids = {stun.Message(stun.BINDING, stun.REQUEST).transactionId for _ in range(100)}
        assert len(ids) == 100
        assert all(len(i) == 12 for i in ids)

    @pytest.mark.parametrize(
        "args", [(0x1000, stun.REQUEST), (-1, stun.REQUEST), (stun.BINDING, 4), (stun.BINDING, stun.REQUEST, b"short")]
    )
    def test_badConstructorArguments(self, args: Tuple[Any, ...]) -> None:
        with pytest.raises(stun.STUNEncodeError):
            stun.Message(*args)

    def test_encodeIsPure(self) -> None:
        m = stun.Message(stun.BINDING, stun.REQUEST, TID, [stun.Software("x")])
        first = m.encode(b"key")
        assert m.encode(b"key") == first
        assert m.attributes == [stun.Software("x")]

    def test_computedAttributesNotCopied(self) -> None:
        m = stun.decode(vector("sampleIPv4Response"))
        plain = stun.decode(m.encode(None, fingerprint=False))
        assert not plain.hasIntegrity and not plain.hasFingerprint
        assert plain.attributes == [stun.Software("test vector"), stun.XorMappedAddress("192.0.2.1", 32853)]


# ---------------------------------------------------------------------------------------------------------
# Strict decoding


def xorMapped(host: str = "192.0.2.1", port: int = 32853) -> bytes:
    return stun.XorMappedAddress(host, port).encodeValue(TID)


class TestStrictDecode:
    def test_truncatedHeader(self) -> None:
        good = build([])
        for n in range(20):
            with pytest.raises(stun.STUNDecodeError):
                stun.decode(good[:n])

    def test_badCookie(self) -> None:
        data = build([(stun.XOR_MAPPED_ADDRESS, xorMapped())], cookie=0x2112A443)
        with pytest.raises(stun.STUNDecodeError, match="cookie"):
            stun.decode(data)
        assert not stun.isSTUN(data)
        assert stun.peekHeader(data) is None

    def test_rfc3489NoCookie(self) -> None:
        with pytest.raises(stun.STUNDecodeError):
            stun.decode(build([], cookie=0x01020304))

    @pytest.mark.parametrize("msgType", [0x4001, 0x8001, 0xC001])
    def test_leadingBits(self, msgType: int) -> None:
        with pytest.raises(stun.STUNDecodeError, match="leading"):
            stun.decode(build([], msgType=msgType))

    def test_lengthNotMultipleOf4(self) -> None:
        data = build([(stun.SOFTWARE, b"abcd")])
        data = data[:2] + struct.pack("!H", 7) + data[4:-1]
        with pytest.raises(stun.STUNDecodeError, match="multiple of 4"):
            stun.decode(data)

    def test_lengthPastEnd(self) -> None:
        data = build([(stun.SOFTWARE, b"abcd")])
        with pytest.raises(stun.STUNDecodeError, match="length"):
            stun.decode(data[:-4])
        with pytest.raises(stun.STUNDecodeError, match="length"):
            stun.decode(data + b"\0\0\0\0")

    def test_attributeOverrun(self) -> None:
        data = build([(stun.SOFTWARE, b"abcd")])
        data = data[:22] + struct.pack("!H", 8) + data[24:]
        with pytest.raises(stun.STUNDecodeError, match="overrun"):
            stun.decode(data)

    def test_paddingOverrun(self) -> None:
        # A 5-byte attribute needs 3 bytes of padding; the message ends after 1.
        body = struct.pack("!HH", stun.SOFTWARE, 5) + b"abcde" + b"\0\0\0"
        data = struct.pack("!HHI12s", 1, 8, stun.MAGIC_COOKIE, TID) + body[:8]
        with pytest.raises(stun.STUNDecodeError):
            stun.decode(data)

    def test_nonZeroPaddingAccepted(self) -> None:
        m = stun.decode(build([(stun.SOFTWARE, b"abcde")], pad=b" "))
        assert m.software == "abcde"

    @pytest.mark.parametrize("attrType", [stun.MAPPED_ADDRESS, stun.XOR_MAPPED_ADDRESS, stun.ALTERNATE_SERVER,
                                          stun.RESPONSE_ORIGIN, stun.OTHER_ADDRESS])
    @pytest.mark.parametrize(
        "value",
        [
            b"\x00\x03\x00\x01\x01\x02\x03\x04",  # family 3
            b"\x00\x01\x00\x01" + bytes(16),  # IPv4 family, IPv6 length
            b"\x00\x02\x00\x01\x01\x02\x03\x04",  # IPv6 family, IPv4 length
            b"\x00\x01\x00\x01\x01\x02\x03",  # too short
            b"",
        ],
    )
    def test_badAddress(self, attrType: int, value: bytes) -> None:
        with pytest.raises(stun.STUNDecodeError):
            stun.decode(build([(attrType, value)]))

    @pytest.mark.parametrize("value", [b"\x00\x00\x02\x00", b"\x00\x00\x07\x00", b"\x00\x00\x04\x64", b"\x00\x00\x04"])
    def test_badErrorCode(self, value: bytes) -> None:
        with pytest.raises(stun.STUNDecodeError):
            stun.decode(build([(stun.ERROR_CODE, value)], msgType=0x0111))

    def test_errorCode(self) -> None:
        m = stun.decode(build([(stun.ERROR_CODE, b"\x00\x00\x04\x14Unknown Attribute")], msgType=0x0111))
        assert m.errorCode == (420, "Unknown Attribute")
        assert m.messageClass == stun.ERROR

    @pytest.mark.parametrize("attrType", [stun.USERNAME, stun.REALM, stun.NONCE, stun.SOFTWARE,
                                          stun.ALTERNATE_DOMAIN])
    def test_invalidUTF8(self, attrType: int) -> None:
        with pytest.raises(stun.STUNDecodeError):
            stun.decode(build([(attrType, b"ab\xff\xfe")]))

    def test_invalidUTF8InReason(self) -> None:
        with pytest.raises(stun.STUNDecodeError):
            stun.decode(build([(stun.ERROR_CODE, b"\x00\x00\x04\x00\xc3")], msgType=0x0111))

    @pytest.mark.parametrize(
        "attrType,length",
        [(stun.MESSAGE_INTEGRITY, 19), (stun.MESSAGE_INTEGRITY, 32), (stun.MESSAGE_INTEGRITY_SHA256, 12),
         (stun.MESSAGE_INTEGRITY_SHA256, 18), (stun.MESSAGE_INTEGRITY_SHA256, 36), (stun.FINGERPRINT, 8),
         (stun.USERHASH, 31), (stun.CHANGE_REQUEST, 2), (stun.RESPONSE_PORT, 8), (stun.UNKNOWN_ATTRIBUTES, 3)],
    )
    def test_fixedLengths(self, attrType: int, length: int) -> None:
        with pytest.raises(stun.STUNDecodeError):
            stun.decode(build([(attrType, bytes(length))]))

    def test_fingerprintNotLast(self) -> None:
        data = build([(stun.FINGERPRINT, bytes(4)), (stun.SOFTWARE, b"late")])
        with pytest.raises(stun.STUNDecodeError, match="last"):
            stun.decode(data)

    def test_badPasswordAlgorithms(self) -> None:
        with pytest.raises(stun.STUNDecodeError):
            stun.decode(build([(stun.PASSWORD_ALGORITHMS, b"\x00\x01\x00\x08\x00\x00")]))
        with pytest.raises(stun.STUNDecodeError):
            stun.decode(build([(stun.PASSWORD_ALGORITHM, b"\x00\x01\x00\x00\x00\x02\x00\x00")]))

    def test_onlySTUNDecodeError(self) -> None:
        """The exception is a ValueError carrying the input, never IndexError/struct.error/UnicodeDecodeError."""
        with pytest.raises(stun.STUNDecodeError) as info:
            stun.decode(b"\x00\x01")
        assert isinstance(info.value, ValueError)
        assert info.value.data == b"\x00\x01"
        assert info.value.reason


# ---------------------------------------------------------------------------------------------------------
# Integrity and fingerprint rules


class TestIntegrity:
    def test_sha256(self) -> None:
        m = stun.Message(stun.BINDING, stun.REQUEST, TID, [stun.Username("alice")])
        data = m.encode(b"secret", sha256=True)
        d = stun.decode(data)
        assert d.get(stun.MESSAGE_INTEGRITY_SHA256) is not None
        assert d.get(stun.MESSAGE_INTEGRITY) is None
        assert d.verifyIntegrity(b"secret") and d.verifyFingerprint()
        assert not d.verifyIntegrity(b"Secret")

    def test_sha256MatchesIndependentHMAC(self) -> None:
        reference = sign(build([(stun.USERNAME, b"alice")]), b"secret", stun.MESSAGE_INTEGRITY_SHA256, "sha256", 32)
        ours = stun.Message(stun.BINDING, stun.REQUEST, TID, [stun.Username("alice")]).encode(
            b"secret", fingerprint=False, sha256=True
        )
        assert ours == reference

    def test_sha1MatchesIndependentHMAC(self) -> None:
        reference = addFingerprint(sign(build([(stun.SOFTWARE, b"abc")]), b"k"))
        ours = stun.Message(stun.BINDING, stun.REQUEST, TID, [stun.Software("abc")]).encode(b"k")
        assert ours == reference

    def test_truncatedSha256(self) -> None:
        data = sign(build([(stun.USERNAME, b"bob")]), b"pw", stun.MESSAGE_INTEGRITY_SHA256, "sha256", 16)
        m = stun.decode(data)
        attribute = m.get(stun.MESSAGE_INTEGRITY_SHA256)
        assert isinstance(attribute, stun.MessageIntegritySHA256) and len(attribute.value) == 16
        assert m.verifyIntegrity(b"pw")
        assert not m.verifyIntegrity(b"pW")

    def test_sha256PreferredOverSha1(self) -> None:
        # MESSAGE-INTEGRITY then MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.6 order); the SHA-256 one is checked.
        data = sign(sign(build([(stun.USERNAME, b"bob")]), b"wrong"), b"right", stun.MESSAGE_INTEGRITY_SHA256,
                    "sha256", 32)
        m = stun.decode(data)
        assert m.get(stun.MESSAGE_INTEGRITY) is not None
        assert m.verifyIntegrity(b"right")
        assert not m.verifyIntegrity(b"wrong")

    def test_attributesAfterIntegrityIgnored(self) -> None:
        signed = sign(build([(stun.XOR_MAPPED_ADDRESS, xorMapped("192.0.2.1", 1000))]), b"k")
        # An attacker appends an unauthenticated MAPPED-ADDRESS and an unknown comprehension-required attribute.
        extra = struct.pack("!HH", stun.MAPPED_ADDRESS, 8) + b"\x00\x01\x00\x01\x0a\x00\x00\x01"
        extra += struct.pack("!HH", 0x0042, 4) + b"evil"
        data = signed[:2] + struct.pack("!H", len(signed) - 20 + len(extra)) + signed[4:] + extra
        m = stun.decode(addFingerprint(data))
        assert m.verifyIntegrity(b"k")  # the HMAC covers the message as if MESSAGE-INTEGRITY were last
        assert m.verifyFingerprint()
        assert m.get(stun.MAPPED_ADDRESS) is None
        assert m.unknownComprehensionRequired == ()
        assert m.mappedAddress == ("192.0.2.1", 1000)

    def test_noIntegrity(self) -> None:
        m = stun.decode(stun.Message(stun.BINDING, stun.SUCCESS, TID).encode())
        assert not m.hasIntegrity
        assert not m.verifyIntegrity(b"anything")

    def test_builtMessageHasNoWireBytes(self) -> None:
        m = stun.Message(stun.BINDING, stun.SUCCESS, TID)
        assert not m.verifyIntegrity(b"k") and not m.verifyFingerprint()

    def test_badFingerprint(self) -> None:
        data = bytearray(stun.Message(stun.BINDING, stun.REQUEST, TID).encode())
        data[-1] ^= 0xFF
        m = stun.decode(bytes(data))
        assert m.hasFingerprint and not m.verifyFingerprint()

    def test_userhash(self) -> None:
        # RFC 8489 §14.4: SHA-256 of OpaqueString(username) ":" OpaqueString(realm); a non-ASCII space maps to " ".
        expected = hashlib.sha256(b"a b:example.org").digest()
        assert stun.userhash("a\u00a0b", "example.org") == expected
        data = stun.Message(stun.BINDING, stun.REQUEST, TID, [stun.Userhash(expected)]).encode(b"k", sha256=True)
        m = stun.decode(data)
        assert m.get(stun.USERHASH) == stun.Userhash(expected)
        assert m.verifyIntegrity(b"k")

    def test_longTermSha256Key(self) -> None:
        key = stun.longTermKey("user", "realm", "pass", stun.PASSWORD_ALGORITHM_SHA256)
        assert key == hashlib.sha256(b"user:realm:pass").digest()
        with pytest.raises(ValueError):
            stun.longTermKey("user", "realm", "pass", 7)


# ---------------------------------------------------------------------------------------------------------
# Attributes and accessors


class TestAttributes:
    def test_accessors(self) -> None:
        m = stun.decode(
            stun.Message(
                stun.BINDING,
                stun.ERROR,
                TID,
                [
                    stun.ErrorCode(300, "Try Alternate"),
                    stun.AlternateServer("2001:db8::1", 3478),
                    stun.AlternateDomain("stun.example.org"),
                    stun.OtherAddress("192.0.2.2", 3479),
                    stun.ResponseOrigin("192.0.2.1", 3478),
                    stun.ChangeRequest(True, False),
                    stun.Software("srv"),
                    stun.MappedAddress("198.51.100.1", 5060),
                ],
            ).encode()
        )
        assert m.errorCode == (300, "Try Alternate")
        assert m.alternateServer == ("2001:db8::1", 3478)
        assert m.otherAddress == ("192.0.2.2", 3479)
        assert m.responseOrigin == ("192.0.2.1", 3478)
        assert m.changeRequest == (True, False)
        assert m.software == "srv"
        assert m.mappedAddress == ("198.51.100.1", 5060)
        assert m.get(stun.ALTERNATE_DOMAIN) == stun.AlternateDomain("stun.example.org")
        assert m.get(stun.NONCE) is None

    def test_accessorsAbsent(self) -> None:
        m = stun.Message(stun.BINDING, stun.SUCCESS, TID)
        assert (m.mappedAddress, m.errorCode, m.alternateServer, m.otherAddress, m.responseOrigin,
                m.changeRequest, m.software) == (None,) * 7

    def test_xorPreferredOverMapped(self) -> None:
        m = stun.Message(stun.BINDING, stun.SUCCESS, TID,
                         [stun.MappedAddress("10.0.0.1", 1), stun.XorMappedAddress("192.0.2.1", 2)])
        assert m.mappedAddress == ("192.0.2.1", 2)

    def test_ipv6Rfc5952(self) -> None:
        m = stun.decode(stun.Message(stun.BINDING, stun.SUCCESS, TID,
                                     [stun.XorMappedAddress("2001:DB8:0:0:0:0:0:1", 5060)]).encode())
        assert m.mappedAddress == ("2001:db8::1", 5060)

    def test_kindMatters(self) -> None:
        plain: stun.Attribute = stun.MappedAddress("192.0.2.1", 1)
        xored: stun.Attribute = stun.XorMappedAddress("192.0.2.1", 1)
        assert plain != xored and not plain == xored
        assert stun.Software("x") == stun.Software("x")
        assert len({stun.Software("x"), stun.Realm("x"), stun.Software("x")}) == 2

    def test_comprehension(self) -> None:
        m = stun.decode(build([(0x0024, bytes(4)), (0x8029, bytes(8)), (0x0024, bytes(4)), (0x7FFF, b""),
                               (stun.SOFTWARE, b"x")]))
        assert m.unknownComprehensionRequired == (0x0024, 0x7FFF)

    def test_knownAttributesAreUnderstood(self) -> None:
        m = stun.decode(build([(stun.CHANGE_REQUEST, bytes(4)), (stun.RESPONSE_PORT, bytes(4)),
                               (stun.PADDING, bytes(8)), (stun.USERNAME, b"u")]))
        assert m.unknownComprehensionRequired == ()

    def test_reprAndFieldsPerKind(self) -> None:
        """The classes share codecs per shape, but each keeps its own name, fields and type code."""
        assert repr(stun.OtherAddress("192.0.2.1", 1)) == "OtherAddress(host='192.0.2.1', port=1)"
        assert repr(stun.Nonce("n")) == "Nonce(value='n')"
        assert repr(stun.ErrorCode(401)) == "ErrorCode(code=401, reason='')"
        assert stun.Userhash(bytes(32))._fields == ("value",)
        assert (stun.Realm("r").type, stun.Username("u").type, stun.ResponseOrigin("::1", 1).type) == (
            stun.REALM, stun.USERNAME, stun.RESPONSE_ORIGIN)
        assert stun.Nonce("x") != stun.Realm("x") and hash(stun.Nonce("x")) != hash(stun.Realm("x"))

    def test_tableIsTheOneDescription(self) -> None:
        """Every typed attribute is a row of ATTRIBUTES; the class's type, its parser and its encoder are the row's."""
        classes = {getattr(stun, name) for name in stun.__all__ if isinstance(getattr(stun, name), type)
                   and hasattr(getattr(stun, name), "encodeValue")} - {stun.RawAttribute}
        assert classes == set(stun.ATTRIBUTE_CLASSES.values())
        for attrType, kind in stun.ATTRIBUTES.items():
            assert kind.type == attrType
            if kind.cls is None:
                assert attrType in stun.RFC3489_RESERVED and attrType not in stun.ATTRIBUTE_CLASSES
                continue
            assert kind.cls.type == attrType and stun.ATTRIBUTE_CLASSES[attrType] is kind.cls
            assert stun.attributeName(attrType) == kind.name
        assert stun.attributeName(stun.XOR_MAPPED_ADDRESS) == "XOR-MAPPED-ADDRESS"
        assert stun.attributeName(0x0024) == "0x0024"

    def test_unknownAttributesOddCount(self) -> None:
        data = stun.Message(stun.BINDING, stun.ERROR, TID, [stun.UnknownAttributes((1, 2, 3))]).encode()
        assert stun.decode(data).get(stun.UNKNOWN_ATTRIBUTES) == stun.UnknownAttributes((1, 2, 3))

    @pytest.mark.parametrize(
        "attribute",
        [stun.XorMappedAddress("192.0.2.1", 70000), stun.MappedAddress("not an address", 1),
         stun.ErrorCode(200, "OK"), stun.Userhash(b"short"), stun.ResponsePort(-1),
         stun.UnknownAttributes((0x10000,)), stun.PasswordAlgorithm(0x10000)],
    )
    def test_encodeErrors(self, attribute: stun.Attribute) -> None:
        with pytest.raises(stun.STUNEncodeError):
            stun.Message(stun.BINDING, stun.REQUEST, TID, [attribute]).encode()

    def test_tooLong(self) -> None:
        with pytest.raises(stun.STUNEncodeError):
            stun.Message(stun.BINDING, stun.REQUEST, TID, [stun.Padding(bytes(70000))]).encode()
        with pytest.raises(stun.STUNEncodeError):
            stun.Message(stun.BINDING, stun.REQUEST, TID, [stun.Padding(bytes(65532))]).encode()


# ---------------------------------------------------------------------------------------------------------
# Demux, peeking, fast paths, framing


class TestFastPaths:
    def test_isSTUN(self) -> None:
        assert stun.isSTUN(vector("sampleRequest"))
        assert stun.isSTUN(vector("sampleIPv4Response"))
        assert not stun.isSTUN(b"REGISTER sip:example.org SIP/2.0\r\n\r\n")
        assert not stun.isSTUN(b"\r\n\r\n")
        assert not stun.isSTUN(b"")
        data = vector("sampleRequest")
        assert not stun.isSTUN(data + b"\0\0\0\0")
        assert not stun.isSTUN(b"\x04" + data[1:])  # RFC 7983: first byte 0..3 only

    def test_peekHeader(self) -> None:
        assert stun.peekHeader(vector("sampleIPv4Response")) == (stun.BINDING, stun.SUCCESS, TID)
        assert stun.peekHeader(b"x" * 40) is None
        assert stun.peekHeader(vector("sampleIPv4Response")[:-4]) is None

    @pytest.mark.parametrize("software", [None, "twisted_sipnat/0.1.0", "odd length"])
    @pytest.mark.parametrize("username", [None, "alice:bob"])
    @pytest.mark.parametrize("key", [None, b"secret"])
    @pytest.mark.parametrize("fingerprint", [True, False])
    def test_encodeBindingRequest(self, software: Any, username: Any, key: Any, fingerprint: bool) -> None:
        attributes: List[stun.Attribute] = []
        if username is not None:
            attributes.append(stun.Username(username))
        if software is not None:
            attributes.append(stun.Software(software))
        for tid in (TID, bytes(range(12))):
            expected = stun.Message(stun.BINDING, stun.REQUEST, tid, attributes).encode(key, fingerprint)
            assert stun.encodeBindingRequest(tid, software, username, key, fingerprint) == expected

    def test_encodeBindingRequestBadId(self) -> None:
        with pytest.raises(stun.STUNEncodeError):
            stun.encodeBindingRequest(b"short")


class TestStreamFramer:
    def test_byteByByte(self) -> None:
        messages = [vector("sampleRequest"), vector("sampleIPv4Response"), vector("sampleLongTermRequest")]
        framer = stun.StreamFramer()
        out: List[bytes] = []
        for b in b"".join(messages):
            out.extend(framer.feed(bytes([b])))
        assert out == messages
        assert framer.buffered == 0

    def test_all_at_once(self) -> None:
        messages = [vector("sampleIPv6Response")] * 3
        framer = stun.StreamFramer()
        assert framer.feed(b"".join(messages) + messages[0][:10]) == messages
        assert framer.buffered == 10

    @pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\n", b"\x00\x01\x00\x00\x21\x12\xa4\x43", b"\x00\x01\x00\x03"
                                      b"\x21\x12\xa4\x42"])
    def test_notSTUN(self, data: bytes) -> None:
        with pytest.raises(stun.STUNDecodeError):
            stun.StreamFramer().feed(data)


# ---------------------------------------------------------------------------------------------------------
# Keys


class TestKeys:
    def test_asciiUnchanged(self) -> None:
        assert stun.shortTermKey(VECTORS["shortTermPassword"]) == VECTORS["shortTermPassword"].encode()

    def test_nonAsciiSpace(self) -> None:
        assert stun.shortTermKey("a\u00a0b\u3000c") == b"a b c"

    def test_nfc(self) -> None:
        assert stun.shortTermKey("e\u0301") == "\u00e9".encode()

    def test_noWidthMapping(self) -> None:
        # RFC 8265 §4.2.1: OpaqueString does not map fullwidth characters.
        assert stun.shortTermKey("\uff21") == "\uff21".encode()

    def test_longTermUsesOpaqueString(self) -> None:
        assert stun.longTermKey("u", "r\u00a0x", "p\u2000w") == hashlib.md5(b"u:r x:p w").digest()


def test_benchmarkRuns(capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/codec.py keeps working (a tiny run; the figures themselves are not asserted)."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "codec.py"
    spec = importlib.util.spec_from_file_location("benchmark_codec", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--size", "20", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "decode" in out and "encode" in out and "raw struct" in out


# ---- review findings -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", ["x" * 20, None, -1, 10**10, 3.5])
def test_decode_refuses_what_is_not_bytes(data: Any) -> None:
    with pytest.raises(stun.STUNDecodeError):
        stun.decode(data)


def test_password_algorithms_without_final_padding_is_malformed() -> None:
    value = bytes.fromhex("0002000170")  # one algorithm, 1 byte of parameters, padding missing
    message = stun.Message(stun.BINDING, stun.REQUEST, b"t" * 12, [stun.RawAttribute(stun.PASSWORD_ALGORITHMS, value)])
    with pytest.raises(stun.STUNDecodeError):
        stun.decode(message.encode(fingerprint=False))


def test_bytearray_keys_work_like_bytes() -> None:
    message = stun.Message(stun.BINDING, stun.REQUEST, b"t" * 12)
    assert message.encode(key=bytearray(b"k")) == message.encode(key=b"k")
    assert stun.encodeBindingRequest(b"t" * 12, key=bytearray(b"k")) == stun.encodeBindingRequest(b"t" * 12, key=b"k")


def test_encoder_recomputes_raw_integrity_and_refuses_wide_types() -> None:
    raw = [stun.RawAttribute(stun.FINGERPRINT, b"\0" * 4), stun.RawAttribute(stun.MESSAGE_INTEGRITY, b"\0" * 20)]
    data = stun.Message(stun.BINDING, stun.REQUEST, b"t" * 12, raw).encode(key=b"k")
    decoded = stun.decode(data)
    assert decoded.verifyIntegrity(b"k") and decoded.verifyFingerprint()
    with pytest.raises(stun.STUNEncodeError):
        stun.Message(stun.BINDING, stun.REQUEST, b"t" * 12, [stun.RawAttribute(0x10000, b"")]).encode()
