"""
STUN attributes (RFC 8489 §14, RFC 5780 §7): one codec per value *shape*, and one table of every type.

An attribute value has one of a few shapes -- a transport address (plain or XORed), UTF-8 text, opaque bytes,
or one of a handful of one-off layouts (ERROR-CODE, UNKNOWN-ATTRIBUTES, the password algorithms,
CHANGE-REQUEST, RESPONSE-PORT, FINGERPRINT).  Each shape is written once: a NamedTuple of its fields with
``encodeValue``, and a parser builder.  The public classes (:class:`MappedAddress`, :class:`Username`, ...) are
empty subclasses of their shape, so that ``MappedAddress(h, p) != XorMappedAddress(h, p)`` and
``isinstance`` tells the kinds apart.  :data:`ATTRIBUTES` is the table: one :class:`AttributeKind` row per type
(type code, name, class, parse, encode); the decoder's parsers, ``ATTRIBUTE_CLASSES`` and every class's
``type`` come from it.

RFC 3489's attribute types that RFC 8489 §18.3.1 lists as reserved (RESPONSE-ADDRESS, SOURCE-ADDRESS,
CHANGED-ADDRESS, PASSWORD, REFLECTED-FROM) are rows too, with no class: they decode as :class:`RawAttribute`
and :data:`RFC3489_RESERVED` names them, so a response from an RFC 3489-era server (stund 0.97 sends
SOURCE-ADDRESS and CHANGED-ADDRESS next to the mapped addresses) is not refused for them.  CHANGE-REQUEST
(0x0003), reserved by RFC 8489 too, is RFC 5780's attribute again and has its class.
"""

from __future__ import annotations

import struct
from typing import Any, Callable, ClassVar, Dict, NamedTuple, Optional, Tuple, Type, Union

from twisted_sipnat.core.stun.header import STUNDecodeError, STUNEncodeError
from twisted_sipnat.core.stun.shapes import (
    TLV,
    U16,
    U32,
    AddressShape,
    OpaqueShape,
    Parse,
    ParserBuilder,
    TextShape,
    XorAddressShape,
    address,
    attributeEq,
    attributeHash,
    attributeNe,
    checkPort,
    fourBytes,
    opaque,
    text,
    textValue,
    xorAddress,
)
from twisted_sipnat.core.stun.shapes import new as _new

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
# ... RFC 5780 §7 ...
CHANGE_REQUEST = 0x0003
PADDING = 0x0026
RESPONSE_PORT = 0x0027
RESPONSE_ORIGIN = 0x802B
OTHER_ADDRESS = 0x802C
# ... and RFC 3489 §11.2's, reserved by RFC 8489 §18.3.1 (kept raw, tolerated in responses).
RESPONSE_ADDRESS = 0x0002
SOURCE_ADDRESS = 0x0004
CHANGED_ADDRESS = 0x0005
PASSWORD = 0x0007
REFLECTED_FROM = 0x000B

_ERROR_HEAD = struct.Struct("!xxBB")
# Module-level names for the imported structs: CPython 3.11 compiles ``X.f()`` on a name bound by an import
# as an attribute load that makes a bound method per call, not LOAD_METHOD.
_TLV = TLV
_U32 = U32


class MappedAddress(AddressShape):
    """MAPPED-ADDRESS (RFC 8489 §14.1): the reflexive address, unobfuscated (RFC 3489-era servers)."""

    __slots__ = ()


class XorMappedAddress(XorAddressShape):
    """XOR-MAPPED-ADDRESS (RFC 8489 §14.2): the reflexive address XORed with the cookie (and transaction ID)."""

    __slots__ = ()


class AlternateServer(AddressShape):
    """ALTERNATE-SERVER (RFC 8489 §14.15): where a 300 Try Alternate sends the client."""

    __slots__ = ()


class ResponseOrigin(AddressShape):
    """RESPONSE-ORIGIN (RFC 5780 §7.3): the address the response was sent from."""

    __slots__ = ()


class OtherAddress(AddressShape):
    """OTHER-ADDRESS (RFC 5780 §7.4): the server's address that differs in both IP and port."""

    __slots__ = ()


class Username(TextShape):
    """USERNAME (RFC 8489 §14.3), UTF-8."""

    __slots__ = ()


class Realm(TextShape):
    """REALM (RFC 8489 §14.9), UTF-8."""

    __slots__ = ()


class Nonce(TextShape):
    """NONCE (RFC 8489 §14.10)."""

    __slots__ = ()


class Software(TextShape):
    """SOFTWARE (RFC 8489 §14.14), UTF-8."""

    __slots__ = ()


class AlternateDomain(TextShape):
    """ALTERNATE-DOMAIN (RFC 8489 §14.16): the TLS name of the ALTERNATE-SERVER."""

    __slots__ = ()


class Userhash(OpaqueShape):
    """USERHASH (RFC 8489 §14.4): SHA-256 of username and realm, 32 bytes; see ``userhash``."""

    __slots__ = ()

    def encodeValue(self, transactionId: bytes) -> bytes:
        if len(self.value) != 32:
            raise STUNEncodeError(f"USERHASH must be 32 bytes, not {len(self.value)}")
        return bytes(self.value)


class Padding(OpaqueShape):
    """PADDING (RFC 5780 §7.6): filler bytes for path-MTU tests."""

    __slots__ = ()


class MessageIntegrity(OpaqueShape):
    """MESSAGE-INTEGRITY (RFC 8489 §14.5) as received; ``Message.encode`` computes its own."""

    __slots__ = ()


class MessageIntegritySHA256(OpaqueShape):
    """MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.6) as received (16 to 32 bytes)."""

    __slots__ = ()


class _ErrorCodeFields(NamedTuple):
    code: int
    reason: str = ""


class ErrorCode(_ErrorCodeFields):
    """ERROR-CODE (RFC 8489 §14.8): ``code`` 300-699 and a UTF-8 reason phrase."""

    __slots__ = ()
    type: ClassVar[int]

    def encodeValue(self, transactionId: bytes) -> bytes:
        code = self.code
        if not isinstance(code, int) or not 300 <= code <= 699:
            raise STUNEncodeError(f"ERROR-CODE out of range 300-699: {code!r}")
        return _ERROR_HEAD.pack(code // 100, code % 100) + self.reason.encode("utf-8")


class _TypesFields(NamedTuple):
    types: Tuple[int, ...]


class UnknownAttributes(_TypesFields):
    """UNKNOWN-ATTRIBUTES (RFC 8489 §14.13): the types a 420 response did not understand."""

    __slots__ = ()
    type: ClassVar[int]

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


class _AlgorithmsFields(NamedTuple):
    algorithms: Tuple[Tuple[int, bytes], ...]


class PasswordAlgorithms(_AlgorithmsFields):
    """PASSWORD-ALGORITHMS (RFC 8489 §14.11): ``((algorithm, parameters), ...)`` the server supports."""

    __slots__ = ()
    type: ClassVar[int]

    def encodeValue(self, transactionId: bytes) -> bytes:
        return b"".join(_encodeAlgorithm(a, p) for a, p in self.algorithms)


class _AlgorithmFields(NamedTuple):
    algorithm: int
    parameters: bytes = b""


class PasswordAlgorithm(_AlgorithmFields):
    """PASSWORD-ALGORITHM (RFC 8489 §14.12): the algorithm the client chose for the long-term key."""

    __slots__ = ()
    type: ClassVar[int]

    def encodeValue(self, transactionId: bytes) -> bytes:
        return _encodeAlgorithm(self.algorithm, self.parameters)


class _ChangeFields(NamedTuple):
    changeIP: bool = False
    changePort: bool = False


class ChangeRequest(_ChangeFields):
    """CHANGE-REQUEST (RFC 5780 §7.2): ask the server to answer from its other IP and/or port."""

    __slots__ = ()
    type: ClassVar[int]

    def encodeValue(self, transactionId: bytes) -> bytes:
        return _U32.pack((4 if self.changeIP else 0) | (2 if self.changePort else 0))


class _PortFields(NamedTuple):
    port: int


class ResponsePort(_PortFields):
    """RESPONSE-PORT (RFC 5780 §7.5): the port the response is to be sent to."""

    __slots__ = ()
    type: ClassVar[int]

    def encodeValue(self, transactionId: bytes) -> bytes:
        return _TLV.pack(checkPort(self.port), 0)


class _CRCFields(NamedTuple):
    value: int


class Fingerprint(_CRCFields):
    """FINGERPRINT (RFC 8489 §14.7) as received; ``Message.encode`` computes its own."""

    __slots__ = ()
    type: ClassVar[int]

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

# Parser builders of the one-off shapes (the common ones are in shapes.py).


def _errorCode(cls: Any, name: str) -> Parse:
    def parse(value: bytes, tid: bytes) -> Any:
        if len(value) < 4:
            raise STUNDecodeError("ERROR-CODE shorter than 4 bytes", value)
        klass, number = _ERROR_HEAD.unpack_from(value)
        klass &= 0x07
        if not 3 <= klass <= 6 or number > 99:
            raise STUNDecodeError(f"ERROR-CODE class {klass} number {number} out of range", value)
        return _new(cls, (klass * 100 + number, text(value[4:])))

    return parse


def _types(cls: Any, name: str) -> Parse:
    def parse(value: bytes, tid: bytes) -> Any:
        if len(value) % 2:
            raise STUNDecodeError("UNKNOWN-ATTRIBUTES length is odd", value)
        return _new(cls, (struct.unpack(f"!{len(value) // 2}H", value),))

    return parse


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


def _algorithms(cls: Any, name: str) -> Parse:
    def parse(value: bytes, tid: bytes) -> Any:
        return _new(cls, (_parseAlgorithms(value),))

    return parse


def _algorithm(cls: Any, name: str) -> Parse:
    def parse(value: bytes, tid: bytes) -> Any:
        algorithms = _parseAlgorithms(value)
        if len(algorithms) != 1:  # _parseAlgorithms already insists on exact padding
            raise STUNDecodeError("PASSWORD-ALGORITHM must hold exactly one algorithm", value)
        return _new(cls, algorithms[0])

    return parse


# ---------------------------------------------------------------------------------------------------------
# The table


class AttributeKind(NamedTuple):
    """One row of :data:`ATTRIBUTES`: a type code, its RFC name, its class (``None``: kept raw), and codec."""

    type: int
    name: str
    cls: Optional[Type[Attribute]]
    parse: Optional[Parse]  # None: kept as a RawAttribute
    encode: Callable[[Any, bytes], bytes]


def _row(atype: int, name: str, cls: Any, builder: ParserBuilder) -> AttributeKind:
    """A typed row; the class learns its ``type`` here, so each type code is written once."""
    cls.type = atype
    return AttributeKind(atype, name, cls, builder(cls, name), cls.encodeValue)


def _reserved(atype: int, name: str) -> AttributeKind:
    """An RFC 3489 type RFC 8489 §18.3.1 reserves: no class, no parser; decoded as a RawAttribute."""
    return AttributeKind(atype, name, None, None, RawAttribute.encodeValue)


def _flags(value: bytes) -> Tuple[bool, bool]:
    return bool(value[3] & 4), bool(value[3] & 2)  # RFC 5780 §7.2: A (change IP) = 4, B (change port) = 2


_TABLE = (
    _row(MAPPED_ADDRESS, "MAPPED-ADDRESS", MappedAddress, address),
    _reserved(RESPONSE_ADDRESS, "RESPONSE-ADDRESS"),
    _row(CHANGE_REQUEST, "CHANGE-REQUEST", ChangeRequest, fourBytes(_flags)),
    _reserved(SOURCE_ADDRESS, "SOURCE-ADDRESS"),
    _reserved(CHANGED_ADDRESS, "CHANGED-ADDRESS"),
    _row(USERNAME, "USERNAME", Username, textValue),
    _reserved(PASSWORD, "PASSWORD"),
    _row(MESSAGE_INTEGRITY, "MESSAGE-INTEGRITY", MessageIntegrity, opaque(range(20, 21), "20 bytes")),
    _row(ERROR_CODE, "ERROR-CODE", ErrorCode, _errorCode),
    _row(UNKNOWN_ATTRIBUTES, "UNKNOWN-ATTRIBUTES", UnknownAttributes, _types),
    _reserved(REFLECTED_FROM, "REFLECTED-FROM"),
    _row(REALM, "REALM", Realm, textValue),
    _row(NONCE, "NONCE", Nonce, textValue),
    _row(
        MESSAGE_INTEGRITY_SHA256,
        "MESSAGE-INTEGRITY-SHA256",
        MessageIntegritySHA256,
        opaque(range(16, 33, 4), "16 to 32 bytes, a multiple of 4"),
    ),
    _row(PASSWORD_ALGORITHM, "PASSWORD-ALGORITHM", PasswordAlgorithm, _algorithm),
    _row(USERHASH, "USERHASH", Userhash, opaque(range(32, 33), "32 bytes")),
    _row(XOR_MAPPED_ADDRESS, "XOR-MAPPED-ADDRESS", XorMappedAddress, xorAddress),
    _row(PADDING, "PADDING", Padding, opaque()),
    _row(RESPONSE_PORT, "RESPONSE-PORT", ResponsePort, fourBytes(U16.unpack_from)),
    _row(PASSWORD_ALGORITHMS, "PASSWORD-ALGORITHMS", PasswordAlgorithms, _algorithms),
    _row(ALTERNATE_DOMAIN, "ALTERNATE-DOMAIN", AlternateDomain, textValue),
    _row(SOFTWARE, "SOFTWARE", Software, textValue),
    _row(ALTERNATE_SERVER, "ALTERNATE-SERVER", AlternateServer, address),
    _row(FINGERPRINT, "FINGERPRINT", Fingerprint, fourBytes(_U32.unpack)),
    _row(RESPONSE_ORIGIN, "RESPONSE-ORIGIN", ResponseOrigin, address),
    _row(OTHER_ADDRESS, "OTHER-ADDRESS", OtherAddress, address),
)

#: Every attribute type this codec knows, by type code.
ATTRIBUTES: Dict[int, AttributeKind] = {kind.type: kind for kind in _TABLE}

#: Attribute classes by type, for every type this module parses into a typed value.
ATTRIBUTE_CLASSES: Dict[int, Type[Attribute]] = {k.type: k.cls for k in _TABLE if k.cls is not None}

#: RFC 3489's types that RFC 8489 §18.3.1 reserves and this codec keeps raw: not "unknown" in a response.
RFC3489_RESERVED = frozenset(k.type for k in _TABLE if k.cls is None)

#: The parser per type, for the decoder; types not in it become RawAttribute.
PARSERS: Dict[int, Parse] = {k.type: k.parse for k in _TABLE if k.parse is not None}



def attributeName(attrType: int) -> str:
    """The RFC name of an attribute type (``"SOURCE-ADDRESS"``), or its hex code when the table has none."""
    kind = ATTRIBUTES.get(attrType)
    return kind.name if kind is not None else f"0x{attrType:04x}"


_AddressAttribute = Union[MappedAddress, XorMappedAddress, AlternateServer, ResponseOrigin, OtherAddress]


for _cls in (*ATTRIBUTE_CLASSES.values(), RawAttribute):
    # Equality that also compares the attribute kind: MappedAddress(h, p) != XorMappedAddress(h, p).
    for _name, _function in (("__eq__", attributeEq), ("__ne__", attributeNe), ("__hash__", attributeHash)):
        setattr(_cls, _name, _function)
