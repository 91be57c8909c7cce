"""
Where a SIP message ends in a byte stream, and which bytes between messages are keepalives.

Theory of operation
===================

On a stream (TCP, TLS) SIP messages follow each other with nothing marking their ends but the message itself:
the header block ends at the first empty line (``CRLF CRLF``) and the body is exactly ``Content-Length`` bytes
long (RFC 3261 §7.5, §18.3).  RFC 5626 §3.5.1 puts its keepalives into the gaps *between* messages: the client
sends a double CRLF (the *ping*), the server answers with a single CRLF (the *pong*).  Because a body may
itself contain ``CRLF CRLF``, a keepalive can only be recognised by someone who frames the messages; this module
is that someone, in both directions, without any I/O (the Twisted shell in ``protocols.py`` owns the sockets).

Incoming (:class:`IncomingSplitter`) is a small machine over three states:

============  =======================================  ==========================================
state         input                                    effect / next state
============  =======================================  ==========================================
BETWEEN       ``CR LF`` (role ``"client"``)            :class:`Pong` / BETWEEN
BETWEEN       ``CR LF CR LF`` (role ``"server"``)      :class:`Ping` / BETWEEN
BETWEEN       lone ``CR LF`` then a message            dropped (RFC 3261 §7.5 leading CRLF) / HEADERS
              (role ``"server"``)
BETWEEN       ``CR`` or ``CR LF`` at the end of data   kept until more bytes decide / BETWEEN
BETWEEN       any other byte                           start of a message, held / HEADERS
HEADERS       bytes up to and including ``CRLFCRLF``   the whole header block as SIP bytes / BODY
HEADERS       header block longer than the bound       :class:`SIPFramingError` / DEAD
BODY          ``Content-Length`` bytes                 SIP bytes / BETWEEN
DEAD          anything                                 :class:`SIPFramingError` again
============  =======================================  ==========================================

Role ``"client"`` is the side that sends pings, so every CRLF between messages is a pong; a ``CRLFCRLF``
arriving there is two pongs (it is what answers to two pings look like, and a client never has to answer a
ping: RFC 5626 gives only the client the ping role).  Role ``"server"`` answers pings; a single CRLF there is
ignorable noise before a start line, never a pong.  A server-role ``CRLF`` at the end of the data waits: only
the next bytes tell whether it is half a ping or noise.

SIP bytes are handed out as soon as they are known to belong to a message whose header block is complete (the
shell passes them straight to the SIP protocol's ``dataReceived``), so a :class:`SIPData` may hold part of a
body, a whole message or several.  A header block that spans several ``feed`` calls is the one thing kept
aside, to read its Content-Length, and it is handed on only once it is whole: a SIP server behind the splitter
never holds a copy of a partial header block too, so a flood of connections that stall inside their headers
(slowloris) costs one copy of what they sent, the one the connection limits count
(:attr:`IncomingSplitter.partial`), not two.

A stream message without Content-Length is taken to have an empty body.  RFC 3261 §18.3 makes the header
mandatory on streams, so such a sender is broken either way; an empty body is what a message with no body
(the common case for requests such as REGISTER and for most responses) means, and it keeps the stream in
step when the sender simply forgot the header.

Errors: a header block or message larger than ``maxMessageSize``, or a Content-Length that is not a decimal
number, is negative, or appears twice with different values, raises :class:`SIPFramingError` with a
``reason``.  After that the stream cannot be framed any more, so the splitter is dead and every later ``feed``
raises too.  The shell closes the connection and logs the reason.  Nothing else is ever raised on any bytes.

One definition of a message, shared with the parser (:func:`twisted_sipnat.core.sip.parse`): both find the
header block with :func:`findHeaderEnd` and the body length with :func:`contentLength`, under the same
``maxMessageSize``.  The rule, for bytes that start at a message boundary (``tests/core/test_sipmessage.py``
checks it on arbitrary streams cut anywhere):

- when the framer raises :class:`SIPFramingError` with reason *R*, ``parse(those bytes, stream=True)``
  raises ``SIPParseError`` with ``framing=True`` and the same reason *R*;
- when the framer delimits a message (header block plus Content-Length bytes), ``parse(message,
  stream=True)`` returns it or raises ``SIPParseError`` with ``framing=False``: the message's extent is known
  but its content is bad (start line, a header line without a colon or with a non-token name, an over-long
  line, too many headers, no Content-Length).  The stream is still in step, so a 400 can go out first;
- the parser's other ``framing=True`` refusals (no empty line yet, a body shorter than Content-Length, bytes
  after the body) are bytes that are not exactly one message: where the framer would wait or cut earlier.

Outgoing (:class:`OutgoingTracker`) runs the same framing over what the SIP stack writes, only to tell where
a whole message ends: those are the only places where a ping may be written (RFC 5626 §4.4.1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Literal, Optional, Union

from twisted_sipnat.errors import SIPFramingError

__all__ = [
    "SIPFramingError",
    "SIPData",
    "Ping",
    "Pong",
    "Event",
    "IncomingSplitter",
    "OutgoingTracker",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "contentLength",
    "findHeaderEnd",
    "headerBlockTooLong",
]

DEFAULT_MAX_MESSAGE_SIZE = 65536

_CRLF = b"\r\n"
_CRLFCRLF = b"\r\n\r\n"
_CR = 0x0D
_LF = 0x0A

# A Content-Length header line (long or compact form, RFC 3261 §7.3.3, §20.14), matched inside a header block
# from just after the start line: a header name always follows a CRLF and never begins with whitespace (that
# would make the line a continuation, §7.3.1).  HCOLON allows whitespace before the colon; the value runs to
# the end of the line including folded continuation lines.
_CONTENT_LENGTH = re.compile(rb"\r\n(?:content-length|l)[ \t]*:((?:[^\r\n]|\r\n[ \t])*)", re.IGNORECASE)
_LWS = b" \t\r\n"
# More digits than this cannot be a length we would accept, and int() of a few thousand digits raises
# ValueError under Python's integer-string limit: refuse long values before converting.
_MAX_LENGTH_DIGITS = 12





@dataclass(frozen=True, slots=True)
class SIPData:
    """Bytes of SIP messages, in stream order; part of a message, a whole one, or several."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    """A ``CRLFCRLF`` keepalive ping between messages (RFC 5626 §3.5.1); answer it with ``b"\\r\\n"``."""


@dataclass(frozen=True, slots=True)
class Pong:
    """A ``CRLF`` keepalive pong between messages (RFC 5626 §3.5.1)."""


Event = Union[SIPData, Ping, Pong]

_PING = Ping()
_PONG = Pong()

_BETWEEN = 0
_HEADERS = 1
_BODY = 2
_DEAD = 3


def findHeaderEnd(block: Union[bytes, bytearray], searchFrom: int, stop: int) -> int:
    """
    Where the header block that ``block`` holds ends: the offset just after the first ``CRLFCRLF`` found in
    ``block[searchFrom:stop]`` (RFC 3261 §7: the empty line after the headers), or -1 when there is none yet.

    This is one half of the one definition of "a message" that the framer here and the parser in
    :mod:`twisted_sipnat.core.sip` share: a header block is everything from the first byte of the start line
    up to and including the first ``CRLFCRLF``, and it must end within ``maxMessageSize`` bytes (callers pass
    ``stop = start + maxMessageSize``).  Only ``CRLF`` ends a line (RFC 3261 §7: lines end in CRLF); a bare LF
    never does.  ``searchFrom`` lets a caller that appends to ``block`` search only the new bytes (minus
    three, for a ``CRLFCRLF`` that straddles the old end).
    """
    end = block.find(_CRLFCRLF, searchFrom, stop)
    return end + 4 if end >= 0 else -1


def contentLength(block: Union[bytes, bytearray], start: int, end: int, limit: int) -> Optional[int]:
    """
    The body length that the header block ``block[start:end]`` (ending with its ``CRLFCRLF``) declares, or
    ``None`` when it has no Content-Length header.

    The other half of the shared definition of a message (see :func:`findHeaderEnd`): a Content-Length
    header is a line whose name is ``Content-Length`` or its compact form ``l`` in any case (RFC 3261 §7.3.3,
    §20.14), followed by optional SP/HTAB and the colon (HCOLON, §25.1); its value runs to the end of the line
    including folded continuation lines (§7.3.1) and must be ``1*DIGIT`` with LWS around it.  Several
    Content-Length headers must agree.  ``limit`` is how many body bytes the size bound still allows.

    Raises :class:`SIPFramingError` for a malformed, negative, conflicting or too large value.  What to do
    when the header is absent is the caller's rule: the framer takes an empty body (module docstring), the
    parser refuses a stream message without one (RFC 3261 §18.3).
    """
    length: Optional[int] = None
    # endpos excludes the final CRLF so the empty line cannot be read as a continuation of the last header.
    for match in _CONTENT_LENGTH.finditer(block, start, end - 2):
        raw = match.group(1)
        value = bytes(raw).replace(b"\r\n", b"").strip(_LWS)
        if value.startswith(b"-") and value[1:].isdigit():
            raise SIPFramingError(f"negative Content-Length {value[:20].decode('ascii')}")
        if not value or len(value) > _MAX_LENGTH_DIGITS or not value.isdigit():
            shown = bytes(raw[:40]).decode("ascii", "backslashreplace")
            raise SIPFramingError(f"malformed Content-Length {shown!r}")
        this = int(value)
        if length is not None and this != length:
            raise SIPFramingError(f"conflicting Content-Length values {length} and {this}")
        length = this
    if length is not None and length > limit:
        raise SIPFramingError(f"Content-Length {length} exceeds the message size limit")
    return length


def headerBlockTooLong(limit: int) -> str:
    """The reason given, by the framer and the parser alike, for a header block that does not end in time."""
    return f"header block longer than {limit} bytes"


class _Framer:
    """
    The message framing shared by both directions: header block search with a bounded copy, body counting.

    ``_consumeMessage`` advances through ``data`` from ``i`` while inside a message and returns the new
    offset; the message is complete when ``_state`` is back to ``_BETWEEN``.
    """

    __slots__ = ("_state", "_head", "_bodyLeft", "_maxMessageSize", "_reason")

    def __init__(self, maxMessageSize: int) -> None:
        if maxMessageSize < 4:
            raise ValueError(f"maxMessageSize must be at least 4, not {maxMessageSize}")
        self._state = _BETWEEN
        self._head = bytearray()
        self._bodyLeft = 0
        self._maxMessageSize = maxMessageSize
        self._reason = ""

    @property
    def buffered(self) -> int:
        """How many bytes of an unfinished header block are buffered (bounded by ``maxMessageSize``)."""
        return len(self._head)

    def _die(self, reason: str) -> SIPFramingError:
        self._state = _DEAD
        self._reason = reason
        self._head = bytearray()
        return SIPFramingError(reason)

    def _consumeMessage(self, data: bytes, i: int) -> int:
        """Consume message bytes from ``data[i:]``; return the offset after them.  Raises on bad framing."""
        n = len(data)
        if self._state == _HEADERS:
            head = self._head
            limit = self._maxMessageSize
            if not head:
                # Fast path: the whole header block is in this chunk; search and parse it in place.
                end = findHeaderEnd(data, i, i + limit)
                if end >= 0:
                    size = end - i
                    try:
                        self._bodyLeft = contentLength(data, i, end, limit - size) or 0
                    except SIPFramingError as e:
                        raise self._die(e.reason) from None
                    self._state = _BODY if self._bodyLeft else _BETWEEN
                    i = end
                    return self._consumeBody(data, i)
                if n - i >= limit:
                    raise self._die(headerBlockTooLong(limit))
                # The rest of the chunk was just searched: keep it for the next one without searching again.
                head += data[i:]
                return n
            # Slow path: the header block spans chunks; keep a bounded copy to find its end and parse it.
            old = len(head)
            take = min(n - i, limit - old)
            head += data[i : i + take]
            end = findHeaderEnd(head, max(0, old - 3), limit)
            if end < 0:
                if len(head) >= limit:
                    raise self._die(headerBlockTooLong(limit))
                return i + take
            try:
                self._bodyLeft = contentLength(head, 0, end, limit - end) or 0
            except SIPFramingError as e:
                raise self._die(e.reason) from None
            self._head = bytearray()
            self._state = _BODY if self._bodyLeft else _BETWEEN
            i += end - old
        return self._consumeBody(data, i)

    def _consumeBody(self, data: bytes, i: int) -> int:
        if self._state == _BODY:
            take = min(self._bodyLeft, len(data) - i)
            self._bodyLeft -= take
            i += take
            if not self._bodyLeft:
                self._state = _BETWEEN
        return i


class IncomingSplitter(_Framer):
    """
    Split a received SIP byte stream into SIP bytes and the RFC 5626 keepalives between messages.

    ``role`` is ``"client"`` (we send pings, so CRLFs between messages are :class:`Pong`\\ s) or ``"server"``
    (``CRLFCRLF`` between messages is a :class:`Ping`, a lone CRLF before a start line is dropped).
    ``maxMessageSize`` bounds one message, header block and body together (and so the bytes this object ever
    buffers).  See the module docstring for the whole machine.
    """

    __slots__ = ("_server", "_pendingCR", "_pendingCRLF", "_messages", "_partial")

    def __init__(self, role: Literal["client", "server"], maxMessageSize: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        if role not in ("client", "server"):
            raise ValueError(f"role must be 'client' or 'server', not {role!r}")
        super().__init__(maxMessageSize)
        self._server = role == "server"
        # Between messages, at the end of the last chunk: a CR whose LF has not arrived yet, and (server role)
        # a CRLF that is either the first half of a ping or noise before a start line.
        self._pendingCR = False
        self._pendingCRLF = False
        self._messages = 0
        self._partial = 0

    @property
    def messages(self) -> int:
        """How many whole messages (header block and body) have been received: what a connection table counts."""
        return self._messages

    @property
    def partial(self) -> int:
        """
        How many bytes of the message being received have arrived (header block and body so far; 0 between
        messages): what the receiver holds for it, once: the splitter holds an unfinished header block, the
        SIP protocol behind it the rest of the message once the header block was handed on whole.
        """
        return self._partial

    @property
    def pendingCR(self) -> bool:
        """True when the last byte received between messages was a CR whose LF has not arrived yet."""
        return self._pendingCR

    @property
    def role(self) -> str:
        return "server" if self._server else "client"

    @property
    def atBoundary(self) -> bool:
        """True when no message is partly received (keepalive bytes may still be pending)."""
        return self._state == _BETWEEN

    def feed(self, data: bytes) -> List[Event]:
        """
        Take the next received bytes; return what they contain, in stream order.

        Raises :class:`SIPFramingError` (and only that) when the stream cannot be framed; the events found
        before the error are on the exception's ``events``.
        """
        if self._state == _DEAD:
            raise SIPFramingError(self._reason)
        events: List[Event] = []
        if self._pendingCR:
            self._pendingCR = False
            data = b"\r" + data
        n = len(data)
        i = 0
        run = 0  # start of the SIP bytes not yet handed out
        # A header block held from earlier calls (only ever at the start of a call): its bytes go out first,
        # once this call completes it; until then they and this call's bytes of it stay in ``_head`` only.
        held = self._head if self._state == _HEADERS else None
        heldLength = len(held) if held is not None else 0
        messageStart = 0  # where, in ``data``, the message being received started (0: in an earlier call)
        try:
            while i < n:
                if self._state != _BETWEEN:
                    start = i
                    i = self._consumeMessage(data, i)
                    if held is not None and self._state != _HEADERS:
                        if heldLength:
                            events.append(SIPData(bytes(held[:heldLength])))
                        held = None
                    if self._state == _BETWEEN:
                        self._messages += 1
                        self._partial = 0
                    else:
                        self._partial += i - start
                    continue
                # Between messages: keepalive CRLFs, or the first byte of a message.
                if data[i] == _CR:
                    if i + 1 == n:
                        if i > run:
                            events.append(SIPData(data[run:i]))
                        self._pendingCR = True
                        return events
                    if data[i + 1] == _LF:
                        if i > run:
                            events.append(SIPData(data[run:i]))
                        i += 2
                        run = i
                        if not self._server:
                            events.append(_PONG)
                        elif self._pendingCRLF:
                            self._pendingCRLF = False
                            events.append(_PING)
                        else:
                            self._pendingCRLF = True
                        continue
                # A message starts here; a lone server-role CRLF before it was noise (RFC 3261 §7.5).
                self._pendingCRLF = False
                self._state = _HEADERS
                messageStart = i
                held = self._head  # empty: filled only if the header block does not end in this call
                heldLength = 0
        except SIPFramingError as e:
            if i > run:
                events.append(SIPData(data[run:i]))
            e.events = events
            # the failing message's bytes, the held part of its header block first, within what one message may
            # have in all
            before = bytes(held[:heldLength]) if held is not None else b""
            e.unframed = before + data[i : i + max(0, self._maxMessageSize - self._partial)]
            raise
        if self._state == _HEADERS:
            n = messageStart  # the unfinished header block is held, not handed on
        if n > run:
            events.append(SIPData(data if run == 0 and n == len(data) else data[run:n]))
        return events


class OutgoingTracker(_Framer):
    """
    Follow what the SIP stack writes to a stream and tell where whole messages end.

    Those ends are the only places where a keepalive may be written between the stack's bytes.  CRLFs that
    the stack itself writes between messages (its own pings or pongs) keep the stream at a boundary once they
    are complete.  Raises :class:`SIPFramingError` like :class:`IncomingSplitter` when the stack's output
    cannot be framed.
    """

    __slots__ = ("_pendingCR",)

    def __init__(self, maxMessageSize: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        super().__init__(maxMessageSize)
        self._pendingCR = False

    @property
    def atBoundary(self) -> bool:
        """True when nothing partial is pending: no partly written message and no half-written CRLF."""
        return self._state == _BETWEEN and not self._pendingCR

    def feed(self, data: bytes) -> List[int]:
        """
        Take the next bytes the SIP stack writes; return the offsets within ``data`` at which the stream is
        at a boundary again (after a whole message or a whole CRLF), in increasing order.
        """
        if self._state == _DEAD:
            raise SIPFramingError(self._reason)
        offsets: List[int] = []
        n = len(data)
        i = 0
        if self._pendingCR and n:
            self._pendingCR = False
            if data[0] == _LF:
                i = 1
                offsets.append(1)
            else:
                # The CR was the first byte of a message after all.
                self._state = _HEADERS
                self._head = bytearray(b"\r")
        while i < n:
            if self._state != _BETWEEN:
                i = self._consumeMessage(data, i)
                if self._state == _BETWEEN:
                    offsets.append(i)
                continue
            if data[i] == _CR:
                if i + 1 == n:
                    self._pendingCR = True
                    break
                if data[i + 1] == _LF:
                    i += 2
                    offsets.append(i)
                    continue
            self._state = _HEADERS
        return offsets
