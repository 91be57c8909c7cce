"""
The compatibility promise of issue 13: the project reads SIP with its own message layer now, but a user who puts
Twisted's ``twisted.protocols.sip.RegisterProxy`` behind :class:`~twisted_sipnat.SharedDatagramProtocol` (the
contract says any ``DatagramProtocol``) keeps working: its REGISTERs get their 200 and STUN on the same socket is
answered.  On a fake transport here; on real sockets, with the client role registering, at the end.
"""

from __future__ import annotations

from typing import Any, Iterator, Tuple

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from twisted_sipnat.core import stun
from twisted_sipnat.core.sip import NameAddress, Response, Via, parse
from twisted_sipnat.core.sip.register import buildRegister, parseAOR
from twisted_sipnat.protocols import SharedDatagramProtocol
from twisted_sipnat.testing import FakeDatagramTransport, sharedDatagramSocket

UA = ("198.51.100.7", 40000)


@pytest.fixture
def registerProxy() -> Iterator[Any]:
    from twisted.protocols import sip as tsip

    proxy = tsip.RegisterProxy(host="127.0.0.1", port=5060)
    proxy.registry = tsip.InMemoryRegistry("example.com")
    yield proxy
    # InMemoryRegistry expires bindings with the global reactor's callLater: leave none behind.
    for call, _ in list(proxy.registry.users.values()):
        if call.active():
            call.cancel()


def shared(proxy: Any) -> Tuple[SharedDatagramProtocol, FakeDatagramTransport]:
    return sharedDatagramSocket(sipProtocol=proxy, stunResponder=True, clock=Clock(), host="127.0.0.1", port=5060)


def test_aRegisterProxyBehindTheSharedSocketAnswersREGISTERAndSTUN(registerProxy: Any) -> None:
    socket, transport = shared(registerProxy)
    request = buildRegister(parseAOR("alice@example.com"), UA, UA, callId="c1", cseq=1, branch="compat1",
                            fromTag="t1", expires=600)
    socket.datagramReceived(request.toBytes(), UA)
    (data, addr), = transport.written
    response = parse(data)
    assert isinstance(response, Response) and response.code == 200
    assert addr == UA
    assert Via.parse(response.headers.get("Via") or "").branch == "z9hG4bKcompat1"
    contact = NameAddress.parse(response.headers.get("Contact") or "").sipURI
    assert (contact.user, contact.host, contact.port) == ("alice", *UA)
    assert "alice" in registerProxy.registry.users

    transport.clear()
    binding = stun.Message(stun.BINDING, stun.REQUEST)
    socket.datagramReceived(binding.encode(), UA)
    (data, addr), = transport.written
    answer = stun.decode(data)
    assert addr == UA
    assert answer.messageClass == stun.SUCCESS and answer.transactionId == binding.transactionId
    assert answer.mappedAddress == UA
    assert socket.stats["sip.datagrams.received"] == 1 and socket.stats["stun.requests.answered"] == 1


@pytest_twisted.ensureDeferred
async def test_theClientRoleRegistersWithARegisterProxyOnRealSockets(registerProxy: Any) -> None:
    # Our REGISTER client (core.sip) against Twisted's registrar (twisted.protocols.sip), STUN on the same port.
    from twisted.internet import reactor

    from tests.service.support import clientFor, waitFor

    socket = SharedDatagramProtocol(sipProtocol=registerProxy, stunResponder=True)
    port = reactor.listenUDP(0, socket, interface="127.0.0.1")
    client = clientFor(reactor, ("127.0.0.1", port.getHost().port), register="alice@example.com", interval=5.0)
    try:
        client.startService()
        await waitFor(lambda: client.ready.called, reactor)
        assert client.publicAddress is not None
        assert client.publicAddress.port == client.listener.address()[1]
        _, contact = registerProxy.registry.users["alice"]
        assert (contact.host, contact.port) == ("127.0.0.1", client.listener.address()[1])
        assert client.refreshAt is not None and client.failures == 0
    finally:
        await client.stopService()
        await port.stopListening()
