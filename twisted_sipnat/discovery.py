"""
NAT behaviour discovery (RFC 5780 §4.3 mapping, §4.4 filtering).

The classification rules are pure functions of what the tests observed; :func:`discover` runs the tests through
the controller's :meth:`~twisted_sipnat.controller.NATTraversalController.sendBindingRequest`, from the SIP
stack's own socket.

Mapping (§4.3), against a server whose primary address is ``ip1:p1`` and whose OTHER-ADDRESS is ``ip2:p2``:

- test I: Binding to ``ip1:p1`` gives ``X1`` (and OTHER-ADDRESS; without it the server cannot do RFC 5780);
- ``X1`` equal to the socket's local address: no NAT; the mapping is endpoint-independent;
- test II: Binding to ``ip2:p1`` gives ``X2``; ``X2 == X1``: endpoint-independent;
- test III: Binding to ``ip2:p2`` gives ``X3``; ``X3 == X2``: address-dependent, else address-and-port-dependent.

Filtering (§4.4), all to ``ip1:p1``, run right after test I and before the mapping tests II and III (which
send to ``ip2`` and so would open the filter being probed):

- test II: CHANGE-REQUEST change-IP and change-port; an answer (from ``ip2:p2``): endpoint-independent;
- test III: CHANGE-REQUEST change-port only; an answer (from ``ip1:p2``): address-dependent, else
  address-and-port-dependent.

Out of scope: the binding lifetime test of §4.6 (it needs a second socket and RESPONSE-PORT), hairpinning (§4.5)
and fragment handling.
"""

from __future__ import annotations

import socket as _socket
from dataclasses import dataclass
from typing import Any, Callable, Generator, Optional, Tuple

from twisted.internet import defer

from .core import stun
from .core.addresses import isIPLiteral, normalHost
from .errors import NATTraversalError, STUNErrorResponse, STUNTimeout

HostPort = Tuple[str, int]

ENDPOINT_INDEPENDENT = "endpoint-independent"
ADDRESS_DEPENDENT = "address-dependent"
ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


@dataclass(frozen=True)
class NATBehaviour:
    """What :func:`discover` found. ``natPresent`` is ``False`` when the mapped address is the local one."""

    mapping: str
    filtering: str
    mappedAddress: HostPort
    otherAddress: HostPort
    localAddress: Optional[HostPort]
    natPresent: bool


def classifyMapping(x1: HostPort, x2: HostPort, x3: Optional[HostPort]) -> str:
    """RFC 5780 §4.3 from the mapped addresses of tests I, II and III (III is not needed when I == II)."""
    if x2 == x1:
        return ENDPOINT_INDEPENDENT
    if x3 is None:
        raise ValueError("test III is needed when tests I and II differ")
    return ADDRESS_DEPENDENT if x3 == x2 else ADDRESS_AND_PORT_DEPENDENT


def classifyFiltering(answeredChangeIPAndPort: bool, answeredChangePort: bool) -> str:
    """RFC 5780 §4.4 from whether filtering tests II and III got an answer."""
    if answeredChangeIPAndPort:
        return ENDPOINT_INDEPENDENT
    return ADDRESS_DEPENDENT if answeredChangePort else ADDRESS_AND_PORT_DEPENDENT


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


def _mapped(response: Any, server: HostPort) -> HostPort:
    if response.messageClass != stun.SUCCESS:
        code, reason = response.errorCode or (0, "error response")
        raise STUNErrorResponse(code, reason, server)
    mapped = response.mappedAddress
    if mapped is None:
        raise NATTraversalError(f"the Binding success from {server[0]}:{server[1]} has no mapped address")
    return (mapped[0], mapped[1])


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
    primary = (host, port)
    request = controller.sendBindingRequest
    response, _ = yield request(socket, primary, retransmissions=retransmissions)
    x1 = _mapped(response, primary)
    other = response.otherAddress
    if other is None:
        raise NATTraversalError(
            f"STUN server {primary[0]}:{primary[1]} gave no OTHER-ADDRESS: it cannot do RFC 5780 behaviour discovery"
        )
    other = (other[0], other[1])
    bound = None
    localAddress = controller.localAddressOf(socket)
    if localAddress is not None and getattr(localAddress, "port", None) is not None:
        bound = (normalHost(localAddress.host), localAddress.port)
    local = localAddressToward(bound, primary, route)
    natPresent = not (local is not None and local == x1)

    # Filtering first: the mapping tests send to the alternate address, which would open the very filter the
    # filtering tests probe (the SIP socket cannot be swapped for a fresh one between the two).
    answered = []
    for changeIP in (True, False):
        try:
            response, _ = yield request(socket, primary, [stun.ChangeRequest(changeIP, True)],
                                        retransmissions=retransmissions, anySource=True)
        except STUNTimeout:
            answered.append(False)
        else:
            _mapped(response, primary)
            answered.append(True)
            if changeIP:
                # endpoint-independent filtering already: test III adds nothing (§4.4)
                answered.append(True)
                break
    filtering = classifyFiltering(answered[0], answered[1])

    if not natPresent:
        mapping = ENDPOINT_INDEPENDENT
    else:
        response, _ = yield request(socket, (other[0], primary[1]), retransmissions=retransmissions)
        x2 = _mapped(response, (other[0], primary[1]))
        x3 = None
        if x2 != x1:
            response, _ = yield request(socket, other, retransmissions=retransmissions)
            x3 = _mapped(response, other)
        mapping = classifyMapping(x1, x2, x3)
    return NATBehaviour(mapping, filtering, x1, other, local, natPresent)
