"""
Whole SIP messages out of the SIP bytes of a stream, for a server that parses one message at a time.

``SharedStreamFactory``'s splitter (:class:`~twisted_sipnat.core.sipframing.IncomingSplitter`) takes the
keepalives out of a stream and hands the SIP bytes on as they arrive: part of a message, a whole one or several
(:class:`~twisted_sipnat.core.sipframing.SIPData`).  :class:`MessageBuffer` cuts those bytes back into messages
with the very definition the splitter and the parser share (:func:`~twisted_sipnat.core.sipframing.findHeaderEnd`
and :func:`~twisted_sipnat.core.sipframing.contentLength`, an absent Content-Length meaning an empty body as
there), so the three never disagree about where a message ends.  It holds at most one unfinished message, and
never more than ``maxMessageSize`` bytes of it.
"""

from __future__ import annotations

from typing import List

from .sipframing import (
    DEFAULT_MAX_MESSAGE_SIZE,
    SIPFramingError,
    contentLength,
    findHeaderEnd,
    headerBlockTooLong,
)

__all__ = ["MessageBuffer"]


class MessageBuffer:
    """
    :meth:`feed` the SIP bytes of one stream in order; get the messages they complete.  Raises
    :class:`~twisted_sipnat.errors.SIPFramingError` where the stream cannot be framed (the splitter in front
    would have raised first); after that the buffer is dead and raises again.
    """

    __slots__ = ("maxMessageSize", "_buffer", "_searched", "_headerEnd", "_length", "_dead")

    def __init__(self, maxMessageSize: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.maxMessageSize = maxMessageSize
        self._buffer = bytearray()
        self._searched = 0  # how much of the current header block was searched for its end already
        self._headerEnd = -1  # where the current message's header block ends, once found
        self._length = 0  # and its body length
        self._dead = False

    def __len__(self) -> int:
        """Bytes held of an unfinished message."""
        return len(self._buffer)

    def unframed(self) -> bytes:
        """
        Once :meth:`feed` raised: the bytes of the message that could not be framed (at most
        ``maxMessageSize`` of them), handed out once, so that the server can still answer it with a 400.
        """
        unframed = bytes(self._buffer[: self.maxMessageSize])
        self._buffer = bytearray()
        return unframed

    def feed(self, data: bytes) -> List[bytes]:
        if self._dead:
            raise SIPFramingError("the stream could not be framed")
        buffer = self._buffer
        buffer += data
        messages: List[bytes] = []
        limit = self.maxMessageSize
        while buffer:
            end = self._headerEnd
            if end < 0:
                end = findHeaderEnd(buffer, max(0, self._searched - 3), limit)
                if end < 0:
                    if len(buffer) >= limit:
                        self._dead = True
                        raise SIPFramingError(headerBlockTooLong(limit))
                    self._searched = len(buffer)
                    break
                try:
                    self._length = contentLength(buffer, 0, end, limit - end) or 0
                except SIPFramingError:
                    self._dead = True
                    raise
                self._headerEnd = end
            if len(buffer) < end + self._length:
                break
            messages.append(bytes(buffer[: end + self._length]))
            del buffer[: end + self._length]
            self._searched, self._headerEnd, self._length = 0, -1, 0
        return messages
