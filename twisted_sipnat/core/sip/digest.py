"""
SIP digest authentication for the client role, sans-IO (RFC 3261 §22.2, §22.4; RFC 2617 / RFC 7616 ``qop=auth``;
RFC 8760 SHA-256).

Why pure: the hashing, the parsing of a challenge off the wire and the decision "retry or give up" are protocol
rules that must hold against hostile input (a forged 401 must not make the UA loop, a huge challenge must not
cost more than a bounded amount); kept free of I/O they are tested against the RFC vectors and with hypothesis.

- :func:`parseChallenge`: one ``WWW-Authenticate`` / ``Proxy-Authenticate`` value as a :class:`Challenge`;
  bounded (:data:`MAX_CHALLENGE_LENGTH`, :data:`MAX_PARAMS`), raising :class:`SIPParseError` and only that.
- :func:`digestResponse`: the ``response`` value of RFC 7616 §3.4.1 (RFC 2617 §3.2.2.1 for MD5), with the
  ``-sess`` variants, and RFC 2069 compatibility when the server offered no ``qop``.
- :func:`authorizationValue`: the ``Authorization`` / ``Proxy-Authorization`` value (RFC 3261 §22.4).
- :class:`Authenticator`: one UA's credentials and the challenges it has seen, keyed by the header they answer;
  it counts ``nc`` per nonce (RFC 7616 §3.4), makes a fresh ``cnonce`` for each request (from an injected
  source of randomness), and decides what a 401/407 means: retry once with credentials, retry with the new nonce
  on ``stale=true`` without counting it as a failure (RFC 7616 §3.3), else give up (RFC 3261 §22.2: a second
  challenge for the same credentials means they are wrong).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from .error import SIPParseError
from .headers import isToken, splitTopLevel
from .message import Request, Response

__all__ = [
    "ALGORITHMS",
    "MAX_CHALLENGE_LENGTH",
    "MAX_PARAMS",
    "MAX_STALE_RETRIES",
    "AuthFailed",
    "Authenticator",
    "Challenge",
    "Credentials",
    "authorizationValue",
    "digestResponse",
    "parseChallenge",
]

#: RFC 7616 §6.1 / RFC 8760 §2.2: the algorithms a SIP UA may meet, by name, and their hash; ``-sess`` variants
#: hash the same way.  Preference, when a response offers several challenges for one realm, is the server's
#: order (RFC 8760 §2.4: the topmost the UA supports).
ALGORITHMS: Dict[str, Callable[[bytes], str]] = {
    "MD5": lambda data: hashlib.md5(data, usedforsecurity=False).hexdigest(),
    "SHA-256": lambda data: hashlib.sha256(data).hexdigest(),
}

#: A challenge value longer than this (characters) is refused: a real one is a few hundred.
MAX_CHALLENGE_LENGTH = 4096
#: Parameters of one challenge at most.
MAX_PARAMS = 32
#: Challenges read from one response at most (RFC 8760 §2.4 has a server list one per algorithm).
MAX_CHALLENGES = 8
#: ``stale=true`` retries in a row, at most, before a registration gives up: a server (or a forger) answering
#: every request with a stale nonce must not make the UA loop.
MAX_STALE_RETRIES = 3


@dataclass(frozen=True)
class Challenge:
    """One digest challenge (RFC 7616 §3.3): the fields the UA answers with."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: Tuple[str, ...] = ()
    opaque: Optional[str] = None
    stale: bool = False

    @property
    def baseAlgorithm(self) -> str:
        """The hash name without ``-sess``."""
        upper = self.algorithm.upper()
        return upper[: -len("-SESS")] if upper.endswith("-SESS") else upper

    @property
    def supported(self) -> bool:
        """Whether this UA can answer it: a known algorithm, and ``qop`` absent or offering ``auth``."""
        return self.baseAlgorithm in ALGORITHMS and (not self.qop or "auth" in self.qop)


@dataclass(frozen=True)
class Credentials:
    """A user's digest credentials (RFC 3261 §22.4: ``username`` and the shared secret)."""

    username: str
    password: str = field(repr=False)


def _unquoted(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        body = text[1:-1]
        out: List[str] = []
        i = 0
        while i < len(body):
            if body[i] == "\\" and i + 1 < len(body):
                i += 1
            out.append(body[i])
            i += 1
        return "".join(out)
    if '"' in text:
        raise SIPParseError(f"badly quoted value {text[:40]!r}")
    return text


def parseChallenge(value: str) -> Challenge:
    """
    ``Digest realm="...", nonce="...", ...`` as a :class:`Challenge` (RFC 3261 §25.1 ``challenge``; RFC 7616
    §3.3).  Raises :class:`SIPParseError` when it is not a digest challenge, is malformed, misses ``realm`` or
    ``nonce``, or is over the bounds.
    """
    if len(value) > MAX_CHALLENGE_LENGTH:
        raise SIPParseError(f"a challenge of {len(value)} characters (at most {MAX_CHALLENGE_LENGTH})")
    text = value.strip()
    scheme, _, rest = text.partition(" ")
    if scheme.lower() != "digest":
        raise SIPParseError(f"not a Digest challenge: {scheme[:20]!r}")
    params: Dict[str, str] = {}
    pieces = splitTopLevel(rest, ",")
    if len(pieces) > MAX_PARAMS:
        raise SIPParseError(f"{len(pieces)} challenge parameters (at most {MAX_PARAMS})")
    for piece in pieces:
        name, eq, raw = piece.partition("=")
        name = name.strip().lower()
        if not eq or not isToken(name):
            raise SIPParseError(f"bad challenge parameter {piece[:40]!r}")
        params.setdefault(name, _unquoted(raw.strip()))
    if "realm" not in params or "nonce" not in params:
        raise SIPParseError("a Digest challenge without realm or nonce (RFC 7616 §3.3)")
    qop = tuple(q.strip().lower() for q in params["qop"].split(",") if q.strip()) if "qop" in params else ()
    return Challenge(
        realm=params["realm"],
        nonce=params["nonce"],
        algorithm=params.get("algorithm", "MD5"),
        qop=qop,
        opaque=params.get("opaque"),
        stale=params.get("stale", "").lower() == "true",
    )


def digestResponse(challenge: Challenge, credentials: Credentials, method: str, uri: str,
                   nc: int, cnonce: str) -> str:
    """
    The ``response`` value (RFC 7616 §3.4.1; RFC 2617 §3.2.2.1): ``H(A1)``, with ``-sess`` ``H(H(A1):nonce:
    cnonce)``, ``A2 = method:uri`` (``qop=auth``), and ``H(HA1:nonce:nc:cnonce:qop:HA2)``, or without ``qop``
    the RFC 2069 ``H(HA1:nonce:HA2)``.
    """
    h = ALGORITHMS[challenge.baseAlgorithm]
    ha1 = h(f"{credentials.username}:{challenge.realm}:{credentials.password}".encode())
    if challenge.algorithm.upper().endswith("-SESS"):
        ha1 = h(f"{ha1}:{challenge.nonce}:{cnonce}".encode())
    ha2 = h(f"{method}:{uri}".encode())
    if "auth" in challenge.qop:
        return h(f"{ha1}:{challenge.nonce}:{nc:08x}:{cnonce}:auth:{ha2}".encode())
    return h(f"{ha1}:{challenge.nonce}:{ha2}".encode())


def _quoted(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def authorizationValue(challenge: Challenge, credentials: Credentials, method: str, uri: str,
                       nc: int, cnonce: str) -> str:
    """The ``Authorization`` / ``Proxy-Authorization`` header value answering ``challenge`` (RFC 3261 §22.4)."""
    response = digestResponse(challenge, credentials, method, uri, nc, cnonce)
    parts = [
        f"username={_quoted(credentials.username)}",
        f"realm={_quoted(challenge.realm)}",
        f"nonce={_quoted(challenge.nonce)}",
        f"uri={_quoted(uri)}",
        f"response={_quoted(response)}",
        f"algorithm={challenge.algorithm}",
    ]
    if "auth" in challenge.qop:
        parts += [f"cnonce={_quoted(cnonce)}", "qop=auth", f"nc={nc:08x}"]
    if challenge.opaque is not None:
        parts.append(f"opaque={_quoted(challenge.opaque)}")
    return "Digest " + ", ".join(parts)


#: The header a challenge arrives in, by the response code, and the header that answers it (RFC 3261 §22.2,
#: §22.3).
CHALLENGE_HEADERS = {401: ("WWW-Authenticate", "Authorization"), 407: ("Proxy-Authenticate", "Proxy-Authorization")}


@dataclass(frozen=True)
class AuthFailed:
    """The challenge cannot be answered (any more): the registration fails with :attr:`code` and :attr:`why`."""

    code: int
    why: str


class Authenticator:
    """
    What one UA answers digest challenges with (module docstring): call :meth:`challenged` with each 401/407
    final response, :meth:`headers` for each request, :meth:`succeeded` with each 2xx, :meth:`restart` at the
    start of each new registration (a refresh, a re-registration after a failure).

    The retry rule, per answering header (RFC 3261 §22.2): the first challenge of a registration is answered;
    a second one that is not ``stale=true`` means the credentials are wrong, and :meth:`challenged` returns an
    :class:`AuthFailed`; ``stale=true`` is answered with the new nonce, not counted, at most
    :data:`MAX_STALE_RETRIES` times in a row.  Challenges are kept after a 2xx, so refreshes carry credentials
    from the start (RFC 3261 §22.3), with ``nc`` counting on for the same nonce.

    ``cnonce`` is a callable returning a fresh client nonce (the shell passes ``secrets.token_hex``-based
    randomness; tests a counter).
    """

    def __init__(self, credentials: Optional[Credentials], cnonce: Callable[[], str]) -> None:
        self.credentials = credentials
        self._cnonce = cnonce
        #: The challenge answered in each header (``Authorization``, ``Proxy-Authorization``).
        self.challenges: Dict[str, Challenge] = {}
        #: ``nc`` per nonce (RFC 7616 §3.4: the count of requests sent with that nonce).
        self._counts: Dict[str, int] = {}
        self._answered: Dict[str, int] = {}
        self._stale = 0

    def restart(self) -> None:
        """A new registration begins: its first non-stale challenge may be answered again."""
        self._answered.clear()
        self._stale = 0

    def succeeded(self) -> None:
        """A 2xx: the credentials worked; the next challenge (a refresh's) starts afresh."""
        self.restart()

    def challenged(self, response: Response) -> Optional[AuthFailed]:
        """
        A 401 or 407: ``None`` when the request should be sent again (:meth:`headers` then answers the new
        challenge), else the :class:`AuthFailed` that ends the registration.
        """
        code = response.code
        if code not in CHALLENGE_HEADERS:
            return AuthFailed(code, f"{code} is not a challenge")
        challengeHeader, answerHeader = CHALLENGE_HEADERS[code]
        if self.credentials is None:
            return AuthFailed(code, f"{response.reason} (the registrar asks for credentials: give --user and a password)")
        chosen: Optional[Challenge] = None
        for value in response.headers.getAll(challengeHeader)[:MAX_CHALLENGES]:
            try:
                challenge = parseChallenge(value)
            except SIPParseError:
                continue
            if challenge.supported:
                chosen = challenge
                break
        if chosen is None:
            return AuthFailed(code, f"{response.reason} (no {challengeHeader} digest challenge this UA can answer)")
        if chosen.stale:
            self._stale += 1
            if self._stale > MAX_STALE_RETRIES:
                return AuthFailed(code, f"{response.reason} (stale nonce {self._stale} times in a row)")
        else:
            self._stale = 0
            self._answered[answerHeader] = self._answered.get(answerHeader, 0) + 1
            if self._answered[answerHeader] > 1:
                return AuthFailed(code, f"{response.reason} (credentials for {self.credentials.username!r} refused)")
        self.challenges[answerHeader] = chosen
        # nc is kept for the nonces in use only: the table is bounded by the two answering headers
        self._counts = {c.nonce: self._counts.get(c.nonce, 0) for c in self.challenges.values()}
        return None

    def headers(self, request: Request) -> List[Tuple[str, str]]:
        """The credential headers for ``request`` (RFC 3261 §22.4): one per challenge held, ``nc`` counting up."""
        if self.credentials is None:
            return []
        out: List[Tuple[str, str]] = []
        for name, challenge in self.challenges.items():
            nc = self._counts.get(challenge.nonce, 0) + 1
            self._counts[challenge.nonce] = nc
            out.append((name, authorizationValue(challenge, self.credentials, request.method, request.uri,
                                                 nc, self._cnonce())))
        return out
