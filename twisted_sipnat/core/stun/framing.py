"""STUN over TCP: splitting a byte stream into whole messages by the header's length field (RFC 8489 §6.2.2)."""

from __future__ import annotations

import struct
from typing import List

from twisted_sipnat.core.stun.header import HEADER_LENGTH, MAGIC_COOKIE, STUNDecodeError
from twisted_sipnat.errors import STUNMessageTooLarge

__all__ = ["MAX_STREAM_MESSAGE", "StreamFramer"]

_LENGTH_COOKIE = struct.Struct("!2xHI")

#: The largest message a STUN header can announce (a 16-bit length of whole 4-byte words).
MAX_STREAM_MESSAGE = HEADER_LENGTH + 65532


class StreamFramer:
    """
    Split a STUN-over-TCP byte stream into whole messages by the header's length field (RFC 8489 §6.2.2).

    :meth:`feed` raises :class:`STUNDecodeError` as soon as the bytes at a message boundary cannot start a
    STUN header (leading bits, cookie, length); the stream is then out of sync and the connection should be
    closed.  The buffer is bounded by one maximal message (20 + 65532 bytes), or by ``maxMessageSize``: a
    header announcing a longer message is refused as soon as its length field arrives, so a server whose
    clients only send small requests never buffers more than that per connection.
    """

    __slots__ = ("_buffer", "maxMessageSize")

    def __init__(self, maxMessageSize: int = MAX_STREAM_MESSAGE) -> None:
        if maxMessageSize < HEADER_LENGTH:
            raise ValueError(f"maxMessageSize must be at least {HEADER_LENGTH}, not {maxMessageSize}")
        self._buffer = bytearray()
        self.maxMessageSize = maxMessageSize

    @property
    def buffered(self) -> int:
        """How many bytes wait for the rest of their message."""
        return len(self._buffer)

    def feed(self, data: bytes) -> List[bytes]:
        """The whole messages ``data`` completes; raises :class:`STUNDecodeError` (and drops the buffer: the
        stream is out of sync for good) when the stream stops looking like STUN."""
        self._buffer += data
        try:
            return self._split(self._buffer, self.maxMessageSize)
        except STUNDecodeError:
            self._buffer = bytearray()
            raise

    @staticmethod
    def _split(buf: bytearray, maxMessageSize: int = MAX_STREAM_MESSAGE) -> List[bytes]:
        out: List[bytes] = []
        while buf:
            if buf[0] & 0xC0:
                raise STUNDecodeError("stream is not STUN: leading bits are not zero", bytes(buf[:20]))
            if len(buf) < 8:
                break
            length, cookie = _LENGTH_COOKIE.unpack_from(buf)
            if cookie != MAGIC_COOKIE:
                raise STUNDecodeError(f"stream is not STUN: bad magic cookie {cookie:#010x}", bytes(buf[:20]))
            if length & 3:
                raise STUNDecodeError(f"stream is not STUN: length {length} not a multiple of 4", bytes(buf[:20]))
            total = HEADER_LENGTH + length
            if total > maxMessageSize:
                raise STUNMessageTooLarge(f"message of {total} bytes is over this stream's {maxMessageSize}",
                                          bytes(buf[:20]))
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
        return out
