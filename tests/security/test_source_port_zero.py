"""
A datagram with source port 0 is deliverable (a raw socket can send one; Linux hands it to the bound UDP socket
with ``addr[1] == 0``), but nothing can be sent back to port 0: ``sendto`` fails with EINVAL, and Twisted's
``udp.Port.write`` re-raises it.  A STUN request from port 0 must therefore get no answer rather than a
write that raises and a traceback in the log for every such datagram (bad input off the wire).

(The premise was checked for real as root: a raw-socket UDP datagram from 127.0.0.1:0 arrives at a bound
socket as ``('127.0.0.1', 0)``.)
"""

from __future__ import annotations

from typing import Iterator, Tuple

import pytest
from fuzz.support import DatagramRecorder, assertNoLoggedFailure, watchingLogs
from twisted.internet import reactor, udp

from twisted_sipnat import stun
from twisted_sipnat.core.responder import BindingResponder
from twisted_sipnat.protocols import SharedDatagramProtocol


@pytest.fixture
def realPort() -> Iterator[udp.Port]:
    """A real Twisted UDP port bound on loopback, not registered with the reactor (nothing is read from it)."""
    shared = SharedDatagramProtocol(sipProtocol=DatagramRecorder(), stunResponder=True)
    port = udp.Port(0, shared, interface="127.0.0.1", reactor=reactor)
    port._bindSocket()
    shared.makeConnection(port)
    try:
        yield port
    finally:
        port.socket.close()


def test_twisted_port_write_to_port_zero_raises(realPort: udp.Port) -> None:
    """The premise: this is what the shared socket's transport does with such a destination."""
    with pytest.raises(OSError):
        realPort.write(b"x", ("127.0.0.1", 0))


@pytest.mark.parametrize("source", [("127.0.0.1", 0), ("::1", 0)])
def test_request_from_port_zero_is_not_answered_and_logs_no_traceback(realPort: udp.Port, source: Tuple[str, int]) -> None:
    shared = realPort.protocol
    with watchingLogs() as logs:
        shared.datagramReceived(stun.Message(stun.BINDING, stun.REQUEST).encode(), source)
    assertNoLoggedFailure(logs)
    assert shared.stats["stun.requests.unanswered"] == 1


def test_responder_refuses_port_zero() -> None:
    request = stun.Message(stun.BINDING, stun.REQUEST).encode()
    assert BindingResponder().respond(request, ("198.51.100.7", 0)) is None
    assert BindingResponder().respond(request, ("198.51.100.7", 1)) is not None
