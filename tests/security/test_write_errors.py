"""
UDP writes that fail: Twisted's ``udp.Port.write`` re-raises every ``sendto`` error but EINTR/EMSGSIZE/
ECONNREFUSED, so ENETUNREACH (the interface went down), EHOSTUNREACH, EPERM (a firewall rule) or EINVAL reach
whoever wrote.  A failed write is a lost datagram: the keepalive's retransmissions and timeout must then report
the failure as for any loss -- not leak the transaction, silently stop the flow, raise out of
``resolvePublicAddress`` or log a traceback.  Likewise an answer the STUN server role cannot send.
"""

from __future__ import annotations

import errno
import random
from typing import Any, List, Tuple

import pytest
from fuzz.support import Observer, assertNoLoggedFailure, watchingLogs
from twisted.internet.task import Clock

from tests.addresses import HOP, SERVER
from twisted_sipnat import NATSettings, NATTraversalController, STUNTimeout, stun
from twisted_sipnat.testing import FakeDatagramTransport, answerAll, sharedDatagramSocket

ERRNOS = [errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EPERM, errno.EINVAL, errno.ENOBUFS]


def failingWrites(transport: FakeDatagramTransport, code: int) -> List[bool]:
    """Make ``transport.write`` raise OSError(``code``) while the returned switch is on (as udp.Port.write)."""
    down = [False]
    write = transport.write

    def maybeFail(packet: bytes, addr: Any = None) -> None:
        if down[0]:
            raise OSError(code, "simulated sendto failure")
        write(packet, addr)

    transport.write = maybeFail  # type: ignore[method-assign]
    return down


def setup(**settings: Any) -> Tuple[Clock, NATTraversalController, Any, FakeDatagramTransport]:
    clock = Clock()
    controller = NATTraversalController(NATSettings(**settings), reactor=clock, rng=random.Random(3))
    shared, transport = sharedDatagramSocket(controller)
    return clock, controller, shared, transport


@pytest.mark.parametrize("code", ERRNOS)
def test_keepalive_write_errors_are_loss_and_the_flow_fails_once(code: int) -> None:
    clock, controller, shared, transport = setup(udpKeepaliveInterval=25)
    down = failingWrites(transport, code)
    observer = Observer()
    controller.refreshNATBinding(shared, observer, HOP)
    clock.advance(25)
    assert answerAll(shared, transport) == 1
    down[0] = True
    with watchingLogs() as logs:
        for _ in range(1000):
            clock.advance(0.1)
    assertNoLoggedFailure(logs)
    assert len(observer.failures) == 1 and observer.failures[0].check(STUNTimeout)
    assert controller.pendingTransactionCount == 0 and not controller.isKeepingAlive(observer)
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("code", ERRNOS)
def test_resolve_with_failing_writes_errbacks_stuntimeout(code: int) -> None:
    clock, controller, shared, transport = setup(stunServers=[SERVER])
    down = failingWrites(transport, code)
    down[0] = True
    results: List[Any] = []
    with watchingLogs() as logs:
        controller.resolvePublicAddress(None, shared, HOP).addBoth(results.append)
        clock.advance(40)
    assertNoLoggedFailure(logs)
    assert len(results) == 1 and results[0].check(STUNTimeout)
    assert controller.pendingTransactionCount == 0 and clock.getDelayedCalls() == []


@pytest.mark.parametrize("code", ERRNOS)
def test_an_answer_that_cannot_be_sent_logs_no_traceback(code: int) -> None:
    clock = Clock()
    shared, transport = sharedDatagramSocket(None, None, stunResponder=True, clock=clock)
    failingWrites(transport, code)[0] = True
    with watchingLogs() as logs:
        shared.datagramReceived(stun.Message(stun.BINDING, stun.REQUEST).encode(), ("203.0.113.9", 5060))
    assertNoLoggedFailure(logs)


def test_bare_transport_write_errors_are_loss_too() -> None:
    clock = Clock()
    controller = NATTraversalController(NATSettings(udpKeepaliveInterval=25), reactor=clock, rng=random.Random(3))
    transport = FakeDatagramTransport()  # the socket is the SIP stack's own transport, no shared protocol
    down = failingWrites(transport, errno.ENETUNREACH)
    observer = Observer()
    controller.refreshNATBinding(transport, observer, HOP)
    down[0] = True
    with watchingLogs() as logs:
        for _ in range(1000):
            clock.advance(0.1)
    assertNoLoggedFailure(logs)
    assert len(observer.failures) == 1 and observer.failures[0].check(STUNTimeout)
    assert controller.pendingTransactionCount == 0 and clock.getDelayedCalls() == []
