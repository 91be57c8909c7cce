"""
The two SIP header facts a keepalive needs, read and written without a SIP stack.

A registrar tells a UA how often to keep its flow alive in one of two ways:

- the ``Flow-Timer`` header of the 2xx to REGISTER (RFC 5626 §4.4.1, §8.2, grammar in §10):
  ``Flow-Timer: 120``;
- the ``keep`` parameter of the UA's own (top) Via in a response (RFC 6223 §4.3 / §5): the UA offered
  ``;keep`` in its request, and the next hop answered ``;keep=30``.

Either value goes to ``NATTraversalController.refreshNATBinding(flowTimer=...)``.  :func:`addKeepToVia` is the
other half of RFC 6223: it puts the bare ``;keep`` offer on the top Via of an outgoing request.

Everything here works on two kinds of input, because SIP stacks hold messages in one of two shapes:

- ``twisted.protocols.sip.Message`` objects (``Request``/``Response``) or anything that looks like one: a
  ``headers`` mapping from lower-case long header names to lists of ``str`` values;
- the raw message as ``bytes`` (or ``str``), as a stack that reads the socket itself has it.

This module is sans-IO and imports nothing from Twisted (``twisted.protocols.sip`` imports the reactor at
module top, which an importer may not want): the ``Message`` objects are only duck-typed.  Values off the wire
are untrusted: a malformed, zero, negative or absurd interval reads as ``None`` (or raises
:class:`InvalidHeaderError` from the strict parsers), never a traceback of another kind.
"""

from __future__ import annotations

import re
from typing import (
    Dict,
    List,
    Mapping,
    MutableMapping,
    Optional,
    Protocol,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)

from twisted_sipnat.core.sip.headers import splitTopLevel
from twisted_sipnat.errors import InvalidHeaderError, MissingViaError

__all__ = [
    "MAX_KEEPALIVE_INTERVAL",
    "InvalidHeaderError",
    "MissingViaError",
    "addKeepToVia",
    "answerKeep",
    "flowTimer",
    "keepaliveInterval",
    "parseFlowTimer",
    "parseKeepParameter",
    "viaKeep",
]

#: The largest interval, in seconds, taken from a registrar.  Neither RFC sets a ceiling (Flow-Timer is
#: ``1*DIGIT``), but a keepalive rarer than once a day keeps no NAT binding alive, and a huge number usually
#: means a broken peer; refusing it keeps the configured interval in force instead.
MAX_KEEPALIVE_INTERVAL = 86400

# RFC 3261 §7.3.3 compact forms that matter here (Flow-Timer has none).
_COMPACT = {"v": "via"}

_DIGITS = re.compile(r"[0-9]+")








class MessageLike(Protocol):
    """What is used of ``twisted.protocols.sip.Message``: headers by lower-case long name, each a list."""

    headers: MutableMapping[str, List[str]]


M = TypeVar("M", bound=Union[MessageLike, bytes, str])


def parseFlowTimer(value: str) -> int:
    """
    Parse a ``Flow-Timer`` value (RFC 5626 §10: ``Flow-Timer = "Flow-Timer" HCOLON 1*DIGIT``) into seconds.

    Raises :class:`InvalidHeaderError` for anything but digits, for ``0`` (a keepalive interval of zero would
    be a busy loop) and for values above :data:`MAX_KEEPALIVE_INTERVAL`.
    """
    return _seconds("Flow-Timer", value)


def parseKeepParameter(value: Optional[str]) -> Optional[int]:
    """
    Parse the value of a Via ``keep`` parameter (RFC 6223 §6: ``keep = "keep" [ EQUAL 1*(DIGIT) ]``).

    A bare ``keep`` (``value`` is ``None`` or empty) is the UA's offer, not an interval: ``None``.  Otherwise
    the same rules as :func:`parseFlowTimer`, raising :class:`InvalidHeaderError` naming ``keep``.
    """
    if value is None or value == "":
        return None
    return _seconds("keep", value)


def _seconds(header: str, value: object) -> int:
    if not isinstance(value, str):
        raise InvalidHeaderError(header, value, "not text")
    text = value.strip()
    if not _DIGITS.fullmatch(text):
        raise InvalidHeaderError(header, value, "not a whole number of seconds")
    if len(text) > 12:
        raise InvalidHeaderError(header, value, f"more than {MAX_KEEPALIVE_INTERVAL} seconds")
    seconds = int(text)
    if seconds == 0:
        raise InvalidHeaderError(header, value, "zero seconds")
    if seconds > MAX_KEEPALIVE_INTERVAL:
        raise InvalidHeaderError(header, value, f"more than {MAX_KEEPALIVE_INTERVAL} seconds")
    return seconds


def flowTimer(message: Union[MessageLike, bytes, str]) -> Optional[int]:
    """
    The ``Flow-Timer`` of ``message`` in seconds, or ``None`` when it has none or it is unusable.

    Several Flow-Timer headers are a protocol error; the first usable one wins, as a lenient reader should.
    """
    for value in _headerValues(message, "flow-timer"):
        try:
            return parseFlowTimer(value)
        except InvalidHeaderError:
            continue
    return None


def viaKeep(message: Union[MessageLike, bytes, str]) -> Optional[int]:
    """
    The ``keep=N`` of the top Via of ``message`` in seconds, or ``None`` (no Via, a bare ``keep``, a bad value).

    Only the top Via counts: in a response it is the one the UA itself added, the one RFC 6223 §4.3 has the
    next hop answer on.  Lower Vias belong to other hops.
    """
    top = _topVia(message)
    if top is None:
        return None
    for name, value in _viaParams(top):
        if name == "keep":
            try:
                return parseKeepParameter(value)
            except InvalidHeaderError:
                return None
    return None


def keepaliveInterval(message: Union[MessageLike, bytes, str]) -> Optional[int]:
    """
    The keepalive interval the registrar asked for in a REGISTER response, in seconds, or ``None``.

    ``Flow-Timer`` first (RFC 5626 §4.4.1: "If the Flow-Timer header field is present..."), else the top Via's
    ``keep=N`` (RFC 6223).  ``None`` means "use the configured interval".  The value is meant for
    ``refreshNATBinding(flowTimer=...)``, which sends every 80-100 % of it.  Never raises on what came off the
    wire; a ``message`` of the wrong type is a programming error (``TypeError``).
    """
    found = flowTimer(message)
    if found is not None:
        return found
    return viaKeep(message)


def addKeepToVia(message: M) -> M:
    """
    Offer RFC 6223 keepalives: add a bare ``;keep`` parameter to the top Via of an outgoing request.

    A ``Message`` is changed in place and returned; ``bytes``/``str`` come back as a new value of the same
    type, with only the top Via changed (so Content-Length stays right).  A Via that already has a ``keep``
    parameter is left alone.  Raises :class:`MissingViaError` when there is no Via at all.
    """
    if isinstance(message, (bytes, str)):
        text = message.decode("latin-1") if isinstance(message, bytes) else message
        changed = _addKeepToRaw(text)
        if isinstance(message, bytes):
            return changed.encode("latin-1")  # type: ignore[return-value]
        return changed  # type: ignore[return-value]
    headers = _headersOf(message)
    key = "via" if headers.get("via") else ("v" if headers.get("v") else None)
    if key is None:
        raise MissingViaError()
    values = headers[key]
    values[0] = _addKeepToValue(values[0])
    return message


def answerKeep(message: M, seconds: int) -> M:
    """
    The edge's half of RFC 6223 (§4.3): when the top Via of a response carries the UA's bare ``;keep`` offer,
    fill in the interval the UA should use, ``;keep=seconds``.

    A Via without a bare ``keep`` (no offer, or one already answered) is left alone, as is a message without
    a Via.  ``Message`` objects change in place; ``bytes``/``str`` come back as a new value of the same type.
    """
    text = str(_seconds("keep", str(seconds)))
    if isinstance(message, (bytes, str)):
        raw = message.decode("latin-1") if isinstance(message, bytes) else message
        span = _rawTopViaSpan(raw)
        if span is None:
            return message
        start, stop = span
        changed = raw[:start] + _answerKeepInValue(raw[start:stop], text) + raw[stop:]
        return (changed.encode("latin-1") if isinstance(message, bytes) else changed)  # type: ignore[return-value]
    headers = _headersOf(message)
    key = "via" if headers.get("via") else ("v" if headers.get("v") else None)
    if key is not None:
        headers[key][0] = _answerKeepInValue(headers[key][0], text)
    return message


_BARE_KEEP = re.compile(r";(\s*)keep(\s*)(?=;|$)", re.IGNORECASE)


def _answerKeepInValue(value: str, seconds: str) -> str:
    end = _firstViaEnd(value)
    first = value[:end]
    params = _viaParams(first)
    if ("keep", None) not in params:
        return value
    return _BARE_KEEP.sub(f";keep={seconds}", first.rstrip(), count=1) + first[len(first.rstrip()):] + value[end:]


# ---- reading ---------------------------------------------------------------------------------------------


def _headersOf(message: object) -> MutableMapping[str, List[str]]:
    headers = getattr(message, "headers", None)
    if not isinstance(headers, Mapping):
        raise TypeError(f"expected a SIP message (bytes, str or an object with .headers), got {message!r}")
    return headers  # type: ignore[return-value]


def _headerValues(message: Union[MessageLike, bytes, str], name: str) -> List[str]:
    """Every value of header ``name`` (lower-case long form), in order; comma-lists are not split here."""
    if isinstance(message, (bytes, str)):
        return [value for hname, value in _rawHeaders(message) if hname == name]
    headers = _headersOf(message)
    values: List[str] = []
    for hname, hvalues in headers.items():
        lowered = hname.lower()
        if _COMPACT.get(lowered, lowered) == name:
            values.extend(v for v in hvalues if isinstance(v, str))
    return values


def _rawHeaders(message: Union[bytes, str]) -> List[Tuple[str, str]]:
    """``(lower-case long name, value)`` for each header of a raw message, continuation lines unfolded."""
    text = message.decode("latin-1") if isinstance(message, bytes) else message
    head = _headerBlock(text)
    lines = head.replace("\r\n", "\n").split("\n")[1:]  # skip the start line
    result: List[Tuple[str, str]] = []
    for line in lines:
        if line[:1] in (" ", "\t") and result:
            name, value = result[-1]
            result[-1] = (name, value + " " + line.strip())
            continue
        name, colon, value = line.partition(":")
        if not colon:
            continue
        lowered = name.strip().lower()
        result.append((_COMPACT.get(lowered, lowered), value.strip()))
    return result


def _headerBlock(text: str) -> str:
    """The start line and headers: everything before the first empty line (CRLF or bare LF)."""
    ends = [i for i in (text.find("\r\n\r\n"), text.find("\n\n")) if i >= 0]
    return text[: min(ends)] if ends else text


def _topVia(message: Union[MessageLike, bytes, str]) -> Optional[str]:
    for value in _headerValues(message, "via"):
        vias = splitTopLevel(value)
        if vias:
            return vias[0]
    return None


def _viaParams(via: str) -> Sequence[Tuple[str, Optional[str]]]:
    """The parameters of one Via value as ``(lower-case name, value or None)``; the sent-by part skipped."""
    # Drop a trailing comment, then split on ';' outside quotes.
    pieces = _splitParams(via)
    params: List[Tuple[str, Optional[str]]] = []
    for piece in pieces[1:]:
        name, eq, value = piece.partition("=")
        params.append((name.strip().lower(), value.strip().strip('"') if eq else None))
    return params


def _splitParams(via: str) -> List[str]:
    pieces: List[str] = []
    quoted = False
    start = 0
    for i, ch in enumerate(via):
        if ch == '"':
            quoted = not quoted
        elif ch == ";" and not quoted:
            pieces.append(via[start:i])
            start = i + 1
    pieces.append(via[start:])
    return pieces


# ---- writing ---------------------------------------------------------------------------------------------


def _hasKeep(via: str) -> bool:
    return any(name == "keep" for name, _ in _viaParams(via))


def _addKeepToValue(value: str) -> str:
    """Add ``;keep`` to the first Via in a (possibly comma-separated) Via header value."""
    vias = splitTopLevel(value)
    if not vias:
        raise MissingViaError()
    if _hasKeep(vias[0]):
        return value
    end = _firstViaEnd(value)
    return value[:end].rstrip() + ";keep" + value[end:]


def _firstViaEnd(value: str) -> int:
    """Index just after the first Via of a comma-separated value: the separating comma's, or the end."""
    first = splitTopLevel(value)
    if not first:
        return len(value.rstrip())
    end = value.index(first[0]) + len(first[0])
    gap = len(value) - end - len(value[end:].lstrip(" \t"))
    return end + gap if value[end + gap : end + gap + 1] == "," else end


_LINE = re.compile(r"[^\r\n]*(?:\r\n|\n|$)")


def _addKeepToRaw(text: str) -> str:
    span = _rawTopViaSpan(text)
    if span is None:
        raise MissingViaError()
    start, stop = span
    return text[:start] + _addKeepToValue(text[start:stop]) + text[stop:]


def _rawTopViaSpan(text: str) -> Optional[Tuple[int, int]]:
    """Where the value of the first non-empty Via header of a raw message starts and stops, or ``None``."""
    head = _headerBlock(text)
    lines: List[str] = [m.group(0) for m in _LINE.finditer(head) if m.group(0)]
    offsets: Dict[int, int] = {}
    position = 0
    for index, line in enumerate(lines):
        offsets[index] = position
        position += len(line)
    for index, line in enumerate(lines[1:], start=1):
        if line[:1] in (" ", "\t"):
            continue
        name, colon, _ = line.partition(":")
        lowered = name.strip().lower()
        if not colon or _COMPACT.get(lowered, lowered) != "via":
            continue
        # The header's value spans this line and its continuation lines.
        last = index
        while last + 1 < len(lines) and lines[last + 1][:1] in (" ", "\t"):
            last += 1
        start = offsets[index] + len(name) + 1
        stop = offsets[last] + len(lines[last].rstrip("\r\n"))
        if not splitTopLevel(text[start:stop]):
            continue
        return start, stop
    return None
