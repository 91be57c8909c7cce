"""
Forged STUN responses for the spoofing tests: each takes the genuine request the controller sent, the
address it went to and the key (``None`` without credentials), and returns ``(datagram, source, onOtherSocket)``
-- the bytes an attacker sends, where from, and whether they arrive on another socket of the same controller.
Every forgery reports ``EVIL`` as the public address.
"""

from __future__ import annotations

import struct
import zlib
from typing import Callable, Dict, Optional, Tuple

from twisted_sipnat import stun
from twisted_sipnat.testing import bindingResponse

EVIL = ("6.6.6.6", 666)
HostPort = Tuple[str, int]
Forgery = Callable[[stun.Message, HostPort, Optional[bytes]], Tuple[bytes, HostPort, bool]]


def refingerprint(data: bytes) -> bytes:
    """Append a correct FINGERPRINT to ``data`` (which has none), fixing the header length first."""
    data = data[:2] + struct.pack("!H", len(data) - 20 + 8) + data[4:]
    return data + struct.pack("!HHI", stun.FINGERPRINT, 4, (zlib.crc32(data) ^ 0x5354554E) & 0xFFFFFFFF)


def _wrongTid(request: stun.Message, server: HostPort, key: Optional[bytes]) -> Tuple[bytes, HostPort, bool]:
    tid = bytes(b ^ 0x01 for b in request.transactionId)
    return bindingResponse(request, EVIL, key=key, transactionId=tid), server, False


def _wrongIP(request: stun.Message, server: HostPort, key: Optional[bytes]) -> Tuple[bytes, HostPort, bool]:
    return bindingResponse(request, EVIL, key=key), ("198.51.100.99", server[1]), False


def _wrongPort(request: stun.Message, server: HostPort, key: Optional[bytes]) -> Tuple[bytes, HostPort, bool]:
    return bindingResponse(request, EVIL, key=key), (server[0], server[1] + 1), False


def _badFingerprint(request: stun.Message, server: HostPort, key: Optional[bytes]) -> Tuple[bytes, HostPort, bool]:
    return bindingResponse(request, EVIL, key=key, corruptFingerprint=True), server, False


def _otherSocket(request: stun.Message, server: HostPort, key: Optional[bytes]) -> Tuple[bytes, HostPort, bool]:
    return bindingResponse(request, EVIL, key=key), server, True


def _disguisedRequest(request: stun.Message, server: HostPort, key: Optional[bytes]) -> Tuple[bytes, HostPort, bool]:
    forged = stun.Message(stun.BINDING, stun.REQUEST, request.transactionId, [stun.XorMappedAddress(*EVIL)])
    return forged.encode(key=key), server, False


def _indication(request: stun.Message, server: HostPort, key: Optional[bytes]) -> Tuple[bytes, HostPort, bool]:
    forged = stun.Message(stun.BINDING, stun.INDICATION, request.transactionId, [stun.XorMappedAddress(*EVIL)])
    return forged.encode(key=key), server, False


def _otherMethod(request: stun.Message, server: HostPort, key: Optional[bytes]) -> Tuple[bytes, HostPort, bool]:
    forged = stun.Message(0x003, stun.SUCCESS, request.transactionId, [stun.XorMappedAddress(*EVIL)])  # Allocate
    return forged.encode(key=key), server, False


def _truncated(request: stun.Message, server: HostPort, key: Optional[bytes]) -> Tuple[bytes, HostPort, bool]:
    """Right header and ID, an attribute that overruns the message: undecodable."""
    data = bytearray(bindingResponse(request, EVIL, key=key, fingerprint=False))
    data[22:24] = struct.pack("!H", 400)  # first attribute's length
    return bytes(data), server, False


def _missingIntegrity(request: stun.Message, server: HostPort, key: Optional[bytes]) -> Tuple[bytes, HostPort, bool]:
    return bindingResponse(request, EVIL), server, False


def _wrongKey(request: stun.Message, server: HostPort, key: Optional[bytes]) -> Tuple[bytes, HostPort, bool]:
    return bindingResponse(request, EVIL, key=stun.shortTermKey("not the password")), server, False


def _tamperedBody(request: stun.Message, server: HostPort, key: Optional[bytes]) -> Tuple[bytes, HostPort, bool]:
    """A genuinely signed answer whose XOR-MAPPED-ADDRESS is then rewritten (FINGERPRINT recomputed)."""
    genuine = bindingResponse(request, ("203.0.113.1", 40000), key=key or b"k", fingerprint=False)
    evil = stun.XorMappedAddress(*EVIL).encodeValue(request.transactionId)
    data = genuine[:24] + evil + genuine[24 + len(evil) :]  # XOR-MAPPED-ADDRESS is the first attribute
    return refingerprint(data), server, False


def _appendedAfterIntegrity(
    request: stun.Message, server: HostPort, key: Optional[bytes]
) -> Tuple[bytes, HostPort, bool]:
    """A genuinely signed answer carrying only MAPPED-ADDRESS, plus an XOR-MAPPED-ADDRESS added after the
    MESSAGE-INTEGRITY (not covered by it): the unauthenticated address must not be used."""
    signed = stun.Message(stun.BINDING, stun.SUCCESS, request.transactionId,
                          [stun.MappedAddress("203.0.113.1", 40000)]).encode(key=key or b"k", fingerprint=False)
    evil = stun.XorMappedAddress(*EVIL)
    value = evil.encodeValue(request.transactionId)
    data = signed + struct.pack("!HH", evil.type, len(value)) + value
    return refingerprint(data), server, False


def _sha256WrongKey(request: stun.Message, server: HostPort, key: Optional[bytes]) -> Tuple[bytes, HostPort, bool]:
    data = stun.Message(stun.BINDING, stun.SUCCESS, request.transactionId, [stun.XorMappedAddress(*EVIL)]).encode(
        key=stun.shortTermKey("not the password"), sha256=True)
    return data, server, False


#: Forgeries that must fail with or without credentials.
ALWAYS: Dict[str, Forgery] = {
    "wrong transaction ID": _wrongTid,
    "wrong source IP": _wrongIP,
    "wrong source port": _wrongPort,
    "bad FINGERPRINT": _badFingerprint,
    "response on another socket": _otherSocket,
    "STUN request disguised as the answer": _disguisedRequest,
    "indication with the transaction ID": _indication,
    "success of another method (Allocate)": _otherMethod,
    "undecodable body with the right header": _truncated,
}

#: Forgeries that only credentials (MESSAGE-INTEGRITY) can stop.
WITH_CREDENTIALS: Dict[str, Forgery] = {
    "no MESSAGE-INTEGRITY": _missingIntegrity,
    "MESSAGE-INTEGRITY with the wrong key": _wrongKey,
    "MESSAGE-INTEGRITY-SHA256 with the wrong key": _sha256WrongKey,
    "body tampered after signing (FINGERPRINT fixed up)": _tamperedBody,
}

ALL: Dict[str, Forgery] = {**ALWAYS, **WITH_CREDENTIALS}

#: Which of the controller's counters each forgery must land in: the one check it violates.
DROPPED_AS: Dict[str, str] = {
    "wrong transaction ID": "stun.dropped.unmatched",
    "wrong source IP": "stun.dropped.wrong-source",
    "wrong source port": "stun.dropped.wrong-source",
    "bad FINGERPRINT": "stun.dropped.bad-fingerprint",
    "response on another socket": "stun.dropped.wrong-socket",
    "STUN request disguised as the answer": "",  # not for the controller at all: dataReceived returns False
    "indication with the transaction ID": "stun.indications",
    "success of another method (Allocate)": "stun.dropped.not-binding",
    "undecodable body with the right header": "stun.dropped.malformed",
    "no MESSAGE-INTEGRITY": "stun.dropped.bad-integrity",
    "MESSAGE-INTEGRITY with the wrong key": "stun.dropped.bad-integrity",
    "MESSAGE-INTEGRITY-SHA256 with the wrong key": "stun.dropped.bad-integrity",
    "body tampered after signing (FINGERPRINT fixed up)": "stun.dropped.bad-integrity",
}
