"""
A real reactor stop with flows alive on real 127.0.0.1 sockets (UDP with STUN keepalives, TCP with CRLF pings):
the observers get no ``flowFailure`` (issue 13).  The reactor of the test process never stops, so the program
runs in a child process.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

PROGRAM = r"""
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.protocol import ClientFactory, Factory, Protocol

from twisted_sipnat import NATSettings, NATTraversalController, SharedDatagramProtocol, SharedStreamFactory
from twisted_sipnat.testing import RecordingObserver

settings = NATSettings(udpKeepaliveInterval=0.2, tcpKeepaliveInterval=0.2, pongTimeout=2)
controller = NATTraversalController(settings, reactor=reactor)
server = reactor.listenUDP(0, SharedDatagramProtocol(stunResponder=True), interface="127.0.0.1")
client = SharedDatagramProtocol(controller=controller)
reactor.listenUDP(0, client, interface="127.0.0.1")
listening = reactor.listenTCP(0, SharedStreamFactory(Factory.forProtocol(Protocol), pongResponder=True),
                              interface="127.0.0.1")
udp, tcp = RecordingObserver("udp"), RecordingObserver("tcp")
connected = Deferred()


class SIP(Protocol):
    def connectionMade(self):
        connected.callback(self)


async def main():
    hop = ("127.0.0.1", server.getHost().port)
    await controller.resolvePublicAddress(None, client, hop, observer=udp)
    controller.refreshNATBinding(client, udp)
    factory = ClientFactory.forProtocol(SIP)
    reactor.connectTCP("127.0.0.1", listening.getHost().port, SharedStreamFactory(factory, controller=controller))
    stream = await connected
    controller.refreshNATBinding(stream, tcp)
    await task.deferLater(reactor, 1.0)
    print("answered", controller.stats["keepalive.answered"] > 0, controller.flowCount)
    reactor.stop()


reactor.callWhenRunning(lambda: ensureDeferred(main()).addErrback(lambda f: (print(f), reactor.stop())))
reactor.run()
print("failures", [f.type.__name__ for f in udp.failures + tcp.failures], controller.flowCount)
"""


def test_aRealReactorStopIsNoFlowFailure() -> None:
    result = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=50)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "answered True 2", result.stdout
    # the old controller: failures ['FlowConnectionLost', 'FlowConnectionLost']
    assert lines[-1] == "failures [] 0", result.stdout
