"""
STUN credentials (RFC 8489 §9): key derivation, string preparation (RFC 8265), USERHASH, and the HMAC that
MESSAGE-INTEGRITY and MESSAGE-INTEGRITY-SHA256 use (RFC 8489 §14.5, §14.6).
"""

from __future__ import annotations

import hashlib
import unicodedata
from typing import Dict, Tuple

__all__ = [
    "PASSWORD_ALGORITHM_MD5",
    "PASSWORD_ALGORITHM_SHA256",
    "opaqueString",
    "shortTermKey",
    "longTermKey",
    "userhash",
]

#: PASSWORD-ALGORITHM values (RFC 8489 §18.5).
PASSWORD_ALGORITHM_MD5 = 0x0001
PASSWORD_ALGORITHM_SHA256 = 0x0002

_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
_HASHES = {"sha1": hashlib.sha1, "sha256": hashlib.sha256}
_pads: Dict[Tuple[bytes, str], Tuple[hashlib._Hash, hashlib._Hash]] = {}


def hmacDigest(key: bytes, data: bytes, algorithm: str) -> bytes:
    """
    HMAC (RFC 2104) with the keyed inner and outer hash states cached per key.

    Same result as ``hmac.digest``, about three times faster for short messages, because OpenSSL's HMAC
    setup dominates the cost of signing an 80-byte STUN message.  The cache holds at most 1024 keys.
    """
    key = bytes(key)  # a bytearray key would be unhashable in the cache
    pads = _pads.get((key, algorithm))
    if pads is None:
        ctor = _HASHES[algorithm]
        block = key if len(key) <= 64 else ctor(key).digest()
        block = block.ljust(64, b"\0")
        pads = (ctor(block.translate(_IPAD)), ctor(block.translate(_OPAD)))
        if len(_pads) >= 1024:
            _pads.clear()
        _pads[(key, algorithm)] = pads
    inner = pads[0].copy()
    inner.update(data)
    outer = pads[1].copy()
    outer.update(inner.digest())
    return outer.digest()


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
