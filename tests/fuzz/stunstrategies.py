"""
Hypothesis strategies for STUN-shaped bytes: random bytes, the RFC 5769 vectors mutated, and messages built
from random TLVs with a valid header (so the fuzzer gets past the header checks into attribute parsing).
"""

from __future__ import annotations

import struct
import zlib
from typing import List

from hypothesis import strategies as st

from tests.data import rfc5769Messages
from twisted_sipnat import stun


def vectorSeeds() -> List[bytes]:
    """The RFC 5769 §2 messages, from the tests' own copy (tests/data/rfc5769.json)."""
    return rfc5769Messages()


SEEDS = vectorSeeds()

#: Attribute types worth hitting: every one the codec knows (RFC 3489's reserved ones too), plus unknown
#: required/optional ones.
KNOWN_TYPES = [
    stun.MAPPED_ADDRESS, stun.USERNAME, stun.MESSAGE_INTEGRITY, stun.ERROR_CODE, stun.UNKNOWN_ATTRIBUTES,
    stun.REALM, stun.NONCE, stun.PASSWORD_ALGORITHM, stun.USERHASH, stun.XOR_MAPPED_ADDRESS,
    stun.PASSWORD_ALGORITHMS, stun.ALTERNATE_DOMAIN, stun.SOFTWARE, stun.ALTERNATE_SERVER, stun.FINGERPRINT,
    stun.CHANGE_REQUEST, stun.PADDING, stun.RESPONSE_PORT, stun.RESPONSE_ORIGIN, stun.OTHER_ADDRESS,
    stun.MESSAGE_INTEGRITY_SHA256, *sorted(stun.RFC3489_RESERVED), 0x7FFF, 0xFFFF, 0x0000,
]


@st.composite
def mutatedVector(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.integers(0, 4))
        if kind == 0 and data:  # flip bits in one byte
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
        elif kind == 1:  # truncate
            data = data[: draw(st.integers(0, len(data)))]
        elif kind == 2:  # insert bytes
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(max_size=12))
        elif kind == 3 and len(data) >= 4:  # overwrite a 16-bit field (types, lengths)
            i = draw(st.integers(0, len(data) - 2))
            data[i : i + 2] = struct.pack("!H", draw(st.integers(0, 0xFFFF)))
        else:  # keep the header's length field consistent with what is there now
            if len(data) >= 20:
                body = len(data) - 20
                data[2:4] = struct.pack("!H", body & 0xFFFF)
    return bytes(data)


@st.composite
def tlv(draw: st.DrawFn) -> bytes:
    atype = draw(st.one_of(st.sampled_from(KNOWN_TYPES), st.integers(0, 0xFFFF)))
    value = draw(st.binary(max_size=40))
    declared = draw(st.one_of(st.just(len(value)), st.integers(0, 0xFFFF)))
    padding = b"\x00" * (-len(value) & 3) if draw(st.booleans()) else b""
    return struct.pack("!HH", atype, declared & 0xFFFF) + value + padding


@st.composite
def builtMessage(draw: st.DrawFn) -> bytes:
    """A consistent header (cookie, length) around random TLVs, optionally with a correct FINGERPRINT."""
    msgType = draw(st.one_of(st.sampled_from([0x0001, 0x0011, 0x0101, 0x0111]), st.integers(0, 0x3FFF)))
    tid = draw(st.binary(min_size=12, max_size=12))
    body = b"".join(draw(st.lists(tlv(), max_size=6)))
    body += b"\x00" * (-len(body) & 3)
    fingerprint = draw(st.booleans())
    length = len(body) + (8 if fingerprint else 0)
    data = struct.pack("!HHI12s", msgType, length & 0xFFFF, stun.MAGIC_COOKIE, tid) + body
    if fingerprint:
        crc = (zlib.crc32(data) ^ 0x5354554E) & 0xFFFFFFFF
        data += struct.pack("!HHI", stun.FINGERPRINT, 4, crc)
    return data


stunLike = st.one_of(st.binary(max_size=200), mutatedVector(), builtMessage())
