"""
The client role does not try to re-register while the reactor shuts down (issue 13): its socket closing then is
no flow failure, and no retry or refresh is started.  A simulated network with the reactor's system events: the
next hop answers STUN and REGISTER on one shared socket, as an RFC 5626 edge does.
"""

from __future__ import annotations

from typing import Any, List, Tuple

from twisted.internet import protocol

from twisted_sipnat.core.sip import Request, parse, responseTo
from twisted_sipnat.protocols import SharedDatagramProtocol
from twisted_sipnat.testing import ShutdownClock

from .support import NetReactor, clientFor

HOP = ("127.0.0.1", 5060)


class ShutdownNet(NetReactor, ShutdownClock):
    """The simulated network, whose "shutdown" closes every port "during" it, as a real reactor does."""

    def __init__(self) -> None:
        super().__init__()
        self.addSystemEventTrigger("during", "shutdown", self._closeAll)

    def _closeAll(self) -> None:
        for port in list(self.ports.values()):
            port.stopListening()


class Registrar(protocol.DatagramProtocol):
    def __init__(self) -> None:
        self.requests: List[Request] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        request = parse(data)
        assert isinstance(request, Request)
        self.requests.append(request)
        response = responseTo(request, 200)
        response.headers.add("Contact", f"{request.headers.get('Contact')};expires=60")
        self.transport.write(response.toBytes(), addr)


def registered() -> Tuple[ShutdownNet, Any, Registrar]:
    net = ShutdownNet()
    registrar = Registrar()
    net.listenUDP(HOP[1], SharedDatagramProtocol(sipProtocol=registrar, stunResponder=True, clock=net), "127.0.0.1")
    client = clientFor(net, HOP, register="alice@example.com", interval=5.0)
    client.startService()
    net.run(1)
    assert client.ready.called and len(registrar.requests) == 1
    return net, client, registrar


def test_aReactorStopWithoutStopServiceStartsNoNewRegistration() -> None:
    # An embedder that stops the reactor without stopping the service: the socket closes under a running role.
    net, client, registrar = registered()
    net.fireSystemEvent("shutdown")
    net.run(120, step=1)
    assert client.failures == 0  # the old role: a FlowConnectionLost failure, then a retry
    assert client.retryAt is None
    assert len(registrar.requests) == 1


def test_aReactorStopDuringARefreshStartsNoNewRegistration() -> None:
    net, client, registrar = registered()
    refreshAt = client.refreshAt
    assert refreshAt is not None
    net.drop = True  # the refresh REGISTER is in flight, unanswered, when the reactor stops
    net.advance(refreshAt - net.seconds() + 0.1)
    assert len([d for d, src, dst in net.sent if dst == HOP and d.startswith(b"REGISTER")]) == 2
    net.fireSystemEvent("shutdown")
    net.drop = False
    net.run(120, step=1)
    assert client.failures == 0
    assert client.retryAt is None and client.refreshAt is None


def test_twistdsOrderStopServiceThenSocketsIsQuietToo() -> None:
    net, client, registrar = registered()
    net.addSystemEventTrigger("before", "shutdown", client.stopService)
    net.fireSystemEvent("shutdown")
    assert client.failures == 0
    assert net.getDelayedCalls() == []
