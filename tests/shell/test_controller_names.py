"""
STUN server names: a name without a port tries DNS SRV ``_stun._udp`` first (RFC 8489 §8.1), then the name's
address on 3478; a name with a port is looked up directly; IP literals are never looked up; a failed look-up
moves on to the next server.  Driven by a Clock with scripted resolvers.
"""

from __future__ import annotations

from typing import Any, List, Tuple

from twisted.internet.address import IPv4Address

from tests.addresses import HOP
from twisted_sipnat import NATSettings, NATTraversalController
from twisted_sipnat.testing import NamingClock, bindingResponse, sharedDatagramSocket
from twisted_sipnat.testing import SRVTable as SRVResolver


def resolve(clock: NamingClock, srv: SRVResolver, servers: List[Any]) -> Tuple[List[Any], Any, Any]:
    controller = NATTraversalController(NATSettings(stunServers=servers), reactor=clock, dnsResolver=srv)
    shared, transport = sharedDatagramSocket(controller)
    result: List[Any] = []
    controller.resolvePublicAddress(None, shared, HOP).addBoth(result.append)
    return result, shared, transport


def test_srv_is_tried_first_for_a_name_without_port() -> None:
    clock = NamingClock({"stun2.example.com": "198.51.100.12"})
    srv = SRVResolver({"_stun._udp.example.com": [(20, 0, 3480, "stun3.example.com"),
                                                  (10, 0, 3479, "stun2.example.com")]})
    result, shared, transport = resolve(clock, srv, ["stun:example.com"])
    assert srv.asked == ["_stun._udp.example.com"]
    assert clock.asked == ["stun2.example.com"]  # the lowest priority wins
    (request, addr), = transport.stunRequests()
    assert addr == ("198.51.100.12", 3479)
    shared.datagramReceived(bindingResponse(request, ("203.0.113.1", 4)), addr)
    assert result == [IPv4Address("UDP", "203.0.113.1", 4)]


def test_without_srv_the_name_is_used_on_3478() -> None:
    clock = NamingClock({"example.com": "198.51.100.13"})
    result, shared, transport = resolve(clock, SRVResolver({}), [("example.com", None)])
    (_, addr), = transport.stunRequests()
    assert addr == ("198.51.100.13", 3478)


def test_a_name_with_a_port_skips_srv() -> None:
    clock = NamingClock({"stun.example.com": "198.51.100.14"})
    srv = SRVResolver({})
    result, shared, transport = resolve(clock, srv, ["stun:stun.example.com:3490"])
    assert srv.asked == []
    (_, addr), = transport.stunRequests()
    assert addr == ("198.51.100.14", 3490)


def test_ip_literals_are_never_looked_up() -> None:
    clock = NamingClock({})
    srv = SRVResolver({})
    resolve(clock, srv, [("198.51.100.15", 3478), "stun:[2001:db8::1]"])
    assert clock.asked == [] and srv.asked == []


def test_an_unresolvable_server_moves_on_to_the_next() -> None:
    clock = NamingClock({})
    result, shared, transport = resolve(clock, SRVResolver({}), ["stun:nowhere.invalid:3478", ("198.51.100.16", 3478)])
    (request, addr), = transport.stunRequests()
    assert addr == ("198.51.100.16", 3478)
    shared.datagramReceived(bindingResponse(request, ("203.0.113.1", 5)), addr)
    assert result == [IPv4Address("UDP", "203.0.113.1", 5)]
    assert clock.getDelayedCalls() == []


def test_settings_with_servers_given_as_lists_are_values_like_with_tuples() -> None:
    fromJSON = NATSettings(stunServers=[["198.51.100.7", 3478], "stun:stun.example.net"])
    asTuples = NATSettings(stunServers=[("198.51.100.7", 3478), "stun:stun.example.net"])
    assert fromJSON == asTuples and hash(fromJSON) == hash(asTuples)
    assert fromJSON.servers == asTuples.servers
