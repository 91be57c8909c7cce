"""
STUN long-term credentials on the client side (RFC 8489 §9.2), sans-IO.

Theory of operation
-------------------
With ``credentialMechanism="long-term"`` the first request to a server carries no credentials (§9.2.3.1: the
client does not know the realm and nonce yet).  The server answers 401 Unauthenticated with REALM and NONCE
(and, from an RFC 8489 server, PASSWORD-ALGORITHMS and a nonce cookie); :meth:`LongTermCredentials.learn`
turns that challenge into a :class:`ServerCredentials`: the realm, the nonce, the chosen password algorithm
(SHA-256 when offered, else MD5, §9.2.5), the key (§9.2.2) and the security features the nonce cookie
advertised.  The transaction table then sends the request again, once, with a new transaction ID, signed
under that key (:func:`signedAttributes`).  A 438 Stale Nonce refreshes the nonce and retries once as well.

The learned state is kept per ``(server, username)`` so later requests to that server (keepalives, the next
resolution) are signed at once; the table is bounded (``maxEntries``, oldest first out).

Bid-down protection (§9.2.1): the nonce cookie ``obMatJos2`` followed by four base64 characters carries 24
security feature bits.  Their numbering follows verified erratum 6290 (bit 0 is the *least* significant, as
the B.1 test vector's ``obMatJos2AAAC`` nonce asking for USERHASH shows): bit 0 (``0x000001``) is "Password
algorithms", bit 1 (``0x000002``) "Username anonymity".  A challenge that sets "Password algorithms" without a
PASSWORD-ALGORITHMS attribute is not retried (§9.2.5: an attacker removed the offer to force MD5).  Once a
server's challenge carried the cookie, a later challenge whose nonce lacks it, or lacks a feature it advertised
before, is refused as well, and what was learned from that server is forgotten: the next request to it starts
over unsigned, so a server that really changed its configuration costs one failed request, never a stuck
client, and an attacker gets no signed request with weaker features out of the client.

Which integrity attribute (§9.2.3.2: "depends on the attribute received"): MESSAGE-INTEGRITY-SHA256 when the
SHA-256 password algorithm was chosen (only an RFC 8489 server offers it, and RFC 8489 servers check
MESSAGE-INTEGRITY-SHA256), else MESSAGE-INTEGRITY.  Sending both is not done: coturn 4.6.1 answers a request
carrying MESSAGE-INTEGRITY-SHA256 with 420 Unknown Attribute, even next to a valid MESSAGE-INTEGRITY.

The table is bounded by :data:`DEFAULT_MAX_CREDENTIALS` (``maxEntries``): servers come from configuration, DNS
and ALTERNATE-SERVER redirects, and a redirect is network input.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Dict, Hashable, List, Optional, Tuple

from . import stun

#: RFC 8489 §9.2.1: the nonce cookie and the feature bits, numbered as verified erratum 6290 has it (bit 0 is
#: the least significant of the 24).
NONCE_COOKIE = "obMatJos2"
FEATURE_PASSWORD_ALGORITHMS = 0x000001
FEATURE_USERNAME_ANONYMITY = 0x000002

#: The default bound of the learned-credentials table: ``(server, username)`` pairs (``LongTermCredentials``).
DEFAULT_MAX_CREDENTIALS = 1024

#: RFC 8489 §14.8: the error codes of the challenge kind.
UNAUTHENTICATED = 401
STALE_NONCE = 438
CHALLENGES = (UNAUTHENTICATED, STALE_NONCE)

#: PASSWORD-ALGORITHM preference: SHA-256 whenever the server offers it (RFC 8489 §9.2.5 takes the first the
#: client supports in the server's list; any listed one is accepted by the server, §9.2.4, and SHA-256 is the
#: stronger).
_PREFERENCE = (stun.PASSWORD_ALGORITHM_SHA256, stun.PASSWORD_ALGORITHM_MD5)


def nonceFeatures(nonce: str) -> Optional[int]:
    """The 24 security feature bits of a nonce that starts with the cookie, else ``None`` (§9.2.1)."""
    if not nonce.startswith(NONCE_COOKIE) or len(nonce) < len(NONCE_COOKIE) + 4:
        return None
    encoded = nonce[len(NONCE_COOKIE) : len(NONCE_COOKIE) + 4]
    try:
        raw = base64.b64decode(encoded.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None
    if len(raw) != 3:
        return None
    return int.from_bytes(raw, "big")


def encodeNonceCookie(features: int, rest: str = "") -> str:
    """A nonce with the cookie and ``features`` (for servers and tests)."""
    return NONCE_COOKIE + binascii.b2a_base64(features.to_bytes(3, "big"), newline=False).decode() + rest


class ServerCredentials:
    """What one server's challenge taught: realm, nonce, algorithm, key, advertised features."""

    __slots__ = ("realm", "nonce", "offered", "algorithm", "features", "key", "username")

    def __init__(self, username: str, realm: str, nonce: str, offered: Optional[Tuple[Tuple[int, bytes], ...]],
                 algorithm: int, features: Optional[int], key: bytes) -> None:
        self.username = username
        self.realm = realm
        self.nonce = nonce
        #: PASSWORD-ALGORITHMS as the server sent it (echoed in the request, §9.2.5), or ``None``.
        self.offered = offered
        self.algorithm = algorithm
        self.features = features
        self.key = key

    @property
    def sha256(self) -> bool:
        return self.algorithm == stun.PASSWORD_ALGORITHM_SHA256

    def signedAttributes(self) -> List[Any]:
        """
        The credential attributes of a request (§9.2.3.2, §9.2.5): USERHASH when the cookie asked for username
        anonymity, else USERNAME; NONCE; REALM; and PASSWORD-ALGORITHMS + PASSWORD-ALGORITHM when offered.
        """
        attributes: List[Any] = []
        if self.features is not None and self.features & FEATURE_USERNAME_ANONYMITY:
            attributes.append(stun.Userhash(stun.userhash(self.username, self.realm)))
        else:
            attributes.append(stun.Username(self.username))
        attributes.append(stun.Nonce(self.nonce))  # RFC 5769 §2.4's order: USERNAME, NONCE, REALM
        attributes.append(stun.Realm(self.realm))
        if self.offered is not None:
            attributes.append(stun.PasswordAlgorithms(self.offered))
            attributes.append(stun.PasswordAlgorithm(self.algorithm))
        return attributes


class LongTermCredentials:
    """The learned state per ``(server, username)``, bounded (``maxEntries``; the oldest goes first)."""

    __slots__ = ("maxEntries", "_entries", "_seenCookie", "_keys", "refused", "evictions")

    def __init__(self, maxEntries: int = DEFAULT_MAX_CREDENTIALS) -> None:
        if maxEntries < 1:
            raise ValueError("maxEntries must be >= 1")
        self.maxEntries = maxEntries
        self._entries: Dict[Tuple[Hashable, str], ServerCredentials] = {}
        #: Servers whose first challenge carried the nonce cookie, with the features it advertised.
        self._seenCookie: Dict[Tuple[Hashable, str], int] = {}
        self._keys: Dict[Tuple[str, str, str, int], bytes] = {}
        #: Challenges not followed (no realm/nonce, bid-down), for the operator.
        self.refused = 0
        #: Entries dropped to stay within ``maxEntries``.
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, server: Hashable, username: str) -> Optional[ServerCredentials]:
        return self._entries.get((server, username))

    def _key(self, username: str, realm: str, password: str, algorithm: int) -> bytes:
        cacheKey = (username, realm, password, algorithm)
        key = self._keys.get(cacheKey)
        if key is None:
            if len(self._keys) >= self.maxEntries:
                self._keys.clear()
            key = self._keys[cacheKey] = stun.longTermKey(username, realm, password, algorithm)
        return key

    def learn(self, server: Hashable, username: str, password: str, message: Any) -> Tuple[Optional[ServerCredentials], str]:
        """
        A 401/438 from ``server``: the state to sign the retry with, or ``(None, why)`` when the challenge must
        not be followed (no REALM or NONCE, no algorithm both sides know, a bid-down, §9.2.1 and §9.2.5).
        """
        realmAttr = message.get(stun.REALM)
        nonceAttr = message.get(stun.NONCE)
        slot = (server, username)
        previous = self._entries.get(slot)
        realm = realmAttr.value if realmAttr is not None else (previous.realm if previous is not None else None)
        if nonceAttr is None or realm is None or not isinstance(realm, str):
            self.refused += 1
            return None, "challenge without REALM and NONCE"
        nonce = nonceAttr.value
        features = nonceFeatures(nonce)
        advertised = self._seenCookie.get(slot)
        if advertised is not None and (features is None or features & advertised != advertised):
            self.refused += 1
            self.forget(server, username)
            return None, "bid-down: the nonce lost security features the server advertised before"
        offeredAttr = message.get(stun.PASSWORD_ALGORITHMS)
        if features is not None and features & FEATURE_PASSWORD_ALGORITHMS and offeredAttr is None:
            self.refused += 1
            return None, "bid-down: password algorithms advertised but PASSWORD-ALGORITHMS missing"
        offered: Optional[Tuple[Tuple[int, bytes], ...]] = None
        algorithm = stun.PASSWORD_ALGORITHM_MD5
        if offeredAttr is not None:  # §9.2.5: echoed as sent, and PASSWORD-ALGORITHM chosen from it
            offered = tuple(offeredAttr.algorithms)
            known = [a for a in _PREFERENCE if any(o[0] == a for o in offered)]
            if not known:
                self.refused += 1
                return None, "no offered password algorithm is known"
            algorithm = known[0]
        elif (message.errorCode or (0, ""))[0] == STALE_NONCE and previous is not None and previous.offered:
            # A 438 without the offer (§9.2.4 has the server repeat it): keep the algorithm agreed, no MD5 downgrade.
            offered, algorithm = previous.offered, previous.algorithm
        if advertised is None and features is not None:
            self._seenCookie[slot] = features
        state = ServerCredentials(username, realm, nonce, offered, algorithm, features,
                                  self._key(username, realm, password, algorithm))
        entries = self._entries
        entries.pop(slot, None)
        if len(entries) >= self.maxEntries:
            oldest = next(iter(entries))
            del entries[oldest]
            self._seenCookie.pop(oldest, None)
            self.evictions += 1
        entries[slot] = state
        return state, ""

    def forget(self, server: Hashable, username: str) -> None:
        """Drop what ``server`` taught (its next request goes out unsigned, as a first one)."""
        self._entries.pop((server, username), None)
        self._seenCookie.pop((server, username), None)
