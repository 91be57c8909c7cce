"""
The STUN message codec (RFC 8489, with the RFC 5780 attributes), sans-IO.

Theory of operation
-------------------

A STUN message is a 20-byte header (two zero bits, the method and class interleaved into 14 bits, a body
length that is a multiple of 4, the magic cookie ``0x2112A442`` and a 96-bit transaction ID) followed by
type-length-value attributes padded to 4 bytes (RFC 8489 §5, §14).

- :func:`decode` turns bytes into a :class:`Message` whose ``attributes`` are small immutable typed values
  (:class:`XorMappedAddress`, :class:`ErrorCode`, ...; :class:`RawAttribute` for types this module does not
  know).  It raises :class:`STUNDecodeError` -- and nothing else -- for anything that is not a well-formed
  message, so code reading a shared socket needs exactly one ``except``.
- :meth:`Message.encode` is a pure function of the message: it pads with zeros and appends the computed
  MESSAGE-INTEGRITY (or MESSAGE-INTEGRITY-SHA256) and FINGERPRINT.  Those three attributes are never copied
  from ``attributes``; they are always computed.
- A decoded message keeps its original bytes, so :meth:`Message.verifyIntegrity` and
  :meth:`Message.verifyFingerprint` check exactly what was on the wire (RFC 8489 §14.5-§14.7: the HMAC covers
  the message "as if" the integrity attribute were last, with the header length adjusted).
- :func:`isSTUN` and :func:`peekHeader` are the cheap checks for demultiplexing a shared socket (RFC 7983) and
  for matching a response to a transaction without a full decode; :func:`encodeBindingRequest` builds a
  Binding request from a cached template where only the transaction ID changes.  They exist because a SIP
  server may keep 100k flows alive.
- :class:`StreamFramer` splits a TCP byte stream into whole STUN messages by the length field (RFC 8489 §6.2.2).

What decoding enforces (strictly, unlike the usual Python STUN codecs): the two leading zero bits, the magic
cookie (RFC 3489 messages without it are rejected), the length, attribute bounds and padding, address
families and lengths, ERROR-CODE class and number, UTF-8 in text attributes, the lengths of MESSAGE-INTEGRITY
(20), MESSAGE-INTEGRITY-SHA256 (16-32, a multiple of 4), FINGERPRINT (4), USERHASH (32), and that FINGERPRINT
is the last attribute.  Attributes after MESSAGE-INTEGRITY other than MESSAGE-INTEGRITY-SHA256 and FINGERPRINT
are skipped, as RFC 8489 §14.5 requires (they are not authenticated), and are not in ``attributes``.
What it does not enforce: maximum lengths of text attributes (be liberal in what you accept), and the
contents of padding bytes (RFC 8489 §14 says receivers ignore them; RFC 5769's vectors pad with spaces).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import socket
import struct
import unicodedata
import zlib
from functools import lru_cache
from typing import Dict, Iterable, List, NamedTuple, Optional, Tuple, Type, Union

__all__ = [
    "MAGIC_COOKIE",
    "HEADER_LENGTH",
    "FINGERPRINT_XOR",
    "BINDING",
    "REQUEST",
    "INDICATION",
    "SUCCESS",
    "ERROR",
    "MAPPED_ADDRESS",
    "USERNAME",
    "MESSAGE_INTEGRITY",
    "ERROR_CODE",
    "UNKNOWN_ATTRIBUTES",
    "REALM",
    "NONCE",
    "MESSAGE_INTEGRITY_SHA256",
    "PASSWORD_ALGORITHM",
    "USERHASH",
    "XOR_MAPPED_ADDRESS",
    "PASSWORD_ALGORITHMS",
    "ALTERNATE_DOMAIN",
    "SOFTWARE",
    "ALTERNATE_SERVER",
    "FINGERPRINT",
    "CHANGE_REQUEST",
    "PADDING",
    "RESPONSE_PORT",
    "RESPONSE_ORIGIN",
    "OTHER_ADDRESS",
    "PASSWORD_ALGORITHM_MD5",
    "PASSWORD_ALGORITHM_SHA256",
    "STUNDecodeError",
    "STUNEncodeError",
    "messageType",
    "splitMessageType",
    "MappedAddress",
    "XorMappedAddress",
    "AlternateServer",
    "ResponseOrigin",
    "OtherAddress",
    "Username",
    "Userhash",
    "Realm",
    "Nonce",
    "Software",
    "AlternateDomain",
    "ErrorCode",
    "UnknownAttributes",
    "PasswordAlgorithms",
    "PasswordAlgorithm",
    "ChangeRequest",
    "ResponsePort",
    "Padding",
    "MessageIntegrity",
    "MessageIntegritySHA256",
    "Fingerprint",
    "RawAttribute",
    "Attribute",
    "ATTRIBUTE_CLASSES",
    "Message",
    "decode",
    "isSTUN",
    "endsWithValidFingerprint",
    "peekHeader",
    "encodeBindingRequest",
    "StreamFramer",
    "opaqueString",
    "shortTermKey",
    "longTermKey",
    "userhash",
]

HostPort = Tuple[str, int]

MAGIC_COOKIE = 0x2112A442
HEADER_LENGTH = 20
FINGERPRINT_XOR = 0x5354554E

#: The only method RFC 8489 defines.
BINDING = 0x001

#: Message classes (RFC 8489 §5).
REQUEST = 0
INDICATION = 1
SUCCESS = 2
ERROR = 3

# Attribute types: RFC 8489 §18.3 ...
MAPPED_ADDRESS = 0x0001
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
UNKNOWN_ATTRIBUTES = 0x000A
REALM = 0x0014
NONCE = 0x0015
MESSAGE_INTEGRITY_SHA256 = 0x001C
PASSWORD_ALGORITHM = 0x001D
USERHASH = 0x001E
XOR_MAPPED_ADDRESS = 0x0020
PASSWORD_ALGORITHMS = 0x8002
ALTERNATE_DOMAIN = 0x8003
SOFTWARE = 0x8022
ALTERNATE_SERVER = 0x8023
FINGERPRINT = 0x8028
# ... and RFC 5780 §7.
CHANGE_REQUEST = 0x0003
PADDING = 0x0026
RESPONSE_PORT = 0x0027
RESPONSE_ORIGIN = 0x802B
OTHER_ADDRESS = 0x802C

#: PASSWORD-ALGORITHM values (RFC 8489 §18.5).
PASSWORD_ALGORITHM_MD5 = 0x0001
PASSWORD_ALGORITHM_SHA256 = 0x0002

_HEADER = struct.Struct("!HHI12s")
_PREFIX = struct.Struct("!HHI")
_DEMUX = struct.Struct("!BxHI")
_TLV = struct.Struct("!HH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_FP_ATTR = struct.Struct("!HHI")
_ADDR_V4 = struct.Struct("!xBH4s")
_ADDR_HEAD = struct.Struct("!xBH")
_ERROR_HEAD = struct.Struct("!xxBB")
_XOR_V4 = struct.Struct("!2xHI")
_ntoa = socket.inet_ntoa
_COOKIE_BYTES = _U32.pack(MAGIC_COOKIE)
_COOKIE_PORT = MAGIC_COOKIE >> 16
_FAMILY_V4 = 0x01
_FAMILY_V6 = 0x02


class STUNDecodeError(ValueError):
    """
    The bytes are not a well-formed STUN message.  ``data`` is the input, ``reason`` says what is wrong.

    This is the only exception :func:`decode` raises, so a demultiplexer can drop bad input with one
    ``except`` and never lets a traceback out of a socket callback.
    """

    def __init__(self, reason: str, data: bytes = b"") -> None:
        super().__init__(reason)
        self.reason = reason
        self.data = data


class STUNEncodeError(ValueError):
    """A message cannot be encoded: an attribute value is out of range (a port, an address, a length)."""


# ---------------------------------------------------------------------------------------------------------
# Method and class <-> message type (RFC 8489 §5, figure 3: M11..M7 C1 M6..M4 C0 M3..M0)


def messageType(method: int, messageClass: int) -> int:
    """Interleave a 12-bit method and a 2-bit class into the 14-bit message type."""
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((messageClass & 1) << 4)
        | ((messageClass & 2) << 7)
    )


def splitMessageType(msgType: int) -> Tuple[int, int]:
    """Split a 14-bit message type into ``(method, messageClass)``."""
    return (
        (msgType & 0x000F) | ((msgType >> 1) & 0x0070) | ((msgType >> 2) & 0x0F80),
        ((msgType >> 4) & 1) | ((msgType >> 7) & 2),
    )


# ---------------------------------------------------------------------------------------------------------
# Addresses


@lru_cache(maxsize=4096)
def _packHost(host: str) -> Tuple[int, bytes]:
    """``(family, packed address)`` for an IP literal; cached because servers answer the same peers often."""
    try:
        return _FAMILY_V4, socket.inet_pton(socket.AF_INET, host)
    except (OSError, ValueError, TypeError):
        pass
    try:
        return _FAMILY_V6, ipaddress.IPv6Address(host).packed
    except (ValueError, TypeError) as e:
        raise STUNEncodeError(f"not an IP address literal: {host!r}") from e


def _checkPort(port: int) -> int:
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise STUNEncodeError(f"port out of range: {port!r}")
    return port


def _encodeAddress(host: str, port: int) -> bytes:
    family, packed = _packHost(host)
    return _ADDR_HEAD.pack(family, _checkPort(port)) + packed


def _encodeXorAddress(host: str, port: int, transactionId: bytes) -> bytes:
    family, packed = _packHost(host)
    head = _ADDR_HEAD.pack(family, _checkPort(port) ^ _COOKIE_PORT)
    if family == _FAMILY_V4:
        return head + _U32.pack(_U32.unpack(packed)[0] ^ MAGIC_COOKIE)
    mask = int.from_bytes(_COOKIE_BYTES + transactionId, "big")
    return head + (int.from_bytes(packed, "big") ^ mask).to_bytes(16, "big")


def _decodeAddress(value: bytes) -> HostPort:
    # RFC 8489 §14.1: the first byte is reserved and ignored by receivers.
    n = len(value)
    if n == 8:
        family, port, addr = _ADDR_V4.unpack(value)
        if family == _FAMILY_V4:
            return socket.inet_ntoa(addr), port
    elif n == 20:
        family, port = _ADDR_HEAD.unpack_from(value)
        if family == _FAMILY_V6:
            return str(ipaddress.IPv6Address(value[4:])), port
    raise STUNDecodeError(f"bad address: family/length mismatch ({n} bytes)", value)


def _decodeXorAddress(value: bytes, transactionId: bytes) -> HostPort:
    n = len(value)
    if n == 8:
        family, port, addr = _ADDR_V4.unpack(value)
        if family == _FAMILY_V4:
            return socket.inet_ntoa(_U32.pack(_U32.unpack(addr)[0] ^ MAGIC_COOKIE)), port ^ _COOKIE_PORT
    elif n == 20:
        family, port = _ADDR_HEAD.unpack_from(value)
        if family == _FAMILY_V6:
            mask = int.from_bytes(_COOKIE_BYTES + transactionId, "big")
            packed = (int.from_bytes(value[4:], "big") ^ mask).to_bytes(16, "big")
            return str(ipaddress.IPv6Address(packed)), port ^ _COOKIE_PORT
    raise STUNDecodeError(f"bad XOR address: family/length mismatch ({n} bytes)", value)


_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
_HASHES = {"sha1": hashlib.sha1, "sha256": hashlib.sha256}
_pads: Dict[Tuple[bytes, str], Tuple[hashlib._Hash, hashlib._Hash]] = {}


def _hmac(key: bytes, data: bytes, algorithm: str) -> bytes:
    """
    HMAC (RFC 2104) with the keyed inner and outer hash states cached per key.

    Same result as ``hmac.digest``, about three times faster for short messages, because OpenSSL's HMAC
    setup dominates the cost of signing an 80-byte STUN message.  The cache holds at most 1024 keys.
    """
    key = bytes(key)  # a bytearray key would be unhashable in the cache
    pads = _pads.get((key, algorithm))
    if pads is None:
        ctor = _HASHES[algorithm]
        block = bytes(key) if len(key) <= 64 else ctor(key).digest()
        block = block.ljust(64, b"\0")
        pads = (ctor(block.translate(_IPAD)), ctor(block.translate(_OPAD)))
        if len(_pads) >= 1024:
            _pads.clear()
        _pads[(bytes(key), algorithm)] = pads
    inner = pads[0].copy()
    inner.update(data)
    outer = pads[1].copy()
    outer.update(inner.digest())
    return outer.digest()


_v4names: Dict[int, str] = {}


def _v4name(xored: int) -> str:
    """Dotted quad of an XORed IPv4 address, remembered: a client sees the same mapped address again and again."""
    host = _ntoa(_U32.pack(xored ^ MAGIC_COOKIE))
    if len(_v4names) >= 4096:
        _v4names.clear()
    _v4names[xored] = host
    return host


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise STUNDecodeError("text attribute is not UTF-8", value) from e


# ---------------------------------------------------------------------------------------------------------
# Typed attributes.  Each is an immutable NamedTuple (cheap to build in the decode loop, no __dict__); their
# equality also compares the attribute kind (set up after ATTRIBUTE_CLASSES below).


def _attributeEq(self: Tuple[object, ...], other: object) -> bool:
    return type(self) is type(other) and tuple.__eq__(self, other)  # type: ignore[arg-type]


def _attributeNe(self: Tuple[object, ...], other: object) -> bool:
    return not (type(self) is type(other) and tuple.__eq__(self, other))  # type: ignore[arg-type]


def _attributeHash(self: Tuple[object, ...]) -> int:
    return hash((type(self).__name__, tuple.__hash__(self)))


class MappedAddress(NamedTuple):
    """MAPPED-ADDRESS (RFC 8489 §14.1): the reflexive address, unobfuscated (RFC 3489-era servers)."""

    host: str
    port: int

    @property
    def type(self) -> int:
        return MAPPED_ADDRESS

    def encodeValue(self, transactionId: bytes) -> bytes:
        return _encodeAddress(self.host, self.port)


class XorMappedAddress(NamedTuple):
    """XOR-MAPPED-ADDRESS (RFC 8489 §14.2): the reflexive address XORed with the cookie (and transaction ID)."""

    host: str
    port: int

    @property
    def type(self) -> int:
        return XOR_MAPPED_ADDRESS

    def encodeValue(self, transactionId: bytes) -> bytes:
        return _encodeXorAddress(self.host, self.port, transactionId)


class AlternateServer(NamedTuple):
    """ALTERNATE-SERVER (RFC 8489 §14.15): where a 300 Try Alternate sends the client."""

    host: str
    port: int

    @property
    def type(self) -> int:
        return ALTERNATE_SERVER

    def encodeValue(self, transactionId: bytes) -> bytes:
        return _encodeAddress(self.host, self.port)


class ResponseOrigin(NamedTuple):
    """RESPONSE-ORIGIN (RFC 5780 §7.3): the address the response was sent from."""

    host: str
    port: int

    @property
    def type(self) -> int:
        return RESPONSE_ORIGIN

    def encodeValue(self, transactionId: bytes) -> bytes:
        return _encodeAddress(self.host, self.port)


class OtherAddress(NamedTuple):
    """OTHER-ADDRESS (RFC 5780 §7.4): the server's address that differs in both IP and port."""

    host: str
    port: int

    @property
    def type(self) -> int:
        return OTHER_ADDRESS

    def encodeValue(self, transactionId: bytes) -> bytes:
        return _encodeAddress(self.host, self.port)


class Username(NamedTuple):
    """USERNAME (RFC 8489 §14.3), UTF-8."""

    value: str

    @property
    def type(self) -> int:
        return USERNAME

    def encodeValue(self, transactionId: bytes) -> bytes:
        return self.value.encode("utf-8")


class Userhash(NamedTuple):
    """USERHASH (RFC 8489 §14.4): SHA-256 of username and realm, 32 bytes; see :func:`userhash`."""

    value: bytes

    @property
    def type(self) -> int:
        return USERHASH

    def encodeValue(self, transactionId: bytes) -> bytes:
        if len(self.value) != 32:
            raise STUNEncodeError(f"USERHASH must be 32 bytes, not {len(self.value)}")
        return bytes(self.value)


class Realm(NamedTuple):
    """REALM (RFC 8489 §14.9), UTF-8."""

    value: str

    @property
    def type(self) -> int:
        return REALM

    def encodeValue(self, transactionId: bytes) -> bytes:
        return self.value.encode("utf-8")


class Nonce(NamedTuple):
    """NONCE (RFC 8489 §14.10)."""

    value: str

    @property
    def type(self) -> int:
        return NONCE

    def encodeValue(self, transactionId: bytes) -> bytes:
        return self.value.encode("utf-8")


class Software(NamedTuple):
    """SOFTWARE (RFC 8489 §14.14), UTF-8."""

    value: str

    @property
    def type(self) -> int:
        return SOFTWARE

    def encodeValue(self, transactionId: bytes) -> bytes:
        return self.value.encode("utf-8")


class AlternateDomain(NamedTuple):
    """ALTERNATE-DOMAIN (RFC 8489 §14.16): the TLS name of the ALTERNATE-SERVER."""

    value: str

    @property
    def type(self) -> int:
        return ALTERNATE_DOMAIN

    def encodeValue(self, transactionId: bytes) -> bytes:
        return self.value.encode("utf-8")


class ErrorCode(NamedTuple):
    """ERROR-CODE (RFC 8489 §14.8): ``code`` 300-699 and a UTF-8 reason phrase."""

    code: int
    reason: str = ""

    @property
    def type(self) -> int:
        return ERROR_CODE

    def encodeValue(self, transactionId: bytes) -> bytes:
        code = self.code
        if not isinstance(code, int) or not 300 <= code <= 699:
            raise STUNEncodeError(f"ERROR-CODE out of range 300-699: {code!r}")
        return _ERROR_HEAD.pack(code // 100, code % 100) + self.reason.encode("utf-8")


class UnknownAttributes(NamedTuple):
    """UNKNOWN-ATTRIBUTES (RFC 8489 §14.13): the types a 420 response did not understand."""

    types: Tuple[int, ...]

    @property
    def type(self) -> int:
        return UNKNOWN_ATTRIBUTES

    def encodeValue(self, transactionId: bytes) -> bytes:
        try:
            return struct.pack(f"!{len(self.types)}H", *self.types)
        except struct.error as e:
            raise STUNEncodeError(f"bad attribute type in UNKNOWN-ATTRIBUTES: {self.types!r}") from e


def _encodeAlgorithm(algorithm: int, parameters: bytes) -> bytes:
    try:
        head = _TLV.pack(algorithm, len(parameters))
    except struct.error as e:
        raise STUNEncodeError(f"bad password algorithm: {algorithm!r}") from e
    return head + bytes(parameters) + bytes(-len(parameters) % 4)


class PasswordAlgorithms(NamedTuple):
    """PASSWORD-ALGORITHMS (RFC 8489 §14.11): ``((algorithm, parameters), ...)`` the server supports."""

    algorithms: Tuple[Tuple[int, bytes], ...]

    @property
    def type(self) -> int:
        return PASSWORD_ALGORITHMS

    def encodeValue(self, transactionId: bytes) -> bytes:
        return b"".join(_encodeAlgorithm(a, p) for a, p in self.algorithms)


class PasswordAlgorithm(NamedTuple):
    """PASSWORD-ALGORITHM (RFC 8489 §14.12): the algorithm the client chose for the long-term key."""

    algorithm: int
    parameters: bytes = b""

    @property
    def type(self) -> int:
        return PASSWORD_ALGORITHM

    def encodeValue(self, transactionId: bytes) -> bytes:
        return _encodeAlgorithm(self.algorithm, self.parameters)


class ChangeRequest(NamedTuple):
    """CHANGE-REQUEST (RFC 5780 §7.2): ask the server to answer from its other IP and/or port."""

    changeIP: bool = False
    changePort: bool = False

    @property
    def type(self) -> int:
        return CHANGE_REQUEST

    def encodeValue(self, transactionId: bytes) -> bytes:
        return _U32.pack((4 if self.changeIP else 0) | (2 if self.changePort else 0))


class ResponsePort(NamedTuple):
    """RESPONSE-PORT (RFC 5780 §7.5): the port the response is to be sent to."""

    port: int

    @property
    def type(self) -> int:
        return RESPONSE_PORT

    def encodeValue(self, transactionId: bytes) -> bytes:
        return _TLV.pack(_checkPort(self.port), 0)


class Padding(NamedTuple):
    """PADDING (RFC 5780 §7.6): filler bytes for path-MTU tests."""

    value: bytes

    @property
    def type(self) -> int:
        return PADDING

    def encodeValue(self, transactionId: bytes) -> bytes:
        return bytes(self.value)


class MessageIntegrity(NamedTuple):
    """MESSAGE-INTEGRITY (RFC 8489 §14.5) as received; :meth:`Message.encode` computes its own."""

    value: bytes

    @property
    def type(self) -> int:
        return MESSAGE_INTEGRITY

    def encodeValue(self, transactionId: bytes) -> bytes:
        return bytes(self.value)


class MessageIntegritySHA256(NamedTuple):
    """MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.6) as received (16 to 32 bytes)."""

    value: bytes

    @property
    def type(self) -> int:
        return MESSAGE_INTEGRITY_SHA256

    def encodeValue(self, transactionId: bytes) -> bytes:
        return bytes(self.value)


class Fingerprint(NamedTuple):
    """FINGERPRINT (RFC 8489 §14.7) as received; :meth:`Message.encode` computes its own."""

    value: int

    @property
    def type(self) -> int:
        return FINGERPRINT

    def encodeValue(self, transactionId: bytes) -> bytes:
        return _U32.pack(self.value)


class RawAttribute(NamedTuple):
    """An attribute of a type this module does not know, kept as raw bytes (ICE's PRIORITY, for example)."""

    type: int
    value: bytes

    def encodeValue(self, transactionId: bytes) -> bytes:
        return bytes(self.value)


Attribute = Union[
    MappedAddress,
    XorMappedAddress,
    AlternateServer,
    ResponseOrigin,
    OtherAddress,
    Username,
    Userhash,
    Realm,
    Nonce,
    Software,
    AlternateDomain,
    ErrorCode,
    UnknownAttributes,
    PasswordAlgorithms,
    PasswordAlgorithm,
    ChangeRequest,
    ResponsePort,
    Padding,
    MessageIntegrity,
    MessageIntegritySHA256,
    Fingerprint,
    RawAttribute,
]

_AddressAttribute = Union[MappedAddress, XorMappedAddress, AlternateServer, ResponseOrigin, OtherAddress]

#: Attribute classes by type, for every type this module parses into a typed value.
ATTRIBUTE_CLASSES: Dict[int, Type[Attribute]] = {
    MAPPED_ADDRESS: MappedAddress,
    XOR_MAPPED_ADDRESS: XorMappedAddress,
    ALTERNATE_SERVER: AlternateServer,
    RESPONSE_ORIGIN: ResponseOrigin,
    OTHER_ADDRESS: OtherAddress,
    USERNAME: Username,
    USERHASH: Userhash,
    REALM: Realm,
    NONCE: Nonce,
    SOFTWARE: Software,
    ALTERNATE_DOMAIN: AlternateDomain,
    ERROR_CODE: ErrorCode,
    UNKNOWN_ATTRIBUTES: UnknownAttributes,
    PASSWORD_ALGORITHMS: PasswordAlgorithms,
    PASSWORD_ALGORITHM: PasswordAlgorithm,
    CHANGE_REQUEST: ChangeRequest,
    RESPONSE_PORT: ResponsePort,
    PADDING: Padding,
    MESSAGE_INTEGRITY: MessageIntegrity,
    MESSAGE_INTEGRITY_SHA256: MessageIntegritySHA256,
    FINGERPRINT: Fingerprint,
}

for _cls in (*ATTRIBUTE_CLASSES.values(), RawAttribute):
    # Equality that also compares the attribute kind: MappedAddress(h, p) != XorMappedAddress(h, p).
    for _name, _function in (("__eq__", _attributeEq), ("__ne__", _attributeNe), ("__hash__", _attributeHash)):
        setattr(_cls, _name, _function)

# The attributes encode() computes rather than copies.
_COMPUTED = frozenset((MessageIntegrity, MessageIntegritySHA256, Fingerprint))
_COMPUTED_TYPES = frozenset((MESSAGE_INTEGRITY, MESSAGE_INTEGRITY_SHA256, FINGERPRINT))
_new = tuple.__new__


def _parseErrorCode(value: bytes, tid: bytes) -> ErrorCode:
    if len(value) < 4:
        raise STUNDecodeError("ERROR-CODE shorter than 4 bytes", value)
    klass, number = _ERROR_HEAD.unpack_from(value)
    klass &= 0x07
    if not 3 <= klass <= 6 or number > 99:
        raise STUNDecodeError(f"ERROR-CODE class {klass} number {number} out of range", value)
    return _new(ErrorCode, (klass * 100 + number, _text(value[4:])))


def _parseUnknown(value: bytes, tid: bytes) -> UnknownAttributes:
    if len(value) % 2:
        raise STUNDecodeError("UNKNOWN-ATTRIBUTES length is odd", value)
    return _new(UnknownAttributes, (struct.unpack(f"!{len(value) // 2}H", value),))


def _parseAlgorithms(value: bytes) -> Tuple[Tuple[int, bytes], ...]:
    out = []
    pos, n = 0, len(value)
    while pos < n:
        if pos + 4 > n:
            raise STUNDecodeError("truncated password algorithm", value)
        algorithm, plen = _TLV.unpack_from(value, pos)
        end = pos + 4 + plen
        if end > n:
            raise STUNDecodeError("password algorithm parameters overrun", value)
        out.append((algorithm, value[pos + 4 : end]))
        pos = end + (-plen % 4)
    if pos != n:
        raise STUNDecodeError("password algorithm parameters lack their padding", value)
    return tuple(out)


def _parsePasswordAlgorithm(value: bytes, tid: bytes) -> PasswordAlgorithm:
    algorithms = _parseAlgorithms(value)
    if len(algorithms) != 1 or len(value) != 4 + len(algorithms[0][1]) + (-len(algorithms[0][1]) % 4):
        raise STUNDecodeError("PASSWORD-ALGORITHM must hold exactly one algorithm", value)
    return _new(PasswordAlgorithm, algorithms[0])


def _parseFixed(length: int, cls: type, what: str) -> object:
    def parse(value: bytes, tid: bytes) -> object:
        if len(value) != length:
            raise STUNDecodeError(f"{what} must be {length} bytes, not {len(value)}", value)
        return _new(cls, (value,))

    return parse


def _parseChangeRequest(value: bytes, tid: bytes) -> ChangeRequest:
    if len(value) != 4:
        raise STUNDecodeError("CHANGE-REQUEST must be 4 bytes", value)
    flags = value[3]
    return _new(ChangeRequest, (bool(flags & 4), bool(flags & 2)))


def _parseResponsePort(value: bytes, tid: bytes) -> ResponsePort:
    if len(value) != 4:
        raise STUNDecodeError("RESPONSE-PORT must be 4 bytes", value)
    return _new(ResponsePort, (_U16.unpack_from(value)[0],))


def _parseMI256(value: bytes, tid: bytes) -> MessageIntegritySHA256:
    # RFC 8489 §14.6: at least 16 bytes, at most 32, a multiple of 4.
    if not 16 <= len(value) <= 32 or len(value) % 4:
        raise STUNDecodeError(f"MESSAGE-INTEGRITY-SHA256 of {len(value)} bytes", value)
    return _new(MessageIntegritySHA256, (value,))


def _parseFingerprint(value: bytes, tid: bytes) -> Fingerprint:
    if len(value) != 4:
        raise STUNDecodeError("FINGERPRINT must be 4 bytes", value)
    return _new(Fingerprint, (_U32.unpack(value)[0],))


_PARSERS: Dict[int, object] = {
    XOR_MAPPED_ADDRESS: lambda v, t: _new(XorMappedAddress, _decodeXorAddress(v, t)),
    MAPPED_ADDRESS: lambda v, t: _new(MappedAddress, _decodeAddress(v)),
    ALTERNATE_SERVER: lambda v, t: _new(AlternateServer, _decodeAddress(v)),
    RESPONSE_ORIGIN: lambda v, t: _new(ResponseOrigin, _decodeAddress(v)),
    OTHER_ADDRESS: lambda v, t: _new(OtherAddress, _decodeAddress(v)),
    USERNAME: lambda v, t: _new(Username, (_text(v),)),
    REALM: lambda v, t: _new(Realm, (_text(v),)),
    NONCE: lambda v, t: _new(Nonce, (_text(v),)),
    SOFTWARE: lambda v, t: _new(Software, (_text(v),)),
    ALTERNATE_DOMAIN: lambda v, t: _new(AlternateDomain, (_text(v),)),
    USERHASH: _parseFixed(32, Userhash, "USERHASH"),
    ERROR_CODE: _parseErrorCode,
    UNKNOWN_ATTRIBUTES: _parseUnknown,
    PASSWORD_ALGORITHMS: lambda v, t: _new(PasswordAlgorithms, (_parseAlgorithms(v),)),
    PASSWORD_ALGORITHM: _parsePasswordAlgorithm,
    CHANGE_REQUEST: _parseChangeRequest,
    RESPONSE_PORT: _parseResponsePort,
    PADDING: lambda v, t: _new(Padding, (v,)),
    MESSAGE_INTEGRITY: _parseFixed(20, MessageIntegrity, "MESSAGE-INTEGRITY"),
    MESSAGE_INTEGRITY_SHA256: _parseMI256,
    FINGERPRINT: _parseFingerprint,
}
_parserFor = _PARSERS.get


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
        The types of unknown comprehension-required attributes (type < 0x8000), in order, without repeats.

        A server answers a request that has any with 420 and lists them in UNKNOWN-ATTRIBUTES; a client
        discards a response that has any (RFC 8489 §6.3.1, §7.3.3).
        """
        # dict.fromkeys: ordered and de-duplicated in linear time (a 64 KB datagram holds 16,000 attributes).
        return tuple(dict.fromkeys(a.type for a in self.attributes if type(a) is RawAttribute and a.type < 0x8000))

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
    module docstring for what is checked.
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
                append(_new(Fingerprint, _U32.unpack_from(data, start)))
            elif sealed:
                # RFC 8489 §14.5/§14.6: after MESSAGE-INTEGRITY only MESSAGE-INTEGRITY-SHA256 and FINGERPRINT
                # count, after MESSAGE-INTEGRITY-SHA256 only FINGERPRINT; the rest is unauthenticated: skip it.
                if atype == MESSAGE_INTEGRITY_SHA256 and mi256 < 0:
                    mi256 = pos
                    append(_parseMI256(data[start:end], tid))
            elif atype == XOR_MAPPED_ADDRESS and alen == 8 and data[start + 1] == _FAMILY_V4:
                port, addr = _XOR_V4.unpack_from(data, start)
                host = _v4names.get(addr)
                if host is None:
                    host = _v4name(addr)
                append(_new(XorMappedAddress, (host, port ^ _COOKIE_PORT)))
            elif atype == SOFTWARE:
                append(_new(Software, (data[start:end].decode("utf-8"),)))
            elif atype == MESSAGE_INTEGRITY:
                if alen != 20:
                    raise STUNDecodeError(f"MESSAGE-INTEGRITY must be 20 bytes, not {alen}", data)
                mi = pos
                sealed = True
                append(_new(MessageIntegrity, (data[start:end],)))
            elif atype == MESSAGE_INTEGRITY_SHA256:
                mi256 = pos
                sealed = True
                append(_parseMI256(data[start:end], tid))
            else:
                parse = _parserFor(atype)
                if parse is None:
                    append(_new(RawAttribute, (atype, data[start:end])))
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
    msg.method = (msgType & 0x000F) | ((msgType >> 1) & 0x0070) | ((msgType >> 2) & 0x0F80)
    msg.messageClass = ((msgType >> 4) & 1) | ((msgType >> 7) & 2)
    msg.transactionId = tid
    msg.attributes = attributes
    msg._raw = data
    msg._mi = mi
    msg._mi256 = mi256
    msg._fp = fp
    return msg


def isSTUN(data: bytes) -> bool:
    """
    RFC 7983 demultiplexing: first byte 0-3, the magic cookie, and a length field that is a multiple of 4
    and accounts for exactly the rest of ``data``.  One struct unpack; never raises.
    """
    if len(data) < HEADER_LENGTH:
        return False
    first, length, cookie = _DEMUX.unpack_from(data)
    return first < 4 and cookie == MAGIC_COOKIE and not length & 3 and length + HEADER_LENGTH == len(data)


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


def peekHeader(data: bytes) -> Optional[Tuple[int, int, bytes]]:
    """
    ``(method, messageClass, transactionId)`` of a datagram that passes the header checks of :func:`decode`
    (leading zero bits, cookie, length), else ``None``.  For matching a response to a transaction before (or
    instead of) a full decode.
    """
    if len(data) < HEADER_LENGTH:
        return None
    msgType, length, cookie, tid = _HEADER.unpack_from(data)
    if msgType & 0xC000 or cookie != MAGIC_COOKIE or length & 3 or length + HEADER_LENGTH != len(data):
        return None
    return (
        (msgType & 0x000F) | ((msgType >> 1) & 0x0070) | ((msgType >> 2) & 0x0F80),
        ((msgType >> 4) & 1) | ((msgType >> 7) & 2),
        bytes(tid),
    )


# ---------------------------------------------------------------------------------------------------------
# Fast path: Binding requests from a cached template


class _Template(NamedTuple):
    signPrefix: bytes  # header up to the cookie, length covering MESSAGE-INTEGRITY
    finalPrefix: bytes  # header up to the cookie, final length
    body: bytes
    integrityTLV: bytes


_templates: Dict[Tuple[Optional[str], Optional[str], Optional[bytes], bool], _Template] = {}
_BINDING_REQUEST = messageType(BINDING, REQUEST)
_MI_TLV = _TLV.pack(MESSAGE_INTEGRITY, 20)
_FP_TLV = _TLV.pack(FINGERPRINT, 4)


def _template(
    software: Optional[str], username: Optional[str], key: Optional[bytes], fingerprint: bool
) -> _Template:
    if key is not None:
        key = bytes(key)
    cacheKey = (software, username, key, fingerprint)
    found = _templates.get(cacheKey)
    if found is not None:
        return found
    attrs: List[Attribute] = []
    if username is not None:
        attrs.append(Username(username))
    if software is not None:
        attrs.append(Software(software))
    body = Message(BINDING, REQUEST, bytes(12), attrs).encode(None, fingerprint=False)[HEADER_LENGTH:]
    signed = len(body) + (24 if key is not None else 0)
    final = signed + (8 if fingerprint else 0)
    made = _Template(
        _PREFIX.pack(_BINDING_REQUEST, signed, MAGIC_COOKIE),
        _PREFIX.pack(_BINDING_REQUEST, final, MAGIC_COOKIE),
        body,
        _MI_TLV,
    )
    if len(_templates) >= 256:
        _templates.clear()
    _templates[cacheKey] = made
    return made


def encodeBindingRequest(
    transactionId: bytes,
    software: Optional[str] = None,
    username: Optional[str] = None,
    key: Optional[bytes] = None,
    fingerprint: bool = True,
) -> bytes:
    """
    A Binding request, byte-identical to ``Message(BINDING, REQUEST, transactionId, [USERNAME, SOFTWARE])
    .encode(key, fingerprint)``, built from a cached template: only the transaction ID, the HMAC and the CRC
    are computed per call.  For keepalives on many flows.
    """
    if len(transactionId) != 12:
        raise STUNEncodeError(f"transaction ID must be 12 bytes, not {len(transactionId)}")
    t = _template(software, username, key, fingerprint)
    if key is not None:
        mac = _hmac(key, t.signPrefix + transactionId + t.body, "sha1")
        data = t.finalPrefix + transactionId + t.body + t.integrityTLV + mac
    else:
        data = t.finalPrefix + transactionId + t.body
    if fingerprint:
        return data + _FP_TLV + _U32.pack(zlib.crc32(data) ^ FINGERPRINT_XOR)
    return data


# ---------------------------------------------------------------------------------------------------------
# TCP framing


class StreamFramer:
    """
    Split a STUN-over-TCP byte stream into whole messages by the header's length field (RFC 8489 §6.2.2).

    :meth:`feed` raises :class:`STUNDecodeError` as soon as the bytes at a message boundary cannot start a
    STUN header (leading bits, cookie, length); the stream is then out of sync and the connection should be
    closed.  The buffer is bounded by one maximal message (20 + 65532 bytes).
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """How many bytes wait for the rest of their message."""
        return len(self._buffer)

    def feed(self, data: bytes) -> List[bytes]:
        buf = self._buffer
        buf += data
        out: List[bytes] = []
        while buf:
            if buf[0] & 0xC0:
                raise STUNDecodeError("stream is not STUN: leading bits are not zero", bytes(buf[:20]))
            if len(buf) < 8:
                break
            length, cookie = _U16.unpack_from(buf, 2)[0], _U32.unpack_from(buf, 4)[0]
            if cookie != MAGIC_COOKIE:
                raise STUNDecodeError(f"stream is not STUN: bad magic cookie {cookie:#010x}", bytes(buf[:20]))
            if length & 3:
                raise STUNDecodeError(f"stream is not STUN: length {length} not a multiple of 4", bytes(buf[:20]))
            total = HEADER_LENGTH + length
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
        return out


# ---------------------------------------------------------------------------------------------------------
# Keys


def opaqueString(value: str) -> str:
    """
    Prepare a string with the practical part of the PRECIS OpaqueString profile (RFC 8265 §4.2).

    Implemented: the additional mapping rule (every non-ASCII space, general category Zs, becomes U+0020) and
    NFC normalisation.  As the profile says, there is no width mapping, no case mapping and no directionality
    rule.  Not implemented: enforcement of the FreeformClass disallowed code points (control characters,
    unassigned code points, ...): such a password is used as mapped rather than rejected.
    """
    if value.isascii():
        return value
    mapped = "".join(" " if ch != " " and unicodedata.category(ch) == "Zs" else ch for ch in value)
    return unicodedata.normalize("NFC", mapped)


def shortTermKey(password: str) -> bytes:
    """The short-term credential key: the OpaqueString-prepared password in UTF-8 (RFC 8489 §9.1.1)."""
    return opaqueString(password).encode("utf-8")


def longTermKey(username: str, realm: str, password: str, algorithm: int = PASSWORD_ALGORITHM_MD5) -> bytes:
    """
    The long-term credential key (RFC 8489 §9.2.2): MD5 (PASSWORD-ALGORITHM 0x0001, 16 bytes) or SHA-256
    (0x0002, 32 bytes) of ``username ":" OpaqueString(realm) ":" OpaqueString(password)``.
    """
    text = f"{username}:{opaqueString(realm)}:{opaqueString(password)}".encode()
    if algorithm == PASSWORD_ALGORITHM_MD5:
        return hashlib.md5(text).digest()
    if algorithm == PASSWORD_ALGORITHM_SHA256:
        return hashlib.sha256(text).digest()
    raise ValueError(f"unknown password algorithm {algorithm:#06x}")


def userhash(username: str, realm: str) -> bytes:
    """USERHASH value: SHA-256 of ``OpaqueString(username) ":" OpaqueString(realm)`` (RFC 8489 §14.4)."""
    return hashlib.sha256(f"{opaqueString(username)}:{opaqueString(realm)}".encode()).digest()
