"""twisted_sipnat.service.sipclient: the RFC 3261 REGISTER client, on a simulated loopback network."""

from __future__ import annotations

from typing import Any, List

import pytest
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from twisted_sipnat.errors import InvalidSettingsError, RegistrationError
from twisted_sipnat.service.edge import EdgeRole
from twisted_sipnat.service.sipclient import RegisterClient

from .support import NetReactor


def test_registerRetransmitsThenTimesOut() -> None:
    net = NetReactor()
    ua = RegisterClient(net, "alice@example.com", ("127.0.0.1", 5999))
    port = net.listenUDP(0, ua)
    failures: List[Failure] = []
    ua.register(("127.0.0.1", port.port)).addErrback(failures.append)
    net.run(33, step=0.25)
    writes = [src for d, src, dst in net.sent if dst == ("127.0.0.1", 5999)]
    # RFC 3261 Timer E: 0, 0.5, 1.5, 3.5, 7.5, then every 4 s until Timer F (32 s)
    assert len(writes) == 11
    assert failures and failures[0].check(RegistrationError)
    assert failures[0].value.code is None
    assert net.getDelayedCalls() == []
    port.stopListening()


def test_registerErrorResponse() -> None:
    net = NetReactor()
    edge = EdgeRole(net, udp=(5060, "127.0.0.1"), domain="example.com")
    edge.startService()
    ua = RegisterClient(net, "alice@other.example", ("127.0.0.1", 5060))
    port = net.listenUDP(0, ua)
    results: List[Any] = []
    ua.register(("127.0.0.1", port.port)).addBoth(results.append)
    net.run(1)
    # RegisterProxy answers nothing for a foreign domain (Twisted's registry errback is swallowed), so this is
    # a timeout, never a crash.
    net.run(33, step=0.5)
    assert isinstance(results[0], Failure) and results[0].check(RegistrationError)
    port.stopListening()
    edge.stopService()
    assert net.getDelayedCalls() == []


def test_registerClientIgnoresGarbageAndStrangers() -> None:
    net = NetReactor()
    ua = RegisterClient(net, "sip:alice@example.com", ("127.0.0.1", 5999))
    port = net.listenUDP(0, ua)
    d = ua.register(("127.0.0.1", port.port))
    ua.datagramReceived(b"\xff\x00garbage\r\n\r\n", ("127.0.0.1", 5999))
    ua.datagramReceived(b"SIP/2.0 200 OK\r\nCall-ID: other\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n",
                        ("127.0.0.1", 5999))
    assert not d.called
    ua.datagramReceived(
        f"SIP/2.0 403 Forbidden\r\nCall-ID: {ua.callId}\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n".encode(),
        ("127.0.0.1", 5999))
    net.run(0.1)
    failures: List[Failure] = []
    d.addErrback(failures.append)
    assert failures[0].value.code == 403
    assert net.getDelayedCalls() == []
    port.stopListening()


def test_registerClientNeedsAnAOR() -> None:
    with pytest.raises(InvalidSettingsError) as info:
        RegisterClient(Clock(), "example.com", ("127.0.0.1", 5060))
    assert info.value.key == "register"
