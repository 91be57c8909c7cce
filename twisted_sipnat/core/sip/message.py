"""
SIP requests and responses: parsing bytes off the wire, serialising, and building responses.

Theory of operation
===================

A message (RFC 3261 §7) is a start line, header lines, an empty line and a body.  :func:`parse` reads it in
the order that keeps the work bounded and agrees with the stream framer:

1. **Framing**, with the very functions :mod:`twisted_sipnat.core.sipframing` uses
   (:func:`~twisted_sipnat.core.sipframing.findHeaderEnd`,
   :func:`~twisted_sipnat.core.sipframing.contentLength`): the header block ends at the first ``CRLFCRLF``
   within ``maxSize`` bytes; Content-Length (``l`` too, any case, SP/HTAB before the colon, folded) must be
   digits, agree with any other Content-Length and fit in ``maxSize`` (§7.4.1, §20.14).  On a stream
   (``stream=True``) the bytes must be exactly one message, and a message without Content-Length is refused
   (§18.3 makes it mandatory there; the framer still frames it with an empty body, so the stream stays in step
   for the 400).  In a datagram a missing Content-Length means "the rest of the datagram", and bytes past the
   body are dropped (§18.3).  A failure here has ``SIPParseError.framing`` set.
2. **Bounds**, before any work that grows with them: the number of header fields (``maxHeaders``, counted
   with C-speed ``bytes.count``) and the length of each line, physical and unfolded (``maxLineLength``).
3. **Syntax**: the start line (§7.1 Request-Line with single SPs, §7.2 Status-Line), then each header line:
   a token name, optional SP/HTAB, the colon, the value (§7.3.1; whitespace around the colon is allowed);
   lines starting with SP/HTAB continue the previous header and unfold to one SP (§7.3.1).  Only CRLF ends a
   line: a bare CR or LF, or any other control character but HTAB, is refused.

Header names keep their spelling and order; compact forms (§7.3.3) are found under their full names
(:mod:`.headers`).  Values are decoded as UTF-8 (RFC 3261 §7.3.1), with undecodable bytes kept as surrogate
escapes so a message round-trips byte for byte.

:meth:`Request.toBytes` writes the canonical form: ``Name: value`` lines in order, and exactly one
Content-Length, the body's real length (in the place and spelling of the first one, else at the end): a wrong
Content-Length would desynchronise the peer's framer (§18.3).

:func:`responseTo` builds a response as RFC 3261 §8.2.6 says: every Via in order, From, To (with a tag added
when the request's To had none, except for 100 Trying, §8.2.6.2), Call-ID, CSeq, and ``Content-Length: 0``.
:func:`badRequest` does the same from a :class:`SIPParseError`, for the 400 a server owes a malformed request
(§8.1.3.1, §21.4.1), and declines for responses and ACK, which are never answered.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import List, Optional, Tuple, Union

from twisted_sipnat.core.sipframing import (
    DEFAULT_MAX_MESSAGE_SIZE,
    SIPFramingError,
    contentLength,
    findHeaderEnd,
    headerBlockTooLong,
)

from .error import SIPParseError
from .fields import NameAddress
from .headers import Headers, canonicalName, isToken

__all__ = [
    "DEFAULT_MAX_HEADERS",
    "DEFAULT_MAX_LINE_LENGTH",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "Message",
    "REASON_PHRASES",
    "Request",
    "Response",
    "badRequest",
    "checkRequest",
    "cseqOf",
    "parse",
    "responseTo",
]

#: Header fields one message may have.  A REGISTER has about 12; a request that crossed 70 proxies (the
#: Max-Forwards default) has 70 Via fields at most, if each hop adds its own line.
DEFAULT_MAX_HEADERS = 256
#: The longest header line, physical or unfolded.  Long enough for an RFC 8224 Identity header or a long Route
#: set; far below the 64 KB message bound, so one line cannot take all of it.
DEFAULT_MAX_LINE_LENGTH = 8192

#: RFC 3261 §21 reason phrases (and RFC 5626's 430/439, RFC 4028's 422, RFC 3329's 494).
REASON_PHRASES = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued", 183: "Session Progress",
    200: "OK", 202: "Accepted",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Moved Temporarily", 305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable", 407: "Proxy Authentication Required",
    408: "Request Timeout", 410: "Gone", 413: "Request Entity Too Large", 414: "Request-URI Too Long",
    415: "Unsupported Media Type", 416: "Unsupported URI Scheme", 420: "Bad Extension",
    421: "Extension Required", 422: "Session Interval Too Small", 423: "Interval Too Brief",
    430: "Flow Failed", 439: "First Hop Lacks Outbound Support",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist", 482: "Loop Detected",
    483: "Too Many Hops", 484: "Address Incomplete", 485: "Ambiguous", 486: "Busy Here",
    487: "Request Terminated", 488: "Not Acceptable Here", 491: "Request Pending", 493: "Undecipherable",
    494: "Security Agreement Required",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Server Time-out", 505: "Version Not Supported", 513: "Message Too Large",
    600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}  # fmt: skip

_CRLF = b"\r\n"
# Any control character but HTAB (RFC 3261 §25.1: TEXT-UTF8char and LWS); finds bare CR and LF too.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_REQUEST_LINE = re.compile(r"([^ ]+) ([A-Za-z][A-Za-z0-9+.\-]*:[^ ]*) ([Ss][Ii][Pp]/[0-9]{1,3}\.[0-9]{1,3})")
_STATUS_LINE = re.compile(r"([Ss][Ii][Pp]/[0-9]{1,3}\.[0-9]{1,3}) ([1-6][0-9][0-9])(?: (.*))?")
_CSEQ = re.compile(r"([0-9]{1,10})[ \t\r\n]+([^ \t\r\n]+)")
_HEADER = re.compile(r"([^ \t:]*)[ \t]*:[ \t]*(.*?)[ \t]*")
# The headers a 400 must echo (RFC 3261 §8.2.6.2), by canonical name.
_ECHOED = ("via", "from", "to", "call-id", "cseq")


@dataclass
class Request:
    """A SIP request (RFC 3261 §7.1): method, Request-URI (text), headers, body, SIP-Version."""

    method: str
    uri: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = "SIP/2.0"

    @property
    def startLine(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    def toBytes(self) -> bytes:
        """The canonical wire form (module docstring)."""
        return _serialise(self.startLine, self.headers, self.body)

    serialise = toBytes


@dataclass
class Response:
    """A SIP response (RFC 3261 §7.2): status code, reason phrase, headers, body, SIP-Version."""

    code: int
    reason: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = "SIP/2.0"

    @property
    def startLine(self) -> str:
        return f"{self.version} {self.code} {self.reason}"

    def toBytes(self) -> bytes:
        """The canonical wire form (module docstring)."""
        return _serialise(self.startLine, self.headers, self.body)

    serialise = toBytes


Message = Union[Request, Response]


def _serialise(startLine: str, headers: Headers, body: bytes) -> bytes:
    lines = [startLine]
    length = str(len(body))
    wroteLength = False
    for name, value in headers:
        if canonicalName(name) == "content-length":
            if not wroteLength:
                lines.append(f"{name}: {length}")
                wroteLength = True
            continue
        lines.append(f"{name}: {value}" if value else f"{name}:")
    if not wroteLength:
        lines.append(f"Content-Length: {length}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape") + body


def _check(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")


def parse(
    data: bytes,
    *,
    stream: bool = False,
    maxSize: int = DEFAULT_MAX_MESSAGE_SIZE,
    maxHeaders: int = DEFAULT_MAX_HEADERS,
    maxLineLength: int = DEFAULT_MAX_LINE_LENGTH,
) -> Message:
    """
    Parse one SIP message (see the module docstring for the rules and their order).

    ``stream=True`` for a message a stream framer handed out (TCP, TLS, WebSocket), ``False`` for a datagram.
    ``maxSize`` must be the framer's ``maxMessageSize`` for the two to agree.  Raises :class:`SIPParseError`,
    and only that, on anything malformed.
    """
    _check("maxSize", maxSize)
    _check("maxHeaders", maxHeaders)
    _check("maxLineLength", maxLineLength)
    if not isinstance(data, bytes):
        data = bytes(data)
    end = findHeaderEnd(data, 0, maxSize)
    if end < 0:
        block = data[:maxSize]
        cut = block.rfind(_CRLF)  # the last line is unfinished: echo nothing from it
        block = block[:cut] if cut >= 0 else b""
        if len(data) >= maxSize:
            raise _failure(headerBlockTooLong(maxSize), block, True, maxHeaders, maxLineLength)
        raise _failure("no empty line ends the header block", block, True, maxHeaders, maxLineLength)
    head = data[: end - 4]
    try:
        length = contentLength(data, 0, end, maxSize - end)
    except SIPFramingError as e:
        raise _failure(e.reason, head, True, maxHeaders, maxLineLength) from None
    available = len(data) - end
    if length is None:
        if stream:
            raise _failure(
                "no Content-Length, which a stream requires", head, False, maxHeaders, maxLineLength
            )
        if available > maxSize - end:
            raise _failure(f"message longer than {maxSize} bytes", head, True, maxHeaders, maxLineLength)
        length = available
    elif available < length:
        raise _failure(f"body shorter than Content-Length {length}", head, True, maxHeaders, maxLineLength)
    elif stream and available > length:
        raise _failure("bytes after the end of the message", head, True, maxHeaders, maxLineLength)
    body = data[end : end + length]
    try:
        return _parseHead(head, body, maxHeaders, maxLineLength)
    except _Malformed as e:
        raise _failure(e.reason, head, False, maxHeaders, maxLineLength) from None


class _Malformed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _parseHead(head: bytes, body: bytes, maxHeaders: int, maxLineLength: int) -> Message:
    # Bound the work before splitting: header fields are lines that do not continue another one.
    continuations = head.count(b"\r\n ") + head.count(b"\r\n\t")
    if head.count(_CRLF) - continuations > maxHeaders:
        raise _Malformed(f"more than {maxHeaders} header fields")
    lines = head.split(_CRLF)
    for physical in lines:
        if len(physical) > maxLineLength:
            raise _Malformed(f"header line longer than {maxLineLength} bytes")
        if _CONTROL.search(physical):
            raise _Malformed("control character (or bare CR/LF) in a line")
    message = _startLine(lines[0].decode("utf-8", "surrogateescape"))
    items: List[Tuple[str, str]] = []
    for raw in lines[1:]:
        line = raw.decode("utf-8", "surrogateescape")
        if line[:1] in (" ", "\t"):
            if not items:
                raise _Malformed("continuation line before any header")
            name, value = items[-1]
            more = line.strip(" \t")
            value = f"{value} {more}" if value and more else value or more
            if len(name) + len(value) + 2 > maxLineLength:
                raise _Malformed(f"header line longer than {maxLineLength} bytes")
            items[-1] = (name, value)
            continue
        match = _HEADER.fullmatch(line)
        if match is None and ":" not in line:
            raise _Malformed(f"header line without a colon: {_shown(line)}")
        name = match.group(1) if match is not None else line.partition(":")[0]
        if match is None or not isToken(name):
            raise _Malformed(f"header name is not a token: {_shown(name)}")
        items.append((name, match.group(2)))
    message.headers = Headers(items)
    message.body = body
    return message


def _startLine(line: str) -> Message:
    """RFC 3261 §7.1 Request-Line or §7.2 Status-Line."""
    match = _STATUS_LINE.fullmatch(line)
    if match is not None:
        return Response(int(match.group(2)), match.group(3) or "", version=match.group(1).upper())
    match = _REQUEST_LINE.fullmatch(line)
    if match is None or not isToken(match.group(1)):
        raise _Malformed(f"bad start line: {_shown(line)}")
    return Request(match.group(1), match.group(2), version=match.group(3).upper())


def _shown(text: str) -> str:
    """Untrusted text for a log line or a reason phrase: printable ASCII, at most 40 characters."""
    cut = text[:40]
    return "".join(ch if " " <= ch <= "~" else "?" for ch in cut) + ("..." if len(text) > 40 else "")


def _failure(reason: str, block: bytes, framing: bool, maxHeaders: int, maxLineLength: int) -> SIPParseError:
    """The error, with what a 400 needs when the start line is a readable request (salvaged leniently)."""
    lines = block.split(_CRLF, maxHeaders + 1)[: maxHeaders + 1]
    method: Optional[str] = None
    salvaged = Headers()
    try:
        start = (
            _startLine(lines[0].decode("utf-8", "surrogateescape"))
            if len(lines[0]) <= maxLineLength
            else None
        )
    except _Malformed:
        start = None
    if isinstance(start, Request):
        method = start.method
        items: List[Tuple[str, str]] = []
        last = False  # whether the previous line was an echoed header, which a continuation line extends
        for raw in lines[1:]:
            if len(raw) > maxLineLength or _CONTROL.search(raw):
                last = False
                continue
            line = raw.decode("utf-8", "surrogateescape")
            if line[:1] in (" ", "\t"):
                if last and len(items[-1][1]) + len(line) <= maxLineLength:
                    name, value = items[-1]
                    items[-1] = (name, (value + " " + line.strip(" \t")).strip())
                continue
            match = _HEADER.fullmatch(line)
            last = match is not None and isToken(match.group(1)) and canonicalName(match.group(1)) in _ECHOED
            if match is not None and last:
                items.append((match.group(1), match.group(2)))
        salvaged = Headers(items)
    return SIPParseError(reason, framing=framing, method=method, headers=salvaged)


def _responseHeaders(request: Headers, code: int, toTag: Optional[str]) -> Headers:
    headers = Headers()
    for value in request.fields("Via"):
        headers.add("Via", value)
    for name in ("From", "To", "Call-ID", "CSeq"):
        found = request.get(name)
        if found is None:
            continue
        headers.add(name, _withToTag(found, toTag) if name == "To" and code != 100 else found)
    if code == 100 and request.get("Timestamp") is not None:
        headers.add("Timestamp", request.get("Timestamp") or "")  # RFC 3261 §8.2.6.1
    headers.add("Content-Length", "0")
    return headers


def _withToTag(value: str, toTag: Optional[str]) -> str:
    """RFC 3261 §8.2.6.2: a UAS adds a To tag when the request had none; a To that does not parse stays."""
    try:
        if NameAddress.parse(value).tag is not None:
            return value
    except SIPParseError:
        return value
    return f"{value};tag={toTag or secrets.token_hex(8)}"


def responseTo(
    request: Request, code: int, reason: Optional[str] = None, *, toTag: Optional[str] = None
) -> Response:
    """
    A response to ``request`` per RFC 3261 §8.2.6: its Vias (all, in order), From, To (tagged with ``toTag``,
    or a random tag, if it had none and ``code`` is not 100), Call-ID and CSeq, and ``Content-Length: 0``.
    ``reason`` defaults to the RFC's phrase for ``code``.
    """
    if not 100 <= code <= 699:
        raise ValueError(f"a SIP status code is 100-699, not {code}")
    phrase = reason if reason is not None else REASON_PHRASES.get(code, "")
    return Response(code, phrase, _responseHeaders(request.headers, code, toTag))


def badRequest(error: SIPParseError, *, toTag: Optional[str] = None) -> Optional[Response]:
    """
    The 400 for a malformed request (RFC 3261 §21.4.1: the reason phrase names the problem), echoing the Via,
    From, To, Call-ID and CSeq that could be read; ``None`` when no response may be sent: the start line was
    not a readable request, or it was an ACK (§17.1.1.3: ACK is never answered).
    """
    if error.method is None or error.method == "ACK":
        return None
    return Response(400, f"Bad Request ({_shown(error.reason)})", _responseHeaders(error.headers, 400, toTag))


def cseqOf(message: Message) -> Tuple[int, str]:
    """
    The CSeq of ``message`` as ``(number, method)`` (RFC 3261 §20.16: the number is below 2**31, the method a
    token).  Raises :class:`SIPParseError` when it is missing or malformed.
    """
    value = message.headers.get("CSeq")
    match = _CSEQ.fullmatch(value) if value is not None else None
    if match is None or int(match.group(1)) >= 2**31 or not isToken(match.group(2)):
        raise SIPParseError(f"missing or malformed CSeq {_shown(value or '')!r}")
    return int(match.group(1)), match.group(2)


def checkRequest(request: Request) -> None:
    """
    Refuse a request a server cannot answer properly: without Via, From, To, Call-ID or CSeq (RFC 3261 §8.1.1
    lists them among the mandatory headers; they are what a response copies, §8.2.6.2), or whose CSeq method
    is not the request's method (§8.1.1.5; RFC 4475 §3.1.2.16).  The :class:`SIPParseError` it raises carries
    the method and headers, so :func:`badRequest` answers it.  Max-Forwards is not required: RFC 3261 §16.3
    has a proxy add one when it is missing.
    """
    echoed = Headers([(n, v) for n, v in request.headers if canonicalName(n) in _ECHOED])
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        if request.headers.get(name) is None:
            raise SIPParseError(f"no {name} header", method=request.method, headers=echoed)
    try:
        _, method = cseqOf(request)
    except SIPParseError as e:
        raise SIPParseError(e.reason, method=request.method, headers=echoed) from None
    if method != request.method:
        raise SIPParseError(
            f"CSeq method {method} is not {request.method}", method=request.method, headers=echoed
        )
