"""
RFC 5780 behaviour discovery against a simulated NAT (every mapping × filtering combination) and a two-address
STUN server, driven by a Clock: the classification must name the simulated behaviour.
"""

from __future__ import annotations

import itertools
from typing import Any, Dict, List, Set, Tuple

import pytest
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from twisted_sipnat import NATSettings, NATTraversalController, NATTraversalError, stun
from twisted_sipnat.core.responder import BindingResponder
from twisted_sipnat.discovery import (
    ADDRESS_AND_PORT_DEPENDENT,
    ADDRESS_DEPENDENT,
    ENDPOINT_INDEPENDENT,
    NATBehaviour,
    classifyFiltering,
    classifyMapping,
)
from twisted_sipnat.testing import sharedDatagramSocket

HostPort = Tuple[str, int]
PRIMARY = ("198.51.100.20", 3478)
ALTERNATE = ("198.51.100.21", 3479)
LOCAL = ("192.0.2.10", 5060)
PUBLIC_IP = "203.0.113.1"
BEHAVIOURS = (ENDPOINT_INDEPENDENT, ADDRESS_DEPENDENT, ADDRESS_AND_PORT_DEPENDENT)


class SimulatedNAT:
    """A NAT with the given mapping and filtering behaviour in front of our socket, and the RFC 5780 server."""

    def __init__(self, mapping: str, filtering: str) -> None:
        self.mapping = mapping
        self.filtering = filtering
        self.ports: Dict[Any, int] = {}
        self.sentTo: Set[HostPort] = set()
        self.nextPort = 40000
        self.responder = BindingResponder(primary=PRIMARY, alternate=ALTERNATE)

    def publicPort(self, destination: HostPort) -> int:
        key: Any = {
            ENDPOINT_INDEPENDENT: None,
            ADDRESS_DEPENDENT: destination[0],
            ADDRESS_AND_PORT_DEPENDENT: destination,
        }[self.mapping]
        if key not in self.ports:
            self.ports[key] = self.nextPort
            self.nextPort += 1
        return self.ports[key]

    def admits(self, source: HostPort) -> bool:
        if self.filtering == ENDPOINT_INDEPENDENT:
            return True
        if self.filtering == ADDRESS_DEPENDENT:
            return any(ip == source[0] for ip, _ in self.sentTo)
        return source in self.sentTo

    def carry(self, shared: Any, transport: Any) -> int:
        """Take every datagram our socket wrote through the NAT to the server and the answers back."""
        delivered = 0
        while transport.written:
            data, destination = transport.written.pop(0)
            public = (PUBLIC_IP, self.publicPort(destination))
            self.sentTo.add(destination)
            reply = self.responder.respond(data, public, receivedOn=destination, now=0.0)
            if reply is None:
                continue
            source = reply.sendFrom or destination
            if self.admits(source):
                shared.datagramReceived(reply.data, source)
                delivered += 1
        return delivered


def run(mapping: str, filtering: str) -> Any:
    clock = Clock()
    controller = NATTraversalController(NATSettings(), reactor=clock)
    shared, transport = sharedDatagramSocket(controller, host=LOCAL[0], port=LOCAL[1])
    nat = SimulatedNAT(mapping, filtering)
    results: List[Any] = []
    controller.discoverNATBehaviour(shared, PRIMARY, retransmissions=3).addBoth(results.append)
    for _ in range(400):
        nat.carry(shared, transport)
        if results:
            break
        clock.advance(0.25)
    assert clock.getDelayedCalls() == []
    return results[0]


@pytest.mark.parametrize("mapping,filtering", list(itertools.product(BEHAVIOURS, BEHAVIOURS)))
def test_discovery_names_every_simulated_nat(mapping: str, filtering: str) -> None:
    result = run(mapping, filtering)
    assert isinstance(result, NATBehaviour), result
    assert (result.mapping, result.filtering) == (mapping, filtering)
    assert result.natPresent and result.mappedAddress[0] == PUBLIC_IP
    assert result.otherAddress == ALTERNATE and result.localAddress == LOCAL


def test_server_without_other_address_is_refused(clock: Clock) -> None:
    controller = NATTraversalController(NATSettings(), reactor=clock)
    shared, transport = sharedDatagramSocket(controller)
    results: List[Any] = []
    controller.discoverNATBehaviour(shared, PRIMARY).addBoth(results.append)
    (request, addr), = transport.stunRequests()
    response = stun.Message(stun.BINDING, stun.SUCCESS, request.transactionId,
                            [stun.XorMappedAddress(PUBLIC_IP, 40000)]).encode()
    shared.datagramReceived(response, addr)
    assert isinstance(results[0], Failure) and results[0].check(NATTraversalError)
    assert "OTHER-ADDRESS" in str(results[0].value)
    assert clock.getDelayedCalls() == []


def test_no_nat_is_reported_as_such(clock: Clock) -> None:
    controller = NATTraversalController(NATSettings(), reactor=clock)
    shared, transport = sharedDatagramSocket(controller, host=LOCAL[0], port=LOCAL[1])
    responder = BindingResponder(primary=PRIMARY, alternate=ALTERNATE)
    results: List[Any] = []
    controller.discoverNATBehaviour(shared, PRIMARY).addBoth(results.append)
    while not results:
        data, destination = transport.written.pop(0)
        reply = responder.respond(data, LOCAL, receivedOn=destination, now=0.0)
        assert reply is not None
        shared.datagramReceived(reply.data, reply.sendFrom or destination)
    behaviour = results[0]
    assert behaviour.natPresent is False
    assert (behaviour.mapping, behaviour.filtering) == (ENDPOINT_INDEPENDENT, ENDPOINT_INDEPENDENT)


def test_classification_rules() -> None:
    a, b, c = ("203.0.113.1", 1), ("203.0.113.1", 2), ("203.0.113.1", 3)
    assert classifyMapping(a, a, None) == ENDPOINT_INDEPENDENT
    assert classifyMapping(a, b, b) == ADDRESS_DEPENDENT
    assert classifyMapping(a, b, c) == ADDRESS_AND_PORT_DEPENDENT
    with pytest.raises(ValueError):
        classifyMapping(a, b, None)
    assert classifyFiltering(True, True) == ENDPOINT_INDEPENDENT
    assert classifyFiltering(False, True) == ADDRESS_DEPENDENT
    assert classifyFiltering(False, False) == ADDRESS_AND_PORT_DEPENDENT


def test_send_binding_request_with_change_request_accepts_another_source_only_when_asked(clock: Clock) -> None:
    controller = NATTraversalController(NATSettings(), reactor=clock)
    shared, transport = sharedDatagramSocket(controller)
    strict: List[Any] = []
    loose: List[Any] = []
    controller.sendBindingRequest(shared, PRIMARY).addBoth(strict.append)
    controller.sendBindingRequest(shared, PRIMARY, [stun.ChangeRequest(True, True)], anySource=True).addBoth(
        loose.append)
    (r1, _), (r2, _) = transport.stunRequests()
    assert r2.changeRequest == (True, True) and r1.changeRequest is None
    for request in (r1, r2):
        answer = stun.Message(stun.BINDING, stun.SUCCESS, request.transactionId,
                              [stun.XorMappedAddress(PUBLIC_IP, 1)]).encode()
        shared.datagramReceived(answer, ALTERNATE)
    assert strict == [] and controller.stats["stun.dropped.wrong-source"] == 1
    assert loose and loose[0][1] == ALTERNATE
    controller.freeResources()
    assert clock.getDelayedCalls() == []


def test_a_wildcard_bound_socket_compares_with_the_local_address_used_toward_each_server() -> None:
    """Issue 12: bound to 0.0.0.0, reaching the two server addresses from two local addresses, no NAT."""
    clock = Clock()
    controller = NATTraversalController(NATSettings(), reactor=clock)
    shared, transport = sharedDatagramSocket(controller, host="0.0.0.0", port=5060)
    responder = BindingResponder(primary=PRIMARY, alternate=ALTERNATE)
    routes = {PRIMARY[0]: "192.0.2.10", ALTERNATE[0]: "192.0.2.11"}
    results: List[Any] = []
    controller.discoverNATBehaviour(shared, PRIMARY, route=lambda d: routes[d[0]]).addBoth(results.append)
    while not results:
        data, destination = transport.written.pop(0)
        reply = responder.respond(data, (routes[destination[0]], 5060), receivedOn=destination, now=0.0)
        assert reply is not None
        shared.datagramReceived(reply.data, reply.sendFrom or destination)
    behaviour = results[0]
    assert isinstance(behaviour, NATBehaviour), behaviour
    assert behaviour.natPresent is False and behaviour.localAddress == ("192.0.2.10", 5060)
    assert behaviour.mapping == ENDPOINT_INDEPENDENT
