"""
The client role over TCP (``--transport tcp``) against a registrar no one here wrote: Kamailio's ``registrar``
over TCP on loopback, with ``tcp_crlf_ping`` answering the RFC 5626 §4.4.1 CRLF pings.  The REGISTER goes over
the connection the client made (a TCP Via, a ``;transport=tcp`` Contact), Kamailio's 200 is matched, and the
keepalives that follow run on that very connection and are answered with pongs.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from peerkit import RunningPeer, waitUntil

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]



@pytest_twisted.ensureDeferred
async def test_theClientRoleRegistersWithKamailioOverTCPAndKeepsTheConnectionAlive(kamailio: RunningPeer) -> None:
    from twisted.internet import reactor

    from twisted_sipnat import NATSettings
    from twisted_sipnat.service.client import ClientRole
    from twisted_sipnat.service.flowtransport import FlowTransport

    client = ClientRole(reactor, kamailio.address, {"default": NATSettings(tcpKeepaliveInterval=1)}, "default",
                        listen=(0, "127.0.0.1"), register="alice@example.com", transport=FlowTransport("tcp"))
    assert client.registerClient is not None
    client.registerClient.expires = 60
    try:
        client.startService()
        await waitUntil(lambda: client.ready.called)
        stats = client.registerClient.stats
        assert stats["register.succeeded"] == 1 and stats["dropped.unmatched"] == 0, stats
        assert stats["dropped.malformed"] == 0 and stats["register.sent"] >= 1
        contact = client.registerClient.contact
        assert contact is not None and contact.transport == "tcp"
        stream = client.registerClient.socket
        assert stream is not None
        await waitUntil(lambda: stream.stats["pongs.received"] >= 2, timeout=6)
        assert client.registerClient.socket is stream, "the keepalives ran on the connection that registered"
        assert client.failures == 0
        assert client.controller.flowCountByTransport() == {"udp": 0, "tcp": 1}
    finally:
        await client.stopService()
