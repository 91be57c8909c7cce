"""What the client role's several-flows tests share: edges with digest auth on the simulated network, a role."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from twisted_sipnat import NATSettings
from twisted_sipnat.core.sip import NameAddress
from twisted_sipnat.core.sip.digest import Credentials
from twisted_sipnat.service.client import ClientRole
from twisted_sipnat.service.figures import Figures

from .registrarkit import DigestRegistrar
from .support import NetReactor

INSTANCE = "urn:uuid:6f1c3c1e-8b8e-4d2e-9a55-0d4f3f0c2a12"
EDGE_A = ("127.0.0.1", 5070)
EDGE_B = ("127.0.0.1", 5071)

HostPort = Tuple[str, int]


def role(net: NetReactor, hops: Any, method: str = "stun", **kw: Any) -> ClientRole:
    settings = {"default": NATSettings(udpKeepaliveInterval=10.0, udpKeepaliveMethod=method)}
    return ClientRole(net, hops, settings, "default", listen=(0, "127.0.0.1"), register="alice@example.com",
                      credentials=Credentials("alice", "secret"), instance=INSTANCE, random=lambda: 0.0, **kw)


def edges(net: NetReactor, *hops: HostPort) -> List[DigestRegistrar]:
    registrars = []
    for hop in hops:
        registrar = DigestRegistrar()
        net.listenUDP(hop[1], registrar, hop[0])
        registrars.append(registrar)
    return registrars


def regIds(registrar: DigestRegistrar) -> set[Any]:
    return {(NameAddress.parse(r.headers.get("Contact") or "").instance,
             NameAddress.parse(r.headers.get("Contact") or "").regId) for r in registrar.requests}


def states(client: ClientRole) -> Dict[str, float]:
    figures = Figures()
    client.reportFigures(figures)
    return {state: figures.get("sipnat_client_flows", state=state) for state in ("registering", "up", "down")}


def stop(net: NetReactor, client: ClientRole) -> None:
    client.stopService()
    for port in list(net.ports.values()):
        port.stopListening()
    assert net.getDelayedCalls() == []
