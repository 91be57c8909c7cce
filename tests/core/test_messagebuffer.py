"""twisted_sipnat.core.messagebuffer: whole messages back out of SIP bytes cut anywhere."""

from __future__ import annotations

from typing import List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twisted_sipnat.core.messagebuffer import MessageBuffer
from twisted_sipnat.core.sip import parse
from twisted_sipnat.errors import SIPFramingError


def _message(n: int, body: bytes, length: str = "Content-Length") -> bytes:
    head = (f"MESSAGE sip:u@example.com SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK{n}\r\nCall-ID: {n}\r\n"
            f"CSeq: {n} MESSAGE\r\n{length}: {len(body)}\r\n\r\n")
    return head.encode() + body


_bodies = st.binary(max_size=60).map(lambda b: b.replace(b"x", b"\r\n\r\n"))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_bodies, st.sampled_from(["Content-Length", "l", "content-length ", "Content-Length\t"])),
                min_size=1, max_size=5),
       st.lists(st.integers(1, 200), max_size=30))
def test_messagesCutAnywhereComeOutWhole(specs: List[tuple], cuts: List[int]) -> None:  # type: ignore[type-arg]
    messages = [_message(i, body, length) for i, (body, length) in enumerate(specs)]
    stream = b"".join(messages)
    buffer = MessageBuffer()
    out: List[bytes] = []
    at = 0
    for cut in cuts:
        out += buffer.feed(stream[at : at + cut])
        at += cut
    out += buffer.feed(stream[at:])
    assert out == messages
    assert len(buffer) == 0
    for message in out:
        parse(message, stream=True)


def test_noContentLengthIsAnEmptyBodyAsTheSplitterSays() -> None:
    message = b"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/TCP h\r\n\r\n"
    assert MessageBuffer().feed(message + message) == [message, message]


def test_unfinishedHeaderBlockIsBoundedAndKillsTheBuffer() -> None:
    buffer = MessageBuffer(maxMessageSize=100)
    assert buffer.feed(b"REGISTER sip:x SIP/2.0\r\nX: " + b"a" * 50) == []
    with pytest.raises(SIPFramingError):
        buffer.feed(b"a" * 60)
    with pytest.raises(SIPFramingError):
        buffer.feed(b"\r\n\r\n")


def test_conflictingContentLengthsKillTheBuffer() -> None:
    with pytest.raises(SIPFramingError):
        MessageBuffer().feed(b"INFO sip:x SIP/2.0\r\nContent-Length: 1\r\nl: 2\r\n\r\nab")
