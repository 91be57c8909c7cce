"""
The seam a stream REGISTER client (TCP, TLS) drops into: ``ClientRole(registerClientFactory=...)`` makes each
flow's client from ``(role, key, nextHop, regId)``, and the flow uses only the
:class:`~twisted_sipnat.service.clientflow.FlowRegisterClient` methods.  A scripted client proves the flow needs
nothing else: it registers through it, refreshes through it, and a refused refresh is a flow failure that the
flow recovers from through it.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from twisted.internet import defer

from twisted_sipnat import NATSettings
from twisted_sipnat.core.sip import Request, Response, responseTo
from twisted_sipnat.core.sip.register import parseAOR
from twisted_sipnat.core.sip.registration import Registered, Registration
from twisted_sipnat.errors import RegistrationError
from twisted_sipnat.service.client import ClientRole

from .support import NetReactor

INSTANCE = "urn:uuid:6f1c3c1e-8b8e-4d2e-9a55-0d4f3f0c2a13"
HOPS = [("192.0.2.1", 5060), ("192.0.2.2", 5060)]

HostPort = Tuple[str, int]


class ScriptedClient:
    """A REGISTER client that answers from a script: ``True`` a 200 with Flow-Timer 20, ``False`` a 503."""

    def __init__(self, key: int, hop: Any, regId: Optional[int]) -> None:
        self.key, self.hop = key, hop
        self.registration = Registration(parseAOR("alice@example.com"), expires=100, callId=f"c{key}",
                                         fromTag="t", token=lambda: "x", instance=INSTANCE, regId=regId)
        self.registered: Optional[Registered] = None
        self.script: List[bool] = []
        self.contacts: List[HostPort] = []
        self.connected: Any = None
        self.stopped = 0

    def register(self, contact: HostPort) -> defer.Deferred[Response]:
        self.contacts.append(contact)
        self.registration.begin()
        request: Request = self.registration.request(contact, contact)
        if self.script.pop(0) if self.script else True:
            response = responseTo(request, 200)
            response.headers.add("Require", "outbound")
            response.headers.add("Flow-Timer", "20")
            decision = self.registration.final(response)
            assert isinstance(decision, Registered)
            self.registered = decision
            return defer.succeed(response)
        return defer.fail(RegistrationError(503, "Service Unavailable"))

    def stop(self) -> None:
        self.stopped += 1

    def grantedExpires(self, response: Response) -> int:
        return 100

    def reportFigures(self, figures: Any) -> None:
        pass

    def makeConnection(self, transport: Any) -> None:
        self.connected = transport

    def doStop(self) -> None:
        self.connected = None

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        raise AssertionError("a stream client reads its own connection")


def test_aDroppedInRegisterClientCarriesEachFlow() -> None:
    net = NetReactor()
    made: List[ScriptedClient] = []

    def factory(role: ClientRole, key: int, hop: Any, regId: Optional[int]) -> ScriptedClient:
        client = ScriptedClient(key, hop, regId)
        made.append(client)
        return client

    settings = {"default": NATSettings(udpKeepaliveInterval=10.0, udpKeepaliveMethod="crlf")}
    role = ClientRole(net, HOPS, settings, "default", listen=(0, "127.0.0.1"), register="alice@example.com",
                      instance=INSTANCE, random=lambda: 0.0, registerClientFactory=factory)  # type: ignore[arg-type]
    assert [(c.key, c.hop, c.registration.regId) for c in made] == [(1, HOPS[0], 1), (2, HOPS[1], 2)]
    role.startService()
    assert all(c.connected is not None for c in made), "attached to the SIP socket's transport"
    net.run(1)
    first, second = role.flows
    assert first.up and second.up and first.flowTimer == 20 and second.registerClient is made[1]
    made[1].script = [False]  # the refresh of flow 2 is refused
    net.run(91, step=1.0)
    assert second.failures == 1 and not second.up and first.up, "a refused refresh fails that flow only"
    assert second.retryAt is not None and made[1].stopped >= 1
    net.run(second.retryAt - net.seconds() + 1, step=1.0)
    assert second.up and len(made[1].contacts) == 3, "first REGISTER, refused refresh, recovery"
    role.stopService()
    for port in list(net.ports.values()):
        port.stopListening()
    assert all(c.connected is None for c in made) and net.getDelayedCalls() == []


class RecordingController:
    """The controller calls a flow makes, recorded (the socket each is made on is what matters here)."""

    stopped = False

    def __init__(self) -> None:
        self.keptAlive: List[Any] = []
        self.stats: Any = {}

    def refreshNATBinding(self, socket: Any, observer: Any, **kw: Any) -> bool:
        self.keptAlive.append(socket)
        return True

    def freeResources(self, observer: Any = None) -> None:
        pass

    def socketClosed(self, socket: Any, reason: Any = None) -> None:
        pass

    def flowCountByTransport(self) -> Any:
        return {}


def test_aClientWithItsOwnConnectionIsKeptAliveOnIt() -> None:
    net = NetReactor()
    connection = object()

    def factory(role: ClientRole, key: int, hop: Any, regId: Optional[int]) -> ScriptedClient:
        client = ScriptedClient(key, hop, regId)
        if key == 2:
            client.keepaliveSocket = connection  # type: ignore[attr-defined]
        return client

    controller = RecordingController()
    settings = {"default": NATSettings(udpKeepaliveInterval=10.0)}
    role = ClientRole(net, HOPS, settings, "default", listen=(0, "127.0.0.1"), register="alice@example.com",
                      instance=INSTANCE, controller=controller, registerClientFactory=factory)  # type: ignore[arg-type]
    role.startService()
    net.run(1)
    assert controller.keptAlive == [role.shared, connection], "flow 1 on the shared UDP socket, flow 2 on its own"
    assert role.flows[1].socket is connection
    role.stopService()
    for port in list(net.ports.values()):
        port.stopListening()
    assert net.getDelayedCalls() == []
