"""
NAT behaviour discovery (RFC 5780 §4.3 mapping, §4.4 filtering) from the SIP stack's own socket: the shell
around :class:`twisted_sipnat.core.discovery.DiscoveryPlan`, which holds the test sequence and the
classification.  Each test is one Binding transaction through the controller's
:meth:`~twisted_sipnat.controller.NATTraversalController.sendBindingRequest`.
"""

from __future__ import annotations

import socket as _socket
from typing import Any, Callable, Generator, Optional, Tuple

from twisted.internet import defer

from .core.addresses import isIPLiteral, normalHost
from .core.discovery import (
    ADDRESS_AND_PORT_DEPENDENT,
    ADDRESS_DEPENDENT,
    ENDPOINT_INDEPENDENT,
    DiscoveryPlan,
    NATBehaviour,
    classifyFiltering,
    classifyMapping,
)
from .errors import STUNTimeout

__all__ = [
    "ADDRESS_AND_PORT_DEPENDENT",
    "ADDRESS_DEPENDENT",
    "ENDPOINT_INDEPENDENT",
    "NATBehaviour",
    "classifyFiltering",
    "classifyMapping",
    "discover",
    "localAddressToward",
    "routedSource",
]

HostPort = Tuple[str, int]

#: Hosts of a socket bound to every address: the local address toward a server is the one routing picks.
WILDCARDS = ("0.0.0.0", "::", "")


def routedSource(destination: HostPort) -> Optional[str]:
    """
    The local IP the system would send from toward ``destination``: a connected UDP socket's name (connecting a
    UDP socket sends nothing).  ``None`` when there is no route.
    """
    family = _socket.AF_INET6 if ":" in destination[0] else _socket.AF_INET
    with _socket.socket(family, _socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((destination[0], destination[1]))
            return normalHost(str(probe.getsockname()[0]))
        except OSError:
            return None


def localAddressToward(bound: Optional[HostPort], destination: HostPort,
                       route: Optional[Callable[[HostPort], Optional[str]]] = None) -> Optional[HostPort]:
    """
    The local ``(host, port)`` a socket bound to ``bound`` sends from toward ``destination``: the bound address,
    or for a wildcard bind (``0.0.0.0``/``::``) the address routing picks, with the bound port.
    """
    if bound is None or bound[0] not in WILDCARDS:
        return bound
    host = (route or routedSource)(destination)
    return (host, bound[1]) if host else bound


@defer.inlineCallbacks
def discover(controller: Any, socket: Any, server: Any, *, retransmissions: int = 7,
             route: Optional[Callable[[HostPort], Optional[str]]] = None) -> Generator[Any, Any, NATBehaviour]:
    """
    Run the RFC 5780 mapping and filtering tests from ``socket`` against ``server`` ``(host, port)``.  The
    mapped address is compared with the local address used toward the server (:func:`localAddressToward`;
    ``route`` replaces :func:`routedSource`, for tests), so a socket bound to ``0.0.0.0`` or ``::`` is not
    taken for one behind a NAT.
    """
    host, port = str(server[0]), int(server[1])
    if not isIPLiteral(host):
        host, port = yield controller.lookupServer(host, port, socket)
    bound = None
    localAddress = controller.localAddressOf(socket)
    if localAddress is not None and getattr(localAddress, "port", None) is not None:
        bound = (normalHost(localAddress.host), localAddress.port)
    plan = DiscoveryPlan((host, port), lambda destination: localAddressToward(bound, destination, route))
    test = plan.nextTest()
    while test is not None:
        try:
            response, _ = yield controller.sendBindingRequest(socket, test.destination, test.attributes,
                                                              retransmissions=retransmissions,
                                                              anySource=test.anySource)
        except STUNTimeout:
            if not plan.timedOut():
                raise
        else:
            plan.answered(response)
        test = plan.nextTest()
    assert plan.outcome is not None
    return plan.outcome
