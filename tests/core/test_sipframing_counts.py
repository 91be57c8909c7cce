"""
``IncomingSplitter.messages`` and ``.partial``, what the connection table is told: the whole messages received
so far, and the bytes of the one being received (header block and body), whatever the cuts between reads.
"""

from __future__ import annotations

from typing import List

from hypothesis import given, settings
from hypothesis import strategies as st

from twisted_sipnat.core.sipframing import IncomingSplitter


def message(body: bytes) -> bytes:
    return (b"OPTIONS sip:a@example.com SIP/2.0\r\nCall-ID: x\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


@settings(max_examples=200, deadline=None)
@given(bodies=st.lists(st.binary(max_size=40), min_size=1, max_size=5), pings=st.booleans(),
       cuts=st.lists(st.integers(1, 400), max_size=20), tail=st.integers(0, 30))
def test_messages_and_partial_follow_the_stream(bodies: List[bytes], pings: bool, cuts: List[int],
                                                 tail: int) -> None:
    whole = (b"\r\n\r\n" if pings else b"").join(message(body) for body in bodies)
    last = message(b"z" * 20)[:tail]  # a message still being received
    stream = whole + (b"\r\n\r\n" if pings else b"") + last
    splitter = IncomingSplitter("server")
    position = 0
    for cut in cuts + [len(stream)]:
        chunk = stream[position:position + cut]
        position += len(chunk)
        splitter.feed(chunk)
        if position >= len(stream):
            break
    splitter.feed(stream[position:])
    assert splitter.messages == len(bodies)
    assert splitter.partial == len(last)
    assert splitter.partial >= splitter.buffered


def test_a_body_still_arriving_is_counted_though_the_splitter_does_not_copy_it() -> None:
    splitter = IncomingSplitter("server")
    head = message(b"b" * 1000)[:-1000]
    splitter.feed(head + b"b" * 600)
    assert splitter.buffered == 0 and splitter.partial == len(head) + 600 and splitter.messages == 0
    splitter.feed(b"b" * 400)
    assert splitter.partial == 0 and splitter.messages == 1
