"""
STUN messages (RFC 8489 §5, §14.5-§14.7): :class:`Message` and :func:`decode`.

- :func:`decode` turns bytes into a :class:`Message` whose ``attributes`` are the typed values of
  :mod:`~twisted_sipnat.core.stun.attributes` (:class:`RawAttribute` for types the table does not parse).  It
  raises :class:`STUNDecodeError` -- and nothing else -- for anything that is not a well-formed message.
- :meth:`Message.encode` is a pure function of the message: it pads with zeros and appends the computed
  MESSAGE-INTEGRITY (or MESSAGE-INTEGRITY-SHA256) and FINGERPRINT, never copied from ``attributes``.
- A decoded message keeps its original bytes, so :meth:`Message.verifyIntegrity` and
  :meth:`Message.verifyFingerprint` check exactly what was on the wire (RFC 8489 §14.5-§14.7).
"""

from __future__ import annotations

import hmac
import secrets
import struct
import zlib
from typing import Collection, FrozenSet, Iterable, List, Optional, Tuple, Type

from twisted_sipnat.core.stun.attributes import (
    FINGERPRINT,
    MESSAGE_INTEGRITY,
    MESSAGE_INTEGRITY_SHA256,
    PARSERS,
    RFC3489_RESERVED,
    SOFTWARE,
    XOR_MAPPED_ADDRESS,
    AlternateServer,
    Attribute,
    ChangeRequest,
    ErrorCode,
    Fingerprint,
    MappedAddress,
    MessageIntegrity,
    MessageIntegritySHA256,
    OtherAddress,
    RawAttribute,
    ResponseOrigin,
    Software,
    XorMappedAddress,
    _AddressAttribute,
)
from twisted_sipnat.core.stun.header import (
    ERROR,
    FINGERPRINT_XOR,
    HEADER,
    HEADER_LENGTH,
    INDICATION,
    MAGIC_COOKIE,
    REQUEST,
    SPLIT_TYPES,
    SUCCESS,
    STUNDecodeError,
    STUNEncodeError,
    messageType,
    rememberSplit,
)
from twisted_sipnat.core.stun.keys import hmacDigest as _hmac
from twisted_sipnat.core.stun.shapes import (
    COOKIE_PORT,
    FAMILY_V4,
    TLV,
    U16,
    U32,
    XOR_V4,
    new,
    v4name,
    v4names,
)

__all__ = ["Message", "decode", "decodeClassic", "encodeClassic", "endsWithValidFingerprint"]

# Module-level names for the imported structs (and the IPv4 name cache): CPython 3.11 compiles ``X.f()``
# on a name bound by an import as an attribute load that makes a bound method per call, not LOAD_METHOD.
_HEADER = HEADER
_TLV = TLV
_U16 = U16
_U32 = U32
_XOR_V4 = XOR_V4
_v4names = v4names

HostPort = Tuple[str, int]
_FP_ATTR = struct.Struct("!HHI")
_FP_TLV = _TLV.pack(FINGERPRINT, 4)
#: The attributes encode() computes rather than copies.
_COMPUTED: FrozenSet[type] = frozenset((MessageIntegrity, MessageIntegritySHA256, Fingerprint))
_COMPUTED_TYPES = frozenset((MESSAGE_INTEGRITY, MESSAGE_INTEGRITY_SHA256, FINGERPRINT))
_parserFor = PARSERS.get
_parseMI256 = PARSERS[MESSAGE_INTEGRITY_SHA256]


# ---------------------------------------------------------------------------------------------------------
# Messages


class Message:
    """
    One STUN message: method, class, transaction ID and a list of typed attributes.

    ``Message(BINDING, REQUEST)`` gets a fresh 96-bit transaction ID from :mod:`secrets` (RFC 8489 §6: it must
    be uniformly random so that an off-path attacker cannot forge a response).
    """

    __slots__ = ("method", "messageClass", "transactionId", "attributes", "_raw", "_mi", "_mi256", "_fp")

    method: int
    messageClass: int
    transactionId: bytes
    attributes: List[Attribute]
    _raw: Optional[bytes]
    _mi: int
    _mi256: int
    _fp: int

    def __init__(
        self,
        method: int,
        messageClass: int,
        transactionId: Optional[bytes] = None,
        attributes: Iterable[Attribute] = (),
    ) -> None:
        if not isinstance(method, int) or not 0 <= method <= 0xFFF:
            raise STUNEncodeError(f"method out of range 0-0xFFF: {method!r}")
        if messageClass not in (REQUEST, INDICATION, SUCCESS, ERROR):
            raise STUNEncodeError(f"bad message class: {messageClass!r}")
        if transactionId is None:
            transactionId = secrets.token_bytes(12)
        elif len(transactionId) != 12:
            raise STUNEncodeError(f"transaction ID must be 12 bytes, not {len(transactionId)}")
        self.method = method
        self.messageClass = messageClass
        self.transactionId = bytes(transactionId)
        self.attributes = list(attributes)
        self._raw = None
        self._mi = self._mi256 = self._fp = -1

    def __repr__(self) -> str:
        return (
            f"Message(method={self.method:#05x}, messageClass={self.messageClass}, "
            f"transactionId={self.transactionId.hex()}, attributes={self.attributes!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return (
            self.method == other.method
            and self.messageClass == other.messageClass
            and self.transactionId == other.transactionId
            and self.attributes == other.attributes
        )

    __hash__ = None  # type: ignore[assignment]

    # -- accessors ------------------------------------------------------------------------------------------

    def get(self, attrType: int) -> Optional[Attribute]:
        """The first attribute of type ``attrType``, or ``None``."""
        for a in self.attributes:
            if a.type == attrType:
                return a
        return None

    def _address(self, cls: Type[_AddressAttribute]) -> Optional[HostPort]:
        for a in self.attributes:
            if isinstance(a, cls):
                return (a.host, a.port)
        return None

    @property
    def mappedAddress(self) -> Optional[HostPort]:
        """``(host, port)`` from XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS (RFC 8489 §14.1-14.2), else ``None``."""
        found = self._address(XorMappedAddress)
        return found if found is not None else self._address(MappedAddress)

    @property
    def alternateServer(self) -> Optional[HostPort]:
        return self._address(AlternateServer)

    @property
    def otherAddress(self) -> Optional[HostPort]:
        return self._address(OtherAddress)

    @property
    def responseOrigin(self) -> Optional[HostPort]:
        return self._address(ResponseOrigin)

    @property
    def errorCode(self) -> Optional[Tuple[int, str]]:
        """``(code, reason)`` of the ERROR-CODE attribute, or ``None``."""
        for a in self.attributes:
            if type(a) is ErrorCode:
                return (a.code, a.reason)
        return None

    @property
    def changeRequest(self) -> Optional[Tuple[bool, bool]]:
        """``(changeIP, changePort)`` of the CHANGE-REQUEST attribute, or ``None``."""
        for a in self.attributes:
            if type(a) is ChangeRequest:
                return (a.changeIP, a.changePort)
        return None

    @property
    def software(self) -> Optional[str]:
        for a in self.attributes:
            if type(a) is Software:
                return a.value
        return None

    @property
    def unknownComprehensionRequired(self) -> Tuple[int, ...]:
        """
        The types of unknown comprehension-required attributes (type < 0x8000), in order, without repeats,
        leaving out RFC 3489's types (:data:`RFC3489_RESERVED`).

        A client discards a response that has any (RFC 8489 §6.3.3, §7.3.3).  RFC 3489-era servers (stund
        0.97) still send SOURCE-ADDRESS and CHANGED-ADDRESS, types RFC 8489 §18.3.1 reserves: refusing their
        answers for it would make such a server unusable when its XOR-MAPPED-ADDRESS is fine, so a client
        tolerates them.  A server, which has to say what it did not understand, asks :meth:`unknownRequired`
        with ``tolerate=()``.
        """
        return self.unknownRequired(RFC3489_RESERVED)

    def unknownRequired(self, tolerate: Collection[int] = RFC3489_RESERVED) -> Tuple[int, ...]:
        """
        The types of comprehension-required attributes (type < 0x8000) this codec does not parse, other than
        those in ``tolerate``, in order and without repeats (RFC 8489 §6.3.1: the list for a 420's
        UNKNOWN-ATTRIBUTES).
        """
        # dict.fromkeys: ordered and de-duplicated in linear time (a 64 KB datagram holds 16,000 attributes).
        return tuple(
            dict.fromkeys(
                a.type
                for a in self.attributes
                if type(a) is RawAttribute and a.type < 0x8000 and a.type not in tolerate
            )
        )

    @property
    def hasIntegrity(self) -> bool:
        if self._raw is not None:
            return self._mi >= 0 or self._mi256 >= 0
        return any(type(a) in (MessageIntegrity, MessageIntegritySHA256) for a in self.attributes)

    @property
    def hasFingerprint(self) -> bool:
        if self._raw is not None:
            return self._fp >= 0
        return any(type(a) is Fingerprint for a in self.attributes)

    # -- verification -----------------------------------------------------------------------------------------

    def verifyIntegrity(self, key: bytes) -> bool:
        """
        Check MESSAGE-INTEGRITY-SHA256 if present, else MESSAGE-INTEGRITY, against ``key``.

        The HMAC input is the original bytes up to the integrity attribute, with the header length set as if
        that attribute ended the message (RFC 8489 §14.5, §14.6); the comparison is constant-time.  ``False``
        for a message without integrity, or one that was built rather than decoded (it has no wire bytes yet:
        encode and decode it to check).
        """
        raw = self._raw
        if raw is None:
            return False
        offset = self._mi256
        if offset >= 0:
            vlen = _U16.unpack_from(raw, offset + 2)[0]
            signed = raw[0:2] + _U16.pack(offset - 16 + vlen) + raw[4:offset]
            mac = _hmac(key, signed, "sha256")[:vlen]
        else:
            offset = self._mi
            if offset < 0:
                return False
            vlen = 20
            signed = raw[0:2] + _U16.pack(offset + 4) + raw[4:offset]
            mac = _hmac(key, signed, "sha1")
        # The adjusted length is (offset - 20) + 4 + vlen: the body up to the end of the integrity attribute.
        return hmac.compare_digest(mac, raw[offset + 4 : offset + 4 + vlen])

    def verifyFingerprint(self) -> bool:
        """Check FINGERPRINT: CRC-32 of everything before it, XOR 0x5354554e (RFC 8489 §14.7).  ``False`` if absent."""
        raw = self._raw
        if raw is None or self._fp < 0:
            return False
        fp = self._fp
        return bool((zlib.crc32(raw[:fp]) ^ FINGERPRINT_XOR) == _U32.unpack_from(raw, fp + 4)[0])

    # -- encoding ---------------------------------------------------------------------------------------------

    def encode(self, key: Optional[bytes] = None, fingerprint: bool = True, sha256: bool = False) -> bytes:
        """
        The wire form: attributes zero-padded, then MESSAGE-INTEGRITY (HMAC-SHA1, or MESSAGE-INTEGRITY-SHA256
        when ``sha256``) if ``key`` is given, then FINGERPRINT if ``fingerprint`` (RFC 8489 §14.5-§14.7).

        Integrity and fingerprint attributes in ``attributes`` are not copied: they are recomputed.  The
        message is not changed.  Raises :class:`STUNEncodeError` for values that cannot be encoded.
        """
        tid = self.transactionId
        parts = []
        tlv = _TLV.pack
        for a in self.attributes:
            if type(a) in _COMPUTED or a.type in _COMPUTED_TYPES:  # a RawAttribute of those types too
                continue
            if not 0 <= a.type <= 0xFFFF:
                raise STUNEncodeError(f"attribute type {a.type!r} is not 16 bits")
            value = a.encodeValue(tid)
            n = len(value)
            if n > 0xFFFF:
                raise STUNEncodeError(f"attribute {a.type:#06x} is {n} bytes long")
            parts.append(tlv(a.type, n))
            parts.append(value)
            if n & 3:
                parts.append(bytes(4 - (n & 3)))
        body = b"".join(parts)
        return _finish(messageType(self.method, self.messageClass), tid, body, key, fingerprint, sha256)


def _finish(
    msgType: int, tid: bytes, body: bytes, key: Optional[bytes], fingerprint: bool, sha256: bool
) -> bytes:
    """Add the header, then integrity and fingerprint, each over the header length as it stands then."""
    if key is not None:
        itype, ilen, algorithm = (
            (MESSAGE_INTEGRITY_SHA256, 32, "sha256") if sha256 else (MESSAGE_INTEGRITY, 20, "sha1")
        )
        length = len(body) + 4 + ilen
        if length + (8 if fingerprint else 0) > 0xFFFF:
            raise STUNEncodeError(f"message body too long: {length} bytes")
        header = _HEADER.pack(msgType, length, MAGIC_COOKIE, tid)
        body = body + _TLV.pack(itype, ilen) + _hmac(key, header + body, algorithm)
    if fingerprint:
        length = len(body) + 8
        if length > 0xFFFF:
            raise STUNEncodeError(f"message body too long: {length} bytes")
        data = _HEADER.pack(msgType, length, MAGIC_COOKIE, tid) + body
        return data + _FP_ATTR.pack(FINGERPRINT, 4, zlib.crc32(data) ^ FINGERPRINT_XOR)
    if len(body) > 0xFFFF:
        raise STUNEncodeError(f"message body too long: {len(body)} bytes")
    return _HEADER.pack(msgType, len(body), MAGIC_COOKIE, tid) + body


# ---------------------------------------------------------------------------------------------------------
# Decoding


def decode(data: bytes) -> Message:
    """
    Parse one whole STUN message (a datagram, or one frame from :class:`StreamFramer`).

    Raises :class:`STUNDecodeError`, and nothing else, when ``data`` is not a well-formed STUN message; see the
    package docstring (:mod:`twisted_sipnat.core.stun`) for what is checked.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise STUNDecodeError(f"not bytes: {type(data).__name__}")
    data = bytes(data)
    n = len(data)
    if n < HEADER_LENGTH:
        raise STUNDecodeError(f"truncated header: {n} bytes", data)
    msgType, length, cookie, tid = _HEADER.unpack_from(data)
    if msgType & 0xC000:
        raise STUNDecodeError("the two leading bits are not zero", data)
    if cookie != MAGIC_COOKIE:
        raise STUNDecodeError(f"bad magic cookie {cookie:#010x}", data)
    if length & 3:
        raise STUNDecodeError(f"length {length} is not a multiple of 4", data)
    if length + HEADER_LENGTH != n:
        raise STUNDecodeError(f"length field {length} does not match {n - HEADER_LENGTH} bytes of body", data)

    attributes: List[Attribute] = []
    append = attributes.append
    mi = mi256 = fp = -1
    sealed = False  # an integrity attribute was seen
    pos = HEADER_LENGTH
    unpackTLV = _TLV.unpack_from
    try:
        while pos < n:
            # pos and n are multiples of 4 here, so a whole TLV header is always present.
            atype, alen = unpackTLV(data, pos)
            start = pos + 4
            end = start + alen
            following = end + (-alen & 3)
            if following > n:
                raise STUNDecodeError(f"attribute {atype:#06x} (or its padding) overruns the message", data)
            # The common attributes are parsed inline: this loop runs for every keepalive answer.
            if atype == FINGERPRINT:
                if alen != 4:
                    raise STUNDecodeError("FINGERPRINT must be 4 bytes", data)
                if following != n:
                    raise STUNDecodeError("FINGERPRINT is not the last attribute", data)
                fp = pos
                append(new(Fingerprint, _U32.unpack_from(data, start)))
            elif sealed:
                # RFC 8489 §14.5/§14.6: after MESSAGE-INTEGRITY only MESSAGE-INTEGRITY-SHA256 and FINGERPRINT
                # count, after MESSAGE-INTEGRITY-SHA256 only FINGERPRINT; the rest is unauthenticated: skip it.
                if atype == MESSAGE_INTEGRITY_SHA256 and mi256 < 0:
                    mi256 = pos
                    append(_parseMI256(data[start:end], tid))
            elif atype == XOR_MAPPED_ADDRESS and alen == 8 and data[start + 1] == FAMILY_V4:
                port, addr = _XOR_V4.unpack_from(data, start)
                host = _v4names.get(addr)
                if host is None:
                    host = v4name(addr)
                append(new(XorMappedAddress, (host, port ^ COOKIE_PORT)))
            elif atype == SOFTWARE:
                append(new(Software, (data[start:end].decode("utf-8"),)))
            elif atype == MESSAGE_INTEGRITY:
                if alen != 20:
                    raise STUNDecodeError(f"MESSAGE-INTEGRITY must be 20 bytes, not {alen}", data)
                mi = pos
                sealed = True
                append(new(MessageIntegrity, (data[start:end],)))
            elif atype == MESSAGE_INTEGRITY_SHA256:
                mi256 = pos
                sealed = True
                append(_parseMI256(data[start:end], tid))
            else:
                parse = _parserFor(atype)
                if parse is None:
                    append(new(RawAttribute, (atype, data[start:end])))
                else:
                    append(parse(data[start:end], tid))  # type: ignore[operator]
            pos = following
    except STUNDecodeError as e:
        if not e.data:
            e.data = data
        raise
    except (ValueError, struct.error, IndexError, OverflowError) as e:  # UTF-8 errors, and defence in depth
        raise STUNDecodeError(f"malformed attribute: {e}", data) from e

    msg = Message.__new__(Message)
    try:
        msg.method, msg.messageClass = SPLIT_TYPES[msgType]
    except KeyError:
        msg.method, msg.messageClass = rememberSplit(msgType)
    msg.transactionId = tid
    msg.attributes = attributes
    msg._raw = data
    msg._mi = mi
    msg._mi256 = mi256
    msg._fp = fp
    return msg


_COOKIE_BYTES = _U32.pack(MAGIC_COOKIE)


def decodeClassic(data: bytes) -> Message:
    """
    Parse one whole RFC 3489 message (§11.1: no magic cookie, a 128-bit transaction ID), for a server that
    answers RFC 3489 clients (RFC 8489 §12.2).  Only the server asks for this; :func:`decode` keeps refusing
    such messages, so a client never takes an RFC 3489 answer.

    The attributes are read by the same code as :func:`decode`'s (RFC 3489's attribute layout is RFC 8489's);
    ``transactionId`` is the last 96 bits of the 128 (the first 32 are ``data[4:8]``, which a response echoes:
    :func:`encodeClassic`).  The message keeps ``data`` as its wire bytes.  Raises :class:`STUNDecodeError`, and
    nothing else, for anything that is not a well-formed cookie-less message.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise STUNDecodeError(f"not bytes: {type(data).__name__}")
    data = bytes(data)
    if len(data) >= HEADER_LENGTH and data[4:8] == _COOKIE_BYTES:
        raise STUNDecodeError("an RFC 8489 message (it has the magic cookie), not an RFC 3489 one", data)
    try:
        msg = decode(data[:4] + _COOKIE_BYTES + data[8:])
    except STUNDecodeError as e:
        e.data = data
        raise
    msg._raw = data
    return msg


def encodeClassic(message: Message, cookieField: bytes) -> bytes:
    """
    The RFC 3489 wire form of ``message``: its encoding without integrity or FINGERPRINT (RFC 3489 has none),
    with ``cookieField`` -- the first 32 bits of the request's 128-bit transaction ID -- where the magic cookie
    would be.  The attributes must not depend on the cookie (no XOR addresses: RFC 3489 has none either).
    """
    if len(cookieField) != 4:
        raise STUNEncodeError(f"the RFC 3489 cookie field is 4 bytes, not {len(cookieField)}")
    data = message.encode(None, False)
    return data[:4] + bytes(cookieField) + data[8:]


def endsWithValidFingerprint(data: bytes) -> bool:
    """
    ``data`` (a STUN message that passed :func:`isSTUN`) ends with a FINGERPRINT attribute whose CRC matches
    everything before it (RFC 8489 §14.7).  No decoding: for telling a repeated answer from a tampered one.
    """
    return (
        len(data) >= HEADER_LENGTH + 8
        and data[-8:-4] == _FP_TLV
        and (zlib.crc32(data[:-8]) ^ FINGERPRINT_XOR) == _U32.unpack_from(data, len(data) - 4)[0]
    )
