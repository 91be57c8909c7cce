"""
The fast path for keepalives: a Binding request built from a cached template (RFC 8489 §6, §14.5, §14.7).

A client keeping many flows alive sends the same request again and again with only the transaction ID new;
:func:`encodeBindingRequest` computes just that, the HMAC and the CRC per call, and is byte-identical to
``Message(...).encode(...)`` (a property test checks it).
"""

from __future__ import annotations

import zlib
from typing import Dict, List, NamedTuple, Optional, Tuple

from twisted_sipnat.core.stun.attributes import FINGERPRINT, MESSAGE_INTEGRITY, Attribute, Software, Username
from twisted_sipnat.core.stun.header import (
    BINDING,
    FINGERPRINT_XOR,
    HEADER_LENGTH,
    MAGIC_COOKIE,
    PREFIX,
    REQUEST,
    STUNEncodeError,
    messageType,
)
from twisted_sipnat.core.stun.keys import hmacDigest as _hmac
from twisted_sipnat.core.stun.message import Message
from twisted_sipnat.core.stun.shapes import TLV, U32

__all__ = ["encodeBindingRequest"]

# Module-level names for the imported structs (and the IPv4 name cache): CPython 3.11 compiles ``X.f()``
# on a name bound by an import as an attribute load that makes a bound method per call, not LOAD_METHOD.
_PREFIX = PREFIX
_TLV = TLV
_U32 = U32

_MI_TLV = _TLV.pack(MESSAGE_INTEGRITY, 20)
_FP_TLV = _TLV.pack(FINGERPRINT, 4)



class _Template(NamedTuple):
    signPrefix: bytes  # header up to the cookie, length covering MESSAGE-INTEGRITY
    finalPrefix: bytes  # header up to the cookie, final length
    body: bytes
    integrityTLV: bytes


_templates: Dict[Tuple[Optional[str], Optional[str], Optional[bytes], bool], _Template] = {}
_BINDING_REQUEST = messageType(BINDING, REQUEST)


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


