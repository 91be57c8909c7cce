"""
Two flows through two registrars no single test double plays: Kamailio (``registrar`` module, OPTIONS answered
200) and the project's edge role, with ``--keepalive options``.  Stop the edge, and its flow fails on an
unanswered OPTIONS and backs off while the Kamailio flow stays registered and pinged; start the edge again on
the same port, and the failed flow is back on its own after the RFC 5626 §4.5 backoff.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from peerkit import RunningPeer, waitUntil

pytestmark = [pytest.mark.interop, pytest.mark.timeout(90)]



@pytest_twisted.ensureDeferred
async def test_aFlowThroughADeadEdgeRecoversWhileTheKamailioFlowStaysUp(kamailio: RunningPeer,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from twisted.internet import reactor

    from twisted_sipnat import NATSettings
    from twisted_sipnat.core.recovery import RecoveryPolicy
    from twisted_sipnat.service.client import ClientRole
    from twisted_sipnat.service.edge import EdgeRole
    from twisted_sipnat.service.optionsping import OptionsPinger

    monkeypatch.setattr(OptionsPinger, "TIMER_F", 2.0)  # an unanswered ping fails the flow after 2 s, not 32 s
    edge = EdgeRole(reactor, udp=(0, "127.0.0.1"), domain="example.com")
    edge.startService()
    edgeAddress = edge.udp.address()
    client = ClientRole(reactor, [kamailio.address, edgeAddress], {"default": NATSettings(udpKeepaliveInterval=1)},
                        "default", listen=(0, "127.0.0.1"), register="alice@example.com", keepalive="options",
                        recovery=RecoveryPolicy(1.0, 1.0, 10.0))
    kam, ours = client.flows
    try:
        client.startService()
        await waitUntil(lambda: kam.up and ours.up)
        await waitUntil(lambda: kam.pingStats["options.answered"] >= 2 and ours.pingStats["options.answered"] >= 2)
        assert kam.registerClient is not None and kam.registerClient.stats["register.succeeded"] == 1
        await edge.stopService()
        await waitUntil(lambda: ours.failures == 1)
        assert not ours.up and kam.up and kam.failures == 0, "the Kamailio flow keeps the UA reachable"
        answered = kam.pingStats["options.answered"]
        edge = EdgeRole(reactor, udp=(edgeAddress[1], "127.0.0.1"), domain="example.com")
        edge.startService()
        await waitUntil(lambda: ours.up)
        assert ours.keepalivesStarted == 2 and kam.keepalivesStarted == 1 and kam.failures == 0
        assert kam.pingStats["options.answered"] > answered, "pinged all along"
        assert kam.registerClient.stats["dropped.unmatched"] == 0
    finally:
        await client.stopService()
        await edge.stopService()
