"""
SIP header names and the ordered, case-insensitive header multi-map.

Header names are case-insensitive (RFC 3261 §7.3.1) and many have a one-letter compact form that means exactly
the same header (§7.3.3, §20; the IANA "Header Fields" registry for the extensions).  Lookups therefore go
through :func:`canonicalName`, while every header keeps the spelling it was received (or added) with, so a
message serialises as it came, in its original order (§7.3.1: the relative order of header fields with the same
name is significant; of different names it is not, but keeping it costs nothing and keeps diffs readable).

Several header fields of one name may be combined into one comma-separated value and back (§7.3.1).
:meth:`Headers.getAll` splits the headers whose grammar is such a list (§25.1 ``#``-style rules: Via, Contact,
Route, Supported, ...) on top-level commas only: never inside a quoted string (with its backslash escapes,
§25.1 ``quoted-pair``) nor inside ``<...>`` (a URI there may hold commas).  Headers whose values contain commas
of their own (Date, the authentication headers, Subject, ...) are never split.
"""

from __future__ import annotations

import re
from typing import Dict, FrozenSet, Iterator, List, Optional, Tuple

__all__ = [
    "COMPACT_FORMS",
    "LIST_HEADERS",
    "Headers",
    "canonicalName",
    "isToken",
    "requestHeaders",
    "splitTopLevel",
]

#: Compact form -> full header name (RFC 3261 §7.3.3 and §20; the others from the IANA SIP "Header Fields"
#: registry, each registered by the RFC named).
COMPACT_FORMS: Dict[str, str] = {
    "a": "Accept-Contact",  # RFC 3841 §9.2
    "b": "Referred-By",  # RFC 3892 §3
    "c": "Content-Type",  # RFC 3261 §20.15
    "d": "Request-Disposition",  # RFC 3841 §9.1
    "e": "Content-Encoding",  # RFC 3261 §20.12
    "f": "From",  # RFC 3261 §20.20
    "i": "Call-ID",  # RFC 3261 §20.8
    "j": "Reject-Contact",  # RFC 3841 §9.3
    "k": "Supported",  # RFC 3261 §20.37
    "l": "Content-Length",  # RFC 3261 §20.14
    "m": "Contact",  # RFC 3261 §20.10
    # RFC 4474 §13.2 registered "n" for Identity-Info; RFC 8224 deprecated that header, and IANA no longer
    # lists the letter, but an RFC 4474 peer still sends it: read it as what it meant.
    "n": "Identity-Info",
    "o": "Event",  # RFC 6665 §8.2.1 (first RFC 3265)
    "r": "Refer-To",  # RFC 3515 §2.1
    "s": "Subject",  # RFC 3261 §20.36
    "t": "To",  # RFC 3261 §20.39
    "u": "Allow-Events",  # RFC 6665 §8.2.2
    "v": "Via",  # RFC 3261 §20.42
    "x": "Session-Expires",  # RFC 4028 §4
    "y": "Identity",  # RFC 8224 §4 (first RFC 4474)
}

#: Headers whose value is a comma-separated list (RFC 3261 §7.3.1, §25.1; RFC 3327 Path, RFC 3608
#: Service-Route, RFC 3841 Accept-/Reject-Contact and Request-Disposition, RFC 6665 Allow-Events, RFC 3329
#: ``Security-*``), by lower-case full name.  Contact is one, except for ``*`` (§20.10).
LIST_HEADERS: FrozenSet[str] = frozenset(
    {
        "accept",
        "accept-contact",
        "accept-encoding",
        "accept-language",
        "alert-info",
        "allow",
        "allow-events",
        "call-info",
        "contact",
        "content-encoding",
        "content-language",
        "error-info",
        "in-reply-to",
        "path",
        "proxy-require",
        "record-route",
        "reject-contact",
        "request-disposition",
        "require",
        "route",
        "security-client",
        "security-server",
        "security-verify",
        "service-route",
        "supported",
        "unsupported",
        "via",
        "warning",
    }
)

_BY_KEY: Dict[str, str] = {short: full.lower() for short, full in COMPACT_FORMS.items()}

# RFC 3261 §25.1: token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")


def isToken(text: str) -> bool:
    """RFC 3261 §25.1 ``token``: header names, methods, parameter names."""
    return _TOKEN.fullmatch(text) is not None


def canonicalName(name: str) -> str:
    """The lookup key of a header name: lower case, the compact form replaced by the full name (§7.3.3)."""
    lowered = name.lower()
    return _BY_KEY.get(lowered, lowered)


def splitTopLevel(value: str, separator: str = ",") -> List[str]:
    """
    Split ``value`` on ``separator`` where it is not inside a quoted string (RFC 3261 §25.1 ``quoted-string``,
    ``\\`` escaping the next character) nor inside ``<...>``; items are stripped of whitespace, empty ones
    dropped.
    """
    if '"' not in value and "<" not in value:
        return [item.strip() for item in value.split(separator) if item.strip()]
    items: List[str] = []
    start = 0
    quoted = False
    angle = False
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif angle:
            if ch == ">":
                angle = False
        elif ch == "<":
            angle = True
        elif ch == separator:
            items.append(value[start:i])
            start = i + 1
        i += 1
    items.append(value[start:])
    return [item.strip() for item in items if item.strip()]


def _checked(name: str, value: str) -> str:
    """Refuse what would corrupt the message on the wire: a name that is not a token, a value with CR or LF."""
    if not isToken(name):
        raise ValueError(f"header name {name!r} is not a token (RFC 3261 §25.1)")
    if "\r" in value or "\n" in value:
        raise ValueError(f"header value for {name} holds CR or LF: {value[:40]!r}")
    return value


class Headers:
    """
    An ordered multi-map of SIP headers: ``(name as spelled, value)`` pairs, looked up case-insensitively with
    compact forms mapped to full names (:func:`canonicalName`).

    Values are unfolded field values (RFC 3261 §7.3.1), without the whitespace around them.  Equality compares
    the sequence of ``(canonical name, value)``: ``v: x`` equals ``Via: x``.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Optional[List[Tuple[str, str]]] = None) -> None:
        self._items: List[Tuple[str, str]] = list(items) if items else []

    def __iter__(self) -> Iterator[Tuple[str, str]]:
        """``(name as spelled, value)`` in message order."""
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = canonicalName(name)
        return any(canonicalName(n) == key for n, _ in self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self._canonical() == other._canonical()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"

    def _canonical(self) -> List[Tuple[str, str]]:
        return [(canonicalName(n), v) for n, v in self._items]

    def copy(self) -> Headers:
        return Headers(self._items)

    def fields(self, name: str) -> List[str]:
        """Every field value of header ``name``, in order, not split on commas."""
        key = canonicalName(name)
        return [v for n, v in self._items if canonicalName(n) == key]

    def getAll(self, name: str) -> List[str]:
        """
        Every value of header ``name`` in order; for the :data:`LIST_HEADERS`, each field split on top-level
        commas (:func:`splitTopLevel`), so ``Via: a, b`` and two Via lines read the same.
        """
        key = canonicalName(name)
        values = [v for n, v in self._items if canonicalName(n) == key]
        if key not in LIST_HEADERS:
            return values
        return [item for v in values for item in splitTopLevel(v)]

    def get(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """The first value of :meth:`getAll` (the top Via, the first Contact, ...), or ``default``."""
        values = self.getAll(name)
        return values[0] if values else default

    def add(self, name: str, value: str) -> None:
        """Append a header, spelled as given (a compact name stays compact on the wire)."""
        self._items.append((name, _checked(name, value)))

    def set(self, name: str, value: str) -> None:
        """Replace every header ``name`` with one, at the place (and in the spelling) of the first; else add it."""
        key = canonicalName(name)
        index = self._replaceFirst(key, value)
        if index < 0:
            self._items.append((name, _checked(name, value)))
        else:
            self._items[index + 1 :] = [(m, v) for m, v in self._items[index + 1 :] if canonicalName(m) != key]

    def replaceFirst(self, name: str, value: str) -> bool:
        """Replace the value of the first header ``name`` only, keeping its place and spelling."""
        return self._replaceFirst(canonicalName(name), value) >= 0

    def _replaceFirst(self, key: str, value: str) -> int:
        """Give the first header whose canonical name is ``key`` the value ``value``; its index, or -1."""
        for index, (n, _) in enumerate(self._items):
            if canonicalName(n) == key:
                self._items[index] = (n, _checked(n, value))
                return index
        return -1

    def popFirst(self, name: str) -> Optional[str]:
        """
        Remove and return the first value of header ``name``: for a :data:`LIST_HEADERS` field holding several
        comma-separated values only the first of them (a proxy removing its Via or its Route, RFC 3261 §16.7,
        §16.4); ``None`` when there is no such header.
        """
        key = canonicalName(name)
        for index, (n, v) in enumerate(self._items):
            if canonicalName(n) != key:
                continue
            values = splitTopLevel(v) if key in LIST_HEADERS else [v]
            if len(values) > 1:
                self._items[index] = (n, ", ".join(values[1:]))
            else:
                del self._items[index]
            return values[0] if values else ""
        return None

    def remove(self, name: str) -> int:
        """Remove every header ``name``; return how many were removed."""
        key = canonicalName(name)
        kept = [(n, v) for n, v in self._items if canonicalName(n) != key]
        removed = len(self._items) - len(kept)
        self._items = kept
        return removed


def requestHeaders(method: str, via: str, to: str, fromAddress: str, fromTag: str, callId: str,
                   cseq: int) -> Headers:
    """
    The header fields that open every request a user agent starts outside a dialog (RFC 3261 §8.1.1), in that
    order: the top Via, Max-Forwards 70 (§8.1.1.6), To, From with its tag, Call-ID and CSeq.  ``to`` and
    ``fromAddress`` are URIs (put in angle brackets here).  Raises ``ValueError`` for a CSeq number of 2**31 or
    more (§8.1.1.5).
    """
    if not 0 <= cseq < 2**31:
        raise ValueError(f"a CSeq number is below 2**31 (RFC 3261 §8.1.1.5), not {cseq}")
    headers = Headers()
    headers.add("Via", via)
    headers.add("Max-Forwards", "70")
    headers.add("To", f"<{to}>")
    headers.add("From", f"<{fromAddress}>;tag={fromTag}")
    headers.add("Call-ID", callId)
    headers.add("CSeq", f"{cseq} {method}")
    return headers
