"""
twisted_sipnat.service.client: the client role against the stun and edge roles, on a simulated loopback network
(a ``task.Clock``) and on the real reactor.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock

from twisted_sipnat import NATSettings, stun
from twisted_sipnat.errors import InvalidSettingsError
from twisted_sipnat.service.client import ClientRole
from twisted_sipnat.service.edge import EdgeRole
from twisted_sipnat.service.stunserver import STUNRole

from .support import NetReactor, clientFor


def test_clientResolvesAndKeepsAliveAgainstStunRole() -> None:
    net = NetReactor()
    server = STUNRole(net, udp=(3478, "127.0.0.1"))
    client = clientFor(net, ("127.0.0.1", 3478), interval=10.0)
    server.startService()
    client.startService()
    net.run(1)
    assert client.publicAddress == IPv4Address("UDP", "127.0.0.1", client.listener.address()[1])
    assert client.keepalivesStarted == 1
    net.run(35)
    requests = [d for d, src, dst in net.sent if dst == ("127.0.0.1", 3478) and stun.isSTUN(d)]
    assert 1 + 3 <= len(requests) <= 1 + 4, "a resolve and a keepalive every 8-10 s"
    assert client.failures == 0
    client.stopService()
    server.stopService()
    assert net.getDelayedCalls() == []
    assert net.ports == {}


def _runUntilRetry(net: NetReactor, client: ClientRole, limit: float = 300.0) -> float:
    """Advance until the client has scheduled a retry; returns the time it did."""
    for _ in range(int(limit / 0.25)):
        if client.retryAt is not None:
            return net.seconds()
        net.advance(0.25)
    raise AssertionError("no retry scheduled")


def test_flowFailureResolvesAgainAfterBackoff() -> None:
    net = NetReactor()
    server = STUNRole(net, udp=(3478, "127.0.0.1"))
    client = clientFor(net, ("127.0.0.1", 3478), interval=10.0, random=lambda: 0.0)
    server.startService()
    client.startService()
    net.run(1)
    assert client.keepalivesStarted == 1
    net.drop = True  # the path dies: the next keepalive (8-10 s from now) goes unanswered for 39.5 s
    failedAt = _runUntilRetry(net, client)
    assert client.failures == 1
    assert 8 + 39.5 - 0.3 <= failedAt <= 1 + 10 + 39.5 + 0.3, "keepalive at 8-10 s after the resolve, unanswered for 39.5 s"
    assert client.retryAt - failedAt == pytest.approx(30.0, abs=0.25), "50 % of 30 s x 2^1 (random=0)"
    net.drop = False
    net.run(31)
    assert client.keepalivesStarted == 2, "resolved again and resumed"
    assert client.recovery.failures[1] == 0, "a success resets the backoff"
    client.stopService()
    server.stopService()
    assert net.getDelayedCalls() == []


def test_unreachableServerRetriesWithGrowingBackoff() -> None:
    net = NetReactor()
    client = clientFor(net, ("127.0.0.1", 3478), random=lambda: 0.0)
    client.startService()
    first = _runUntilRetry(net, client)
    assert first == pytest.approx(39.5, abs=0.3), "RFC 8489 gives up at 39.5 s"
    assert client.publicAddress is None
    assert client.retryAt - first == pytest.approx(30.0, abs=0.25), "50 % of 30 s x 2^1"
    net.advance(30.0)
    second = _runUntilRetry(net, client)
    assert client.retryAt - second == pytest.approx(60.0, abs=0.25), "doubled"
    client.stopService()
    assert net.getDelayedCalls() == []
    assert net.ports == {}


def test_stopDuringResolutionLeavesNothing() -> None:
    net = NetReactor()
    client = clientFor(net, ("127.0.0.1", 3478))
    client.startService()
    net.run(2)
    client.stopService()
    assert net.getDelayedCalls() == []
    assert net.ports == {}


def test_clientRefusesUnknownDomain() -> None:
    with pytest.raises(InvalidSettingsError) as info:
        ClientRole(Clock(), ("127.0.0.1", 5060), {"a": NATSettings()}, "b")
    assert info.value.key == "domain"


def test_clientRegistersWithEdgeAndUsesFlowTimer() -> None:
    net = NetReactor()
    edge = EdgeRole(net, udp=(5060, "127.0.0.1"), domain="example.com", flowTimer=20)
    client = clientFor(net, ("127.0.0.1", 5060), interval=90.0, register="alice@example.com")
    edge.startService()
    client.startService()
    net.run(1)
    assert client.flowTimer == 20
    bindings = edge.registry.lookup("sip:alice@example.com", net.seconds())
    assert len(bindings) == 1
    contact = bindings[0].uri
    assert (contact.host, contact.port) == ("127.0.0.1", client.listener.address()[1])
    sentAt = len(net.sent)
    net.run(41)
    keepalives = [d for d, src, dst in net.sent[sentAt:] if dst == ("127.0.0.1", 5060) and stun.isSTUN(d)]
    assert 2 <= len(keepalives) <= 3, "every 16-20 s (Flow-Timer 20), not every 72-90 s"
    answers = [d for d, src, dst in net.sent[sentAt:] if src == ("127.0.0.1", 5060) and stun.isSTUN(d)]
    assert len(answers) == len(keepalives), "the edge answers STUN on its SIP port"
    assert client.failures == 0
    client.stopService()
    edge.stopService()
    assert net.getDelayedCalls() == [], "no registry expiry timer either"
    assert net.ports == {}


def test_clientRefreshesItsRegistrationBeforeItLapses() -> None:
    net = NetReactor()
    edge = EdgeRole(net, udp=(5060, "127.0.0.1"), domain="example.com", flowTimer=600)
    client = clientFor(net, ("127.0.0.1", 5060), register="alice@example.com")
    edge.startService()
    client.startService()
    net.run(1)
    assert client.flowTimer == 600
    registers = lambda: [d for d, src, dst in net.sent if d.startswith(b"REGISTER ")]  # noqa: E731
    assert len(registers()) == 1
    # RegisterProxy grants 3600 s: refreshed at 90 % of that.
    net.run(0.9 * 3600 + 1, step=5.0)
    assert len(registers()) == 2
    assert client.failures == 0
    assert client.refreshAt is not None
    client.stopService()
    edge.stopService()
    assert net.getDelayedCalls() == []


def test_failedRefreshIsAFlowFailure() -> None:
    net = NetReactor()
    edge = EdgeRole(net, udp=(5060, "127.0.0.1"), domain="example.com")
    # Keepalives off (interval 0), so the only thing that can notice the dead registrar is the refresh.
    client = clientFor(net, ("127.0.0.1", 5060), register="alice@example.com", random=lambda: 0.0, interval=0.0)
    edge.startService()
    client.startService()
    net.run(1)
    assert client.keepalivesStarted == 1 and client.failures == 0
    edge.stopService()  # the registrar goes away
    net.run(0.9 * 3600 + 33, step=1.0)  # the refresh REGISTER times out (Timer F, 32 s)
    assert client.failures == 1
    assert client.retryAt is not None
    client.stopService()
    assert net.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_clientRoleStopsCleanlyOnTheRealReactor() -> None:
    from twisted.internet import reactor

    before = set(reactor.getDelayedCalls())
    server = STUNRole(reactor, udp=(0, "127.0.0.1"), rateLimit=None)
    server.startService()
    client = ClientRole(reactor, server.address, {"default": NATSettings(udpKeepaliveInterval=0.2)}, "default",
                        listen=(0, "127.0.0.1"))
    client.startService()
    address = await client.ready
    assert address.port == client.listener.address()[1]
    from twisted.internet import task

    await task.deferLater(reactor, 0.5)
    assert client.controller.stats["keepalive.answered"] >= 1
    await client.stopService()
    await server.stopService()
    assert set(reactor.getDelayedCalls()) <= before, "no timer left"


def test_the_role_events_carry_sipnat_event_and_never_a_log_prefixed_key() -> None:
    from typing import Any, Dict, List

    from twisted.logger import globalLogPublisher

    events: List[Dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        net = NetReactor()
        edge = EdgeRole(net, udp=(5060, "127.0.0.1"), domain="example.com", flowTimer=20)
        client = clientFor(net, ("127.0.0.1", 5060), register="alice@example.com")
        edge.startService()
        client.startService()
        net.run(1)
        client.stopService()
        edge.stopService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    names = [e["sipnat_event"] for e in events if "sipnat_event" in e]
    for name in ("sipnat.client.publicAddress", "sipnat.edge.registered", "sipnat.client.registered",
                 "sipnat.client.keepalive.started"):
        assert name in names
    assert [e for e in events if "log_event" in e] == []
    ours = {e["log_namespace"] for e in events if "sipnat_event" in e}
    assert all(n == "twisted_sipnat" or n.startswith("twisted_sipnat.") for n in ours), ours
