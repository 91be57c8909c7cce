"""
SIP and SIPS URIs (RFC 3261 §19.1) as a value type, with the equality rules of RFC 3261 §19.1.4.

A registrar compares Contact URIs to find the binding a REGISTER refreshes or removes; Twisted's ``sip.URL``
has no equality, which is how a de-registration came to match nothing.  :class:`SIPURI` compares as §19.1.4
says:

- ``sip`` and ``sips`` never match; the scheme and host are case-insensitive, the user and password are not;
- an escaped character that is not reserved equals the character itself (``%61lice`` is ``alice``);
- an omitted port does not match an explicit one, not even 5060;
- a ``user``, ``ttl``, ``method``, ``maddr`` or ``transport`` parameter must be in both or in neither
  (§19.1.4 lists ``transport`` in its examples of URIs that differ: they can resolve to other transports);
  other parameters are compared only when both have them, case-insensitively;
- URI headers (``?h=v``) must all be in both.

Host names are compared as text, never resolved; IPv6 literals in RFC 5952 form
(:func:`twisted_sipnat.core.addresses.normalHost`), so ``[2001:DB8::1]`` and ``[2001:db8:0::1]`` match.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Optional, Tuple

from twisted_sipnat.core.addresses import normalHost

from .error import SIPParseError

__all__ = ["SIPURI", "Param", "formatParams", "parseParams"]

Param = Tuple[str, Optional[str]]

_RESERVED = frozenset(";/?:@&=+$,")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
# RFC 3261 §25.1 hostname / IPv4address; IPv6 is checked by ipaddress.
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9])?\.?")
_PORT = re.compile(r"[0-9]{1,5}")
# Characters no part of a URI may hold raw: space, controls, and what delimits a URI in a header.
_FORBIDDEN = re.compile(r'[\x00-\x20\x7f<>"]')
# Compared only when present in both... unless named here (RFC 3261 §19.1.4).
_MUST_MATCH = ("user", "ttl", "method", "maddr", "transport")


def _unescape(text: str) -> str:
    """Decode ``%XX`` escapes of unreserved characters (RFC 3261 §19.1.4); reserved ones stay escaped."""
    if "%" not in text:
        return text

    def one(match: re.Match[str]) -> str:
        ch = chr(int(match.group(1), 16))
        return match.group(0).upper() if ch in _RESERVED else ch

    return _ESCAPE.sub(one, text)


def parseParams(text: str, where: str) -> Tuple[Param, ...]:
    """``;name=value;flag`` (the leading ``;`` already removed) into ``(name, value or None)`` pairs."""
    params = []
    for piece in text.split(";"):
        name, eq, value = piece.partition("=")
        name = name.strip()
        if not name:
            raise SIPParseError(f"empty parameter name in {where}")
        params.append((name, value.strip() if eq else None))
    return tuple(params)


def formatParams(params: Tuple[Param, ...]) -> str:
    return "".join(f";{n}" if v is None else f";{n}={v}" for n, v in params)


def _lookup(params: Tuple[Param, ...], name: str) -> Tuple[bool, Optional[str]]:
    lowered = name.lower()
    for n, v in params:
        if n.lower() == lowered:
            return True, v
    return False, None


@dataclass(frozen=True, eq=False)
class SIPURI:
    """
    A ``sip:`` or ``sips:`` URI (RFC 3261 §19.1.1): ``scheme`` in lower case, ``user`` / ``password`` as
    written (escapes kept), ``host`` without the IPv6 brackets, ``port`` (``None`` when omitted), ``params``
    (``;name[=value]``, in order) and ``headers`` (``?name=value&...``, in order).
    """

    scheme: str
    host: str
    user: Optional[str] = None
    password: Optional[str] = None
    port: Optional[int] = None
    params: Tuple[Param, ...] = ()
    headers: Tuple[Tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> SIPURI:
        """Parse a SIP or SIPS URI; anything else raises :class:`SIPParseError`."""
        text = text.strip()
        scheme, colon, rest = text.partition(":")
        scheme = scheme.lower()
        if not colon or scheme not in ("sip", "sips"):
            raise SIPParseError(f"not a SIP URI: {text[:80]!r}")
        if _FORBIDDEN.search(rest):
            raise SIPParseError(f"forbidden character in URI {text[:80]!r}")
        user: Optional[str] = None
        password: Optional[str] = None
        at = rest.find("@")
        if at >= 0:
            userinfo, rest = rest[:at], rest[at + 1 :]
            user, colon, pw = userinfo.partition(":")
            password = pw if colon else None
            if not user:
                raise SIPParseError(f"empty user part in URI {text[:80]!r}")
        rest, question, headerText = rest.partition("?")
        hostport, semi, paramText = rest.partition(";")
        host, port = _hostPort(hostport, text)
        params = parseParams(paramText, "URI") if semi else ()
        headers: Tuple[Tuple[str, str], ...] = ()
        if question:
            pairs = []
            for piece in headerText.split("&"):
                name, _, value = piece.partition("=")
                if not name:
                    raise SIPParseError(f"empty header name in URI {text[:80]!r}")
                pairs.append((name, value))
            headers = tuple(pairs)
        return cls(scheme, host, user, password, port, params, headers)

    def __str__(self) -> str:
        userinfo = ""
        if self.user is not None:
            userinfo = self.user + (f":{self.password}" if self.password is not None else "") + "@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port is not None else ""
        headers = "?" + "&".join(f"{n}={v}" for n, v in self.headers) if self.headers else ""
        return f"{self.scheme}:{userinfo}{host}{port}{formatParams(self.params)}{headers}"

    def param(self, name: str) -> Optional[str]:
        """The value of URI parameter ``name`` (case-insensitive); ``None`` when absent or a bare flag."""
        return _lookup(self.params, name)[1]

    def hasParam(self, name: str) -> bool:
        """Whether URI parameter ``name`` is present (``;ob``, ``;lr`` are flags without a value)."""
        return _lookup(self.params, name)[0]

    @property
    def transport(self) -> Optional[str]:
        """The ``transport`` parameter in lower case (RFC 3261 §19.1.1), or ``None``."""
        value = self.param("transport")
        return value.lower() if value is not None else None

    def _key(self) -> Tuple[object, ...]:
        return (
            self.scheme,
            _unescape(self.user) if self.user is not None else None,
            _unescape(self.password) if self.password is not None else None,
            normalHost(_unescape(self.host).lower()),
            self.port,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SIPURI):
            return NotImplemented
        if self._key() != other._key():
            return False
        mine = {n.lower(): v for n, v in self.params}
        theirs = {n.lower(): v for n, v in other.params}
        for name in set(mine) | set(theirs):
            if name in mine and name in theirs:
                a, b = mine[name], theirs[name]
                if (a is None) != (b is None) or _unescape(a or "").lower() != _unescape(b or "").lower():
                    return False
            elif name in _MUST_MATCH:
                return False
        return _headerSet(self) == _headerSet(other)

    def __hash__(self) -> int:
        return hash(self._key())


def _headerSet(uri: SIPURI) -> frozenset[Tuple[str, str]]:
    return frozenset((n.lower(), _unescape(v)) for n, v in uri.headers)


def _hostPort(text: str, whole: str) -> Tuple[str, Optional[int]]:
    """RFC 3261 §25.1 ``hostport``: a host name, IPv4 address or ``[IPv6]``, then an optional ``:port``."""
    portText: Optional[str] = None
    if text.startswith("["):
        host, bracket, tail = text[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise SIPParseError(f"bad IPv6 reference in URI {whole[:80]!r}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise SIPParseError(f"bad IPv6 address in URI {whole[:80]!r}") from None
        portText = tail[1:] if tail else None
    else:
        host, colon, portText_ = text.partition(":")
        portText = portText_ if colon else None
        if not _HOSTNAME.fullmatch(host):
            raise SIPParseError(f"bad host in URI {whole[:80]!r}")
    if portText is not None:
        if not _PORT.fullmatch(portText) or int(portText) > 65535:
            raise SIPParseError(f"bad port in URI {whole[:80]!r}")
        return host, int(portText)
    return host, None
