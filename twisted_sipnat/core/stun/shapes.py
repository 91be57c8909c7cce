"""
The value shapes STUN attributes come in, each written once: a transport address plain (RFC 8489 §14.1) or
XORed (§14.2), UTF-8 text, opaque bytes with a length rule.  A shape is a NamedTuple of its fields with
``encodeValue``, plus a parser builder that, given a class and the attribute's name, returns the function the
decoder calls.  :mod:`twisted_sipnat.core.stun.attributes` subclasses the shapes into the public attribute
classes and lists them in its table.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from functools import lru_cache
from typing import Any, Callable, ClassVar, Dict, NamedTuple, Optional, Tuple

from twisted_sipnat.core.stun.header import MAGIC_COOKIE, STUNDecodeError, STUNEncodeError

HostPort = Tuple[str, int]

#: ``parse(value, transactionId) -> attribute``; raises STUNDecodeError (or ValueError/struct.error, which
#: ``decode`` turns into one) for a value that does not fit the type.
Parse = Callable[[bytes, bytes], Any]
#: Builds a shape's ``Parse`` for one class and attribute name.
ParserBuilder = Callable[[Any, str], Parse]

U16 = struct.Struct("!H")
U32 = struct.Struct("!I")
TLV = struct.Struct("!HH")
XOR_V4 = struct.Struct("!2xHI")
_ADDR_V4 = struct.Struct("!xBH4s")
_ADDR_HEAD = struct.Struct("!xBH")
_COOKIE_BYTES = U32.pack(MAGIC_COOKIE)
COOKIE_PORT = MAGIC_COOKIE >> 16
FAMILY_V4 = 0x01
FAMILY_V6 = 0x02
new = tuple.__new__
_ntoa = socket.inet_ntoa

# ---------------------------------------------------------------------------------------------------------
# Transport addresses (RFC 8489 §14.1, §14.2)


@lru_cache(maxsize=4096)
def _packHost(host: str) -> Tuple[int, bytes]:
    """``(family, packed address)`` for an IP literal; cached because servers answer the same peers often."""
    try:
        return FAMILY_V4, socket.inet_pton(socket.AF_INET, host)
    except (OSError, ValueError, TypeError):
        pass
    try:
        return FAMILY_V6, ipaddress.IPv6Address(host).packed
    except (ValueError, TypeError) as e:
        raise STUNEncodeError(f"not an IP address literal: {host!r}") from e


def checkPort(port: int) -> int:
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise STUNEncodeError(f"port out of range: {port!r}")
    return port


def _xorMask(transactionId: bytes) -> int:
    return int.from_bytes(_COOKIE_BYTES + transactionId, "big")


def _decodeAddress(value: bytes, xor: bool, transactionId: bytes) -> HostPort:
    # RFC 8489 §14.1: the first byte is reserved and ignored by receivers.
    n = len(value)
    if n == 8:
        family, port, addr = _ADDR_V4.unpack(value)
        if family == FAMILY_V4:
            if xor:
                return v4name(U32.unpack(addr)[0]), port ^ COOKIE_PORT
            return _ntoa(addr), port
    elif n == 20:
        family, port = _ADDR_HEAD.unpack_from(value)
        if family == FAMILY_V6:
            if xor:
                packed = (int.from_bytes(value[4:], "big") ^ _xorMask(transactionId)).to_bytes(16, "big")
                return str(ipaddress.IPv6Address(packed)), port ^ COOKIE_PORT
            return str(ipaddress.IPv6Address(value[4:])), port
    raise STUNDecodeError(f"bad {'XOR ' if xor else ''}address: family/length mismatch ({n} bytes)", value)


v4names: Dict[int, str] = {}


def v4name(xored: int) -> str:
    """Dotted quad of an XORed IPv4 address, remembered: a client sees the same mapped address again and again."""
    host = v4names.get(xored)
    if host is None:
        host = _ntoa(U32.pack(xored ^ MAGIC_COOKIE))
        if len(v4names) >= 4096:
            v4names.clear()
        v4names[xored] = host
    return host


def text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise STUNDecodeError("text attribute is not UTF-8", value) from e


# ---------------------------------------------------------------------------------------------------------
# The shapes.  Each is an immutable NamedTuple (cheap to build in the decode loop, no __dict__); ``type`` is a
# class attribute the table sets.  Equality also compares the kind (attributeEq, set up by the table).


class _HostPortFields(NamedTuple):
    host: str
    port: int


class AddressShape(_HostPortFields):
    """A transport address sent as it is (RFC 8489 §14.1)."""

    __slots__ = ()
    type: ClassVar[int]

    def encodeValue(self, transactionId: bytes) -> bytes:
        family, packed = _packHost(self.host)
        return _ADDR_HEAD.pack(family, checkPort(self.port)) + packed


class XorAddressShape(_HostPortFields):
    """A transport address XORed with the cookie and, for IPv6, the transaction ID (RFC 8489 §14.2)."""

    __slots__ = ()
    type: ClassVar[int]

    def encodeValue(self, transactionId: bytes) -> bytes:
        family, packed = _packHost(self.host)
        head = _ADDR_HEAD.pack(family, checkPort(self.port) ^ COOKIE_PORT)
        if family == FAMILY_V4:
            return head + U32.pack(U32.unpack(packed)[0] ^ MAGIC_COOKIE)
        return head + (int.from_bytes(packed, "big") ^ _xorMask(transactionId)).to_bytes(16, "big")


class _TextFields(NamedTuple):
    value: str


class TextShape(_TextFields):
    """UTF-8 text (RFC 8489 §14.3, §14.9, §14.10, §14.14, §14.16); no length limit enforced on receipt."""

    __slots__ = ()
    type: ClassVar[int]

    def encodeValue(self, transactionId: bytes) -> bytes:
        return self.value.encode("utf-8")


class _OpaqueFields(NamedTuple):
    value: bytes


class OpaqueShape(_OpaqueFields):
    """Bytes as they are; the table's parser checks the length the RFC requires."""

    __slots__ = ()
    type: ClassVar[int]

    def encodeValue(self, transactionId: bytes) -> bytes:
        return bytes(self.value)


# ---------------------------------------------------------------------------------------------------------
# Parser builders, one per shape: each takes the class (and the attribute's name, for messages) and returns
# the parse function the decoder calls.


def address(cls: Any, name: str) -> Parse:
    def parse(value: bytes, tid: bytes) -> Any:
        return new(cls, _decodeAddress(value, False, tid))

    return parse


def xorAddress(cls: Any, name: str) -> Parse:
    def parse(value: bytes, tid: bytes) -> Any:
        return new(cls, _decodeAddress(value, True, tid))

    return parse


def textValue(cls: Any, name: str) -> Parse:
    def parse(value: bytes, tid: bytes) -> Any:
        return new(cls, (text(value),))

    return parse


def opaque(sizes: Optional[range] = None, rule: str = "") -> ParserBuilder:
    """Bytes whose length is in ``sizes`` (any length if ``None``); ``rule`` says which, for the error."""

    def builder(cls: Any, name: str) -> Parse:
        def parse(value: bytes, tid: bytes) -> Any:
            if sizes is not None and len(value) not in sizes:
                raise STUNDecodeError(f"{name} must be {rule}, not {len(value)} bytes", value)
            return new(cls, (value,))

        return parse

    return builder


def fourBytes(convert: Callable[[bytes], Tuple[object, ...]]) -> ParserBuilder:
    """A 4-byte value turned into the fields by ``convert``."""

    def builder(cls: Any, name: str) -> Parse:
        def parse(value: bytes, tid: bytes) -> Any:
            if len(value) != 4:
                raise STUNDecodeError(f"{name} must be 4 bytes, not {len(value)}", value)
            return new(cls, convert(value))

        return parse

    return builder


def attributeEq(self: Tuple[object, ...], other: object) -> bool:
    return type(self) is type(other) and tuple.__eq__(self, other)  # type: ignore[arg-type]


def attributeNe(self: Tuple[object, ...], other: object) -> bool:
    return not (type(self) is type(other) and tuple.__eq__(self, other))  # type: ignore[arg-type]


def attributeHash(self: Tuple[object, ...]) -> int:
    return hash((type(self).__name__, tuple.__hash__(self)))

