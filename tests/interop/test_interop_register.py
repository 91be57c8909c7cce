"""
The client role's REGISTER client (on the project's own SIP layer, ``core.sip``) against a registrar no one here
wrote: Kamailio's ``registrar`` module over UDP on loopback, with STUN answered on the same SIP port.  Its 200 is
matched by branch and CSeq, and the lifetime Kamailio granted is read from our own Contact's ``expires``.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from peerkit import RunningPeer, waitUntil

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]



@pytest_twisted.ensureDeferred
async def test_theClientRoleRegistersWithKamailio(kamailio: RunningPeer) -> None:
    from twisted.internet import reactor

    from twisted_sipnat import NATSettings
    from twisted_sipnat.service.client import ClientRole

    client = ClientRole(reactor, kamailio.address, {"default": NATSettings(udpKeepaliveInterval=5)}, "default",
                        listen=(0, "127.0.0.1"), register="alice@example.com")
    assert client.registerClient is not None
    client.registerClient.expires = 30  # below Kamailio's min_expires (60): it grants 60 on the Contact
    try:
        client.startService()
        await waitUntil(lambda: client.ready.called)
        stats = client.registerClient.stats
        assert stats["register.succeeded"] == 1 and stats["dropped.unmatched"] == 0, stats
        assert stats["dropped.malformed"] == 0
        assert client.publicAddress is not None and client.publicAddress.port == client.listener.address()[1]
        refreshAt = client.refreshAt
        assert refreshAt is not None
        # refreshed at 90 % of the 60 s Kamailio granted to our binding, not of the 30 s asked
        assert 50 < refreshAt - reactor.seconds() <= 54
        assert client.failures == 0
    finally:
        await client.stopService()
