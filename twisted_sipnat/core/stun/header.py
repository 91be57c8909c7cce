"""
The STUN header (RFC 8489 §5): constants, the method/class interleave, and the cheap header checks.

Everything here looks at the first 20 bytes only.  :func:`splitMessageType` is the one place the 14-bit
message type is taken apart; :func:`decode <twisted_sipnat.core.stun.decode>`, :func:`peekHeader` and the
Binding responder all read method and class through it.  :func:`isSTUN` and :func:`peekHeader` exist because
a SIP server may keep 100k flows alive on a socket it shares with SIP (RFC 7983 demultiplexing).
"""

from __future__ import annotations

import struct
from typing import Dict, Optional, Tuple

from twisted_sipnat.errors import STUNDecodeError, STUNEncodeError

__all__ = [
    "MAGIC_COOKIE",
    "HEADER_LENGTH",
    "FINGERPRINT_XOR",
    "BINDING",
    "REQUEST",
    "INDICATION",
    "SUCCESS",
    "ERROR",
    "STUNDecodeError",
    "STUNEncodeError",
    "messageType",
    "splitMessageType",
    "isSTUN",
    "isClassicSTUN",
    "peekHeader",
    "peekClassicHeader",
]

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

HEADER = struct.Struct("!HHI12s")
PREFIX = struct.Struct("!HHI")
_DEMUX = struct.Struct("!BxHI")









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


#: ``splitMessageType`` remembered per type: on a hit, ``SPLIT_TYPES[msgType]`` is one (specialised) dict
#: lookup where the call costs about 5 % of a whole keepalive-answer decode.  At most 16,384 entries (the type
#: has 14 bits; callers check the two leading bits first).  A plain dict, not a subclass with ``__missing__``:
#: that makes every lookup a slot call.
SPLIT_TYPES: Dict[int, Tuple[int, int]] = {}


def rememberSplit(msgType: int) -> Tuple[int, int]:
    """``splitMessageType(msgType)``, stored in :data:`SPLIT_TYPES` (for a miss there)."""
    split = SPLIT_TYPES[msgType] = splitMessageType(msgType)
    return split


def isSTUN(data: bytes) -> bool:
    """
    RFC 7983 demultiplexing: first byte 0-3, the magic cookie, and a length field that is a multiple of 4
    and accounts for exactly the rest of ``data``.  One struct unpack; never raises.
    """
    if len(data) < HEADER_LENGTH:
        return False
    first, length, cookie = _DEMUX.unpack_from(data)
    return first < 4 and cookie == MAGIC_COOKIE and not length & 3 and length + HEADER_LENGTH == len(data)


def peekHeader(data: bytes) -> Optional[Tuple[int, int, bytes]]:
    """
    ``(method, messageClass, transactionId)`` of a datagram that passes the header checks of ``decode``
    (leading zero bits, cookie, length), else ``None``.  For matching a response to a transaction before (or
    instead of) a full decode.
    """
    if len(data) < HEADER_LENGTH:
        return None
    msgType, length, cookie, tid = HEADER.unpack_from(data)
    if msgType & 0xC000 or cookie != MAGIC_COOKIE or length & 3 or length + HEADER_LENGTH != len(data):
        return None
    try:
        method, messageClass = SPLIT_TYPES[msgType]
    except KeyError:
        method, messageClass = rememberSplit(msgType)
    return method, messageClass, bytes(tid)


# RFC 3489 ("classic STUN") messages: the same header layout, but the 32 bits that RFC 8489 made the magic cookie
# are the first part of a 128-bit transaction ID.  Only the server side asks for these (RFC 8489 §12.2: a server
# SHOULD answer an RFC 3489 Binding request); isSTUN, peekHeader, decode and StreamFramer keep refusing them, so
# the client side still takes only RFC 8489 answers.


def isClassicSTUN(data: bytes) -> bool:
    """
    An RFC 3489 message (§11.1): first byte 0-3 (RFC 7983), *not* the magic cookie, and a length field that is a
    multiple of 4 (every RFC 3489 attribute is) and accounts for exactly the rest of ``data``.  Never raises.
    """
    if len(data) < HEADER_LENGTH:
        return False
    first, length, cookie = _DEMUX.unpack_from(data)
    return first < 4 and cookie != MAGIC_COOKIE and not length & 3 and length + HEADER_LENGTH == len(data)


def peekClassicHeader(data: bytes) -> Optional[Tuple[int, int, bytes]]:
    """
    ``(method, messageClass, transactionId)`` of a datagram that passes :func:`isClassicSTUN` with the two
    leading bits zero, else ``None``.  The transaction ID is RFC 3489's 16 bytes (header bytes 4-20), which a
    response echoes whole (RFC 3489 §11.1, RFC 8489 §12.2).
    """
    if len(data) < HEADER_LENGTH:
        return None
    msgType, length, cookie, tid = HEADER.unpack_from(data)
    if msgType & 0xC000 or cookie == MAGIC_COOKIE or length & 3 or length + HEADER_LENGTH != len(data):
        return None
    try:
        method, messageClass = SPLIT_TYPES[msgType]
    except KeyError:
        method, messageClass = rememberSplit(msgType)
    return method, messageClass, bytes(data[4:HEADER_LENGTH])
