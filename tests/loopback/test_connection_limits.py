"""
The edge role's connection table over real sockets on 127.0.0.1 with the real reactor (pytest-twisted): with
``maxConnections`` low, an idle flood beyond it evicts itself, and REGISTERs over new connections are answered.
"""

from __future__ import annotations

from typing import Any, List

import pytest
import pytest_twisted
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from tests.security.floodkit import registerRequest
from twisted_sipnat.service.edge import EdgeRole

pytestmark = pytest.mark.timeout(30)


def reactor() -> Any:
    from twisted.internet import reactor as r

    return r


class Client(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.closed = False
        self.answered: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if b"\r\n\r\n" in self.received and not self.answered.called:
            self.answered.callback(self.received)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closed = True
        if not self.answered.called:
            self.answered.callback(self.received)


@pytest_twisted.inlineCallbacks
def test_idle_flood_over_loopback_evicts_itself_and_registers_are_answered() -> Any:
    r = reactor()
    edge = EdgeRole(r, udp=(0, "127.0.0.1"), tcp="tcp:0:interface=127.0.0.1", domain="example.com",
                    connectionLimits={"maxConnections": 20})
    edge.startService()
    clients: List[Client] = []
    try:
        port = edge.tcp.port.getHost().port  # type: ignore[union-attr]
        endpoint = TCP4ClientEndpoint(r, "127.0.0.1", port)
        for _ in range(60):
            client = Client()
            yield connectProtocol(endpoint, client)
            clients.append(client)
        yield task.deferLater(r, 0.2, lambda: None)
        idle = clients[:]
        assert sum(1 for c in idle if not c.closed) <= 20
        assert all(c.closed for c in idle[:40]), "the oldest idle connections were not the ones evicted"
        for i in range(3):
            client = Client()
            yield connectProtocol(endpoint, client)
            clients.append(client)
            client.transport.write(registerRequest(i))  # type: ignore[union-attr]
            answer = yield client.answered
            assert answer.startswith(b"SIP/2.0 200"), answer
        assert len(edge.tcp.factory.limiter.table) <= 20  # type: ignore[union-attr]
    finally:
        for client in clients:
            if client.transport is not None and not client.closed:
                client.transport.loseConnection()
        yield edge.stopService()
        yield task.deferLater(r, 0.05, lambda: None)
