"""
The stream REGISTER client (TCP/TLS) under a hostile or broken next hop: what it buffers is bounded, junk never
earns a traceback, and a forged response on the connection cannot complete the registration.

- A header block that never ends is cut at ``maxMessageSize`` (the splitter in front and the client's own
  ``MessageBuffer`` have the same bound): the connection is closed, the REGISTER fails, nothing more is held.
- A Content-Length beyond the bound is refused at once, not waited for.
- Arbitrary bytes in arbitrary pieces: no exception escapes, and the client ends either still waiting, or
  with a typed failure.
"""

from __future__ import annotations

from typing import Any, List

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from tests.service.streamkit import answer, streamClient
from twisted_sipnat.core.sipframing import DEFAULT_MAX_MESSAGE_SIZE
from twisted_sipnat.errors import NATTraversalError, RegistrationConnectionLost


def test_a_header_block_that_never_ends_is_cut_at_the_bound() -> None:
    clock = Clock()
    client, endpoint, _ = streamClient(clock, maxMessageSize=4096)
    got: List[Any] = []
    client.register().addBoth(got.append)
    conn = endpoint.last.accept()
    conn.receive(b"SIP/2.0 200 OK\r\n")
    for _ in range(200):  # 200 KB of header lines, 50 times the bound
        if conn.closed:
            break
        conn.receive(b"X-Flood: " + b"a" * 1000 + b"\r\n")
    assert conn.closed, "the connection is closed once a header block passes maxMessageSize"
    assert conn.protocol.splitter.partial <= 4096
    sip = conn.protocol.wrappedProtocol
    assert len(sip.buffer) <= 4096
    conn.lose()
    assert isinstance(got[0], Failure) and got[0].check(RegistrationConnectionLost)
    assert len(sip.buffer) == 0  # nothing held after the connection went
    assert clock.getDelayedCalls() == []


def test_a_content_length_beyond_the_bound_is_refused_at_once() -> None:
    clock = Clock()
    client, endpoint, _ = streamClient(clock)
    client.register().addErrback(lambda _: None)
    conn = endpoint.last.accept()
    conn.receive(b"SIP/2.0 200 OK\r\nContent-Length: %d\r\n\r\n" % (10 * DEFAULT_MAX_MESSAGE_SIZE))
    assert conn.closed
    conn.lose()


def test_a_response_forged_on_the_connection_completes_nothing() -> None:
    clock = Clock()
    client, endpoint, _ = streamClient(clock)
    got: List[Any] = []
    client.register().addBoth(got.append)
    conn = endpoint.last.accept()
    [request] = conn.requests()
    forged = answer(request).replace(b"branch=z9hG4bK", b"branch=z9hG4bKforged")
    conn.receive(forged)
    assert got == [] and client.stats["dropped.unmatched"] == 1
    conn.receive(answer(request))
    assert got and not isinstance(got[0], Failure)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=12))
def test_junk_on_the_connection_never_raises_or_logs_a_traceback(chunks: List[bytes]) -> None:
    clock = Clock()
    client, endpoint, _ = streamClient(clock)
    got: List[Any] = []
    client.register().addBoth(got.append)
    conn = endpoint.last.accept()
    logged: List[Any] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        for chunk in chunks:
            conn.receive(chunk)
        conn.lose()
    finally:
        globalLogPublisher.removeObserver(logged.append)
    # junk cannot carry this REGISTER's random branch: the connection's loss ends it, with a typed failure
    assert len(got) == 1 and isinstance(got[0], Failure) and got[0].check(NATTraversalError)
    assert not [e for e in logged if e.get("log_failure") is not None]
    clock.advance(64)
    assert clock.getDelayedCalls() == []
