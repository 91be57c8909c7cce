"""
The structured header values a registrar and a REGISTER client need: Via, and the name-addr / addr-spec of
From, To and Contact.

Via (RFC 3261 §20.42, grammar §25.1): ``SIP/2.0/UDP host:port;branch=z9hG4bK...;rport``, with LWS allowed
around the slashes, the semicolons and the equals signs.  A server stamps the top Via of each request it
receives (:meth:`Via.receivedFrom`): RFC 3261 §18.2.1 adds ``received=<source IP>`` when the sent-by host is a
name or another address, and RFC 3581 §4 fills a bare ``rport`` with the source port and then *always* adds
``received``, so the response reaches the NAT's public side.  RFC 6223's ``keep`` is read like any parameter.

From / To / Contact (§20.10, §20.20, §20.39): ``"Display" <uri>;params`` (name-addr) or ``uri;params``
(addr-spec).  In the addr-spec form every ``;`` parameter belongs to the header, not the URI (§20.10), which is
why ``<sip:a@b;ob>;reg-id=1`` puts ``ob`` on the URI (RFC 5626 §5.4) and ``reg-id`` on the Contact.
``Contact: *`` (§10.2.2, only with ``Expires: 0``) is :data:`WILDCARD`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import List, Literal, Optional, Tuple, Union

from twisted_sipnat.core.addresses import isIPLiteral, normalHost

from .error import SIPParseError
from .headers import Headers, isToken, splitTopLevel
from .uri import SIPURI, Param, _hostPort, formatParams

__all__ = ["NameAddress", "Via", "WILDCARD", "contactsOf", "setTopVia"]

WILDCARD: Literal["*"] = "*"

_SENT_PROTOCOL = re.compile(r"([^\s/]+)\s*/\s*([^\s/]+)\s*/\s*([^\s/]+)\s+(\S+)\s*")
_DIGITS = re.compile(r"[0-9]{1,10}")


def _headerParams(pieces: List[str], where: str) -> Tuple[Param, ...]:
    params = []
    for piece in pieces:
        name, eq, value = piece.partition("=")
        name = name.strip()
        if not name or any(ch in name for ch in ' \t"<>'):
            raise SIPParseError(f"bad parameter {piece[:40]!r} in {where}")
        params.append((name, value.strip() if eq else None))
    return tuple(params)


def _find(params: Tuple[Param, ...], name: str) -> Tuple[bool, Optional[str]]:
    lowered = name.lower()
    for n, v in params:
        if n.lower() == lowered:
            return True, v
    return False, None


def _withParam(params: Tuple[Param, ...], name: str, value: Optional[str]) -> Tuple[Param, ...]:
    lowered = name.lower()
    if any(n.lower() == lowered for n, _ in params):
        return tuple((n, value) if n.lower() == lowered else (n, v) for n, v in params)
    return params + ((name, value),)


def _number(value: Optional[str], what: str) -> Optional[int]:
    if value is None:
        return None
    if not _DIGITS.fullmatch(value):
        raise SIPParseError(f"{what} is not a number: {value[:20]!r}")
    return int(value)


@dataclass(frozen=True)
class Via:
    """One Via value (RFC 3261 §20.42): sent-protocol, sent-by host and port, parameters in order."""

    transport: str
    host: str
    port: Optional[int] = None
    params: Tuple[Param, ...] = ()
    protocol: str = "SIP"
    version: str = "2.0"

    @classmethod
    def parse(cls, text: str) -> Via:
        """Parse one Via value (a single item of the comma list); raises :class:`SIPParseError`."""
        pieces = splitTopLevel(text, ";")
        match = _SENT_PROTOCOL.fullmatch(pieces[0]) if pieces else None
        if match is None:
            raise SIPParseError(f"bad Via {text[:80]!r}")
        protocol, version, transport, sentBy = match.groups()
        host, port = _hostPort(sentBy, text)
        return cls(transport.upper(), host, port, _headerParams(pieces[1:], "Via"), protocol.upper(), version)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.protocol}/{self.version}/{self.transport} {host}{port}{formatParams(self.params)}"

    def param(self, name: str) -> Optional[str]:
        """The value of parameter ``name`` (case-insensitive); ``None`` when absent or without a value."""
        return _find(self.params, name)[1]

    def hasParam(self, name: str) -> bool:
        return _find(self.params, name)[0]

    def withParam(self, name: str, value: Optional[str]) -> Via:
        """A copy with parameter ``name`` set (replaced in place, or appended); ``None`` makes it a flag."""
        return replace(self, params=_withParam(self.params, name, value))

    @property
    def branch(self) -> Optional[str]:
        return self.param("branch")

    @property
    def received(self) -> Optional[str]:
        return self.param("received")

    @property
    def rport(self) -> Optional[int]:
        """The port an ``rport=N`` carries (RFC 3581 §4); ``None`` when absent or bare (a request for it)."""
        return _number(self.param("rport"), "rport")

    @property
    def keep(self) -> Optional[int]:
        """The interval of ``keep=N`` (RFC 6223 §4.3); ``None`` when absent or a bare offer."""
        return _number(self.param("keep"), "keep")

    def receivedFrom(self, host: str, port: int) -> Via:
        """
        This Via as a server stamps it on a request that arrived from ``(host, port)``: ``received`` when the
        sent-by is a name or another address (RFC 3261 §18.2.1); with a bare ``rport``, ``rport=port`` and
        ``received`` whatever the sent-by (RFC 3581 §4).  An IPv6 ``received`` has no brackets (§25.1).
        """
        source = normalHost(host)
        via = self
        if self.hasParam("rport") and self.param("rport") is None:
            via = via.withParam("rport", str(port))
            return via.withParam("received", source)
        if not isIPLiteral(self.host) or normalHost(self.host) != source:
            via = via.withParam("received", source)
        return via


def setTopVia(headers: Headers, via: Via) -> None:
    """Replace the top Via value in ``headers`` (the first item of the first Via field) with ``via``."""
    fields = headers.fields("Via")
    if not fields:
        raise SIPParseError("no Via header")
    headers.replaceFirst("Via", ", ".join([str(via), *splitTopLevel(fields[0])[1:]]))


def _unquote(text: str) -> Tuple[str, str]:
    """Read a quoted-string at the start of ``text``: ``(contents unescaped, rest after it)``."""
    out = []
    i = 1
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if ch == '"':
            return "".join(out), text[i + 1 :]
        out.append(ch)
        i += 1
    raise SIPParseError(f"unterminated quoted string in {text[:80]!r}")


@dataclass(frozen=True)
class NameAddress:
    """
    A From, To or Contact value: ``displayName`` (unquoted, or ``None``), ``uri`` (text as written) and the
    header ``params`` (``tag``, ``expires``, ``+sip.instance``, ``reg-id``, ...), in order.
    """

    uri: str
    displayName: Optional[str] = None
    params: Tuple[Param, ...] = ()

    @classmethod
    def parse(cls, text: str) -> NameAddress:
        """Parse a name-addr or addr-spec with its parameters; raises :class:`SIPParseError`."""
        rest = text.strip()
        display: Optional[str] = None
        if rest.startswith('"'):
            display, rest = _unquote(rest)
            rest = rest.lstrip()
            if not rest.startswith("<"):
                raise SIPParseError(f"display name without <URI> in {text[:80]!r}")
        elif "<" in rest.split(";", 1)[0]:
            before, _, rest = rest.partition("<")
            rest = "<" + rest
            display = " ".join(before.split()) or None
            # RFC 3261 §25.1: an unquoted display-name is tokens and LWS (RFC 4475 §3.1.2.15 "baddn").
            if display is not None and not all(isToken(word) for word in display.split(" ")):
                raise SIPParseError(f"unquoted display name with non-token characters in {text[:80]!r}")
        if rest.startswith("<"):
            uri, bracket, rest = rest[1:].partition(">")
            if not bracket:
                raise SIPParseError(f"no closing '>' in {text[:80]!r}")
            rest = rest.strip()
            if rest and not rest.startswith(";"):
                raise SIPParseError(f"junk after '>' in {text[:80]!r}")
            pieces = splitTopLevel(rest[1:], ";") if rest else []
        else:
            # addr-spec: every ;parameter is a header parameter (RFC 3261 §20.10).
            first, *pieces = splitTopLevel(rest, ";") or [""]
            uri = first
        uri = uri.strip()
        if not uri or any(ch in uri for ch in ' \t<>"'):
            raise SIPParseError(f"bad URI in {text[:80]!r}")
        return cls(uri, display, _headerParams(pieces, "address"))

    def __str__(self) -> str:
        shown = ""
        if self.displayName is not None:
            escaped = self.displayName.replace("\\", "\\\\").replace('"', '\\"')
            shown = f'"{escaped}" '
        return f"{shown}<{self.uri}>{formatParams(self.params)}"

    @property
    def sipURI(self) -> SIPURI:
        """The URI as a :class:`SIPURI`; raises :class:`SIPParseError` for a non-SIP one (``tel:``...)."""
        return SIPURI.parse(self.uri)

    def param(self, name: str) -> Optional[str]:
        return _find(self.params, name)[1]

    def hasParam(self, name: str) -> bool:
        return _find(self.params, name)[0]

    def withParam(self, name: str, value: Optional[str]) -> NameAddress:
        return replace(self, params=_withParam(self.params, name, value))

    @property
    def tag(self) -> Optional[str]:
        return self.param("tag")

    @property
    def expires(self) -> Optional[int]:
        """The Contact ``expires`` parameter in seconds (RFC 3261 §20.10), ``None`` when absent."""
        return _number(self.param("expires"), "expires")

    @property
    def instance(self) -> Optional[str]:
        """``+sip.instance`` without its quotes, e.g. ``<urn:uuid:...>`` (RFC 5626 §4.1)."""
        value = self.param("+sip.instance")
        if value is not None and value.startswith('"'):
            value = _unquote(value)[0]
        return value

    @property
    def regId(self) -> Optional[int]:
        """The ``reg-id`` (RFC 5626 §4.2), ``None`` when absent."""
        return _number(self.param("reg-id"), "reg-id")


def contactsOf(headers: Headers) -> Union[Literal["*"], List[NameAddress]]:
    """
    The Contacts of a message: :data:`WILDCARD` for ``Contact: *`` alone, else each value parsed.  ``*`` with
    any other Contact is an error (RFC 3261 §10.3 step 6 answers it with 400).
    """
    values = headers.getAll("Contact")
    if "*" in values:
        if len(values) != 1:
            raise SIPParseError("Contact: * together with other contacts")
        return WILDCARD
    return [NameAddress.parse(v) for v in values]
