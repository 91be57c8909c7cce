"""twisted_sipnat.service.stunserver: the stun role, on a simulated network and on real loopback sockets."""

from __future__ import annotations

import socket
from typing import List

import pytest
import pytest_twisted
from twisted.internet import protocol
from twisted.internet.task import Clock

from twisted_sipnat import stun
from twisted_sipnat.errors import InvalidSettingsError
from twisted_sipnat.service.stunserver import STUNRole

from .support import Collector, NetReactor, nextItem


def test_stunRoleAlternateNeedsPrimaryInterface() -> None:
    with pytest.raises(InvalidSettingsError) as info:
        STUNRole(Clock(), udp=(3478, ""), alternate=("127.0.0.2", 3479))
    assert info.value.key == "alternate"


def test_stunRoleRateLimitsPerSource() -> None:
    net = NetReactor()
    server = STUNRole(net, udp=(3478, "127.0.0.1"), rateLimit=(1.0, 2))
    server.startService()
    client = net.listenUDP(0, protocol.DatagramProtocol())
    answers: List[bytes] = []
    client.protocol.datagramReceived = lambda data, addr: answers.append(data)  # type: ignore[method-assign]
    for _ in range(5):
        client.write(stun.Message(stun.BINDING, stun.REQUEST).encode(), ("127.0.0.1", 3478))
    net.run(0.2)
    assert len(answers) == 2, "burst 2, then limited"
    client.stopListening()
    server.stopService()
    assert net.ports == {}


@pytest_twisted.ensureDeferred
async def test_stunRoleRfc5780AnswersFromTheAlternateSocket() -> None:
    from twisted.internet import reactor

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    primaryPort = probe.getsockname()[1]
    probe.close()
    alternatePort = primaryPort + 1 if primaryPort < 65000 else primaryPort - 1
    server = STUNRole(reactor, udp=(primaryPort, "127.0.0.1"), alternate=("127.0.0.2", alternatePort))
    server.startService()
    collector = Collector()
    port = reactor.listenUDP(0, collector, interface="127.0.0.1")
    try:
        assert len(server.sockets) == 4
        plain = stun.Message(stun.BINDING, stun.REQUEST)
        port.write(plain.encode(), ("127.0.0.1", primaryPort))
        data, source = await nextItem(collector.received, reactor)
        assert source == ("127.0.0.1", primaryPort)
        answer = stun.decode(data)
        assert answer.otherAddress == ("127.0.0.2", alternatePort)
        change = stun.Message(stun.BINDING, stun.REQUEST, attributes=[stun.ChangeRequest(True, True)])
        port.write(change.encode(), ("127.0.0.1", primaryPort))
        data, source = await nextItem(collector.received, reactor)
        assert source == ("127.0.0.2", alternatePort), "CHANGE-REQUEST honoured from the other socket"
        assert stun.decode(data).transactionId == change.transactionId
    finally:
        await port.stopListening()
        await server.stopService()


def test_stunRoleAnswersEveryRequestAcrossAnHourClockStepBack() -> None:
    """
    Issue 13: after the wall clock stepped back 1 h, a client asking once every 5 s got 39 of 100 answers (the
    bucket refilled nothing until the clock caught up).  The role's default rate limit, on the role's clock.
    """
    net = NetReactor()
    net.advance(1_000_000)
    server = STUNRole(net, udp=(3478, "127.0.0.1"))
    server.startService()
    client = net.listenUDP(0, protocol.DatagramProtocol())
    answers: List[bytes] = []
    client.protocol.datagramReceived = lambda data, addr: answers.append(data)  # type: ignore[method-assign]
    for i in range(100):
        if i == 10:
            net.rightNow -= 3600.0  # the wall clock steps back an hour
        client.write(stun.Message(stun.BINDING, stun.REQUEST).encode(), ("127.0.0.1", 3478))
        net.advance(5)
    assert len(answers) == 100
    assert server.responder.answered == 100 and server.responder.rateLimited == 0
    client.stopListening()
    server.stopService()
    assert net.ports == {}


@pytest_twisted.ensureDeferred
async def test_stunRoleSendsToTheResponsePortOnRealSockets() -> None:
    """RFC 5780 §7.5 on a real UDP socket: asked from one port, answered at another of the same IP."""
    from twisted.internet import reactor

    server = STUNRole(reactor, udp=(0, "127.0.0.1"))
    server.startService()
    asking, answering = Collector(), Collector()
    askPort = reactor.listenUDP(0, asking, interface="127.0.0.1")
    answerPort = reactor.listenUDP(0, answering, interface="127.0.0.1")
    try:
        request = stun.Message(stun.BINDING, stun.REQUEST, None, [stun.ResponsePort(answerPort.getHost().port)])
        askPort.write(request.encode(), server.address())
        data, source = await nextItem(answering.received, reactor)
        assert source == server.address()
        answer = stun.decode(data)
        assert answer.transactionId == request.transactionId
        assert answer.mappedAddress == ("127.0.0.1", askPort.getHost().port), "the asking socket's address"
        assert len(asking.received.pending) == 0
    finally:
        await askPort.stopListening()
        await answerPort.stopListening()
        await server.stopService()


@pytest_twisted.ensureDeferred
async def test_stunRoleScrapedRequestsByResult() -> None:
    """The role's own counts through its --metrics endpoint: 2 answered, 3 rate-limited, 1 rejected (420)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread

    from twisted_sipnat.service.metrics import MetricsServer

    server = STUNRole(reactor, udp=(0, "127.0.0.1"), rateLimit=(0.001, 3))
    metrics = MetricsServer(reactor, "tcp:0:interface=127.0.0.1", server)
    server.startService()
    metrics.startService()
    collector = Collector()
    port = reactor.listenUDP(0, collector, interface="127.0.0.1")
    try:
        for attributes in ([], [], [stun.Padding(b"x")], [], [], []):
            port.write(stun.Message(stun.BINDING, stun.REQUEST, None, attributes).encode(), server.address())
        for _ in range(3):
            await nextItem(collector.received, reactor)
        host, metricsPort = metrics.address() or ("", 0)

        def scrape() -> str:
            with urllib.request.urlopen(f"http://{host}:{metricsPort}/metrics", timeout=5) as response:
                return str(response.read().decode())

        text = await deferToThread(scrape)
        found = {sample.labels["result"]: sample.value
                 for family in text_string_to_metric_families(text) for sample in family.samples
                 if sample.name == "sipnat_stun_requests_total"}
        assert found == {"answered": 2, "rejected": 1, "rate_limited": 3, "malformed": 0}
    finally:
        await port.stopListening()
        await metrics.stopService()
        await server.stopService()
