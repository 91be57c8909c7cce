"""
The client role with several flows (RFC 5626 §4.2, §4.5), on the simulated network: one flow per next hop with
its own reg-id and the same instance; one edge dies, its flow fails and backs off on the 90 s base while the
other keeps the user agent registered, and comes back on its own; OPTIONS pings; SRV next hops.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from twisted.internet import defer
from twisted.names import dns
from twisted.names.error import DNSNameError

from twisted_sipnat.service.figures import Figures
from twisted_sipnat.service.siphops import SIPHops

from .flowkit import EDGE_A, EDGE_B, INSTANCE, edges, regIds, role, states, stop
from .support import NetReactor


def test_oneFlowPerNextHopEachWithItsRegIdAndTheSameInstance() -> None:
    net = NetReactor()
    a, b = edges(net, EDGE_A, EDGE_B)
    client = role(net, [EDGE_A, EDGE_B])
    client.startService()
    net.run(1)
    assert regIds(a) == {(f"<{INSTANCE}>", 1)} and regIds(b) == {(f"<{INSTANCE}>", 2)}
    assert [f.up for f in client.flows] == [True, True] and states(client)["up"] == 2
    assert a.requests[0].headers.get("Call-ID") != b.requests[0].headers.get("Call-ID"), "a registration each"
    net.run(31, step=0.5)
    assert a.stunRequests >= 2 and b.stunRequests >= 2, "each flow kept alive toward its own edge"
    stop(net, client)


def test_oneEdgeDiesItsFlowBacksOffOn90sAndRecoversWhileTheOtherStaysRegistered() -> None:
    net = NetReactor()
    a, b = edges(net, EDGE_A, EDGE_B)
    client = role(net, [EDGE_A, EDGE_B])
    client.startService()
    net.run(1)
    first, second = client.flows
    net.ports[EDGE_B[1]].stopListening()  # edge B is gone: its keepalives go unanswered
    waited = 0.0
    while second.retryAt is None:
        net.advance(0.5)
        waited += 0.5
        assert waited < 120, "flow 2 never failed"
    failedAt = net.seconds()
    assert second.failures == 1 and first.failures == 0 and first.up
    assert second.retryAt - failedAt == 90.0, "RFC 5626 §4.5: base 90 s while flow 1 is up, 50 % of 90 x 2^1"
    assert states(client) == {"registering": 0, "up": 1, "down": 1}
    before = len(a.requests)
    net.advance(second.retryAt - net.seconds())
    assert states(client) == {"registering": 1, "up": 1, "down": 0}, "the retry is under way, edge B still gone"
    net.listenUDP(EDGE_B[1], b, EDGE_B[0])  # edge B is back: a retransmission of that REGISTER reaches it
    net.run(8, step=0.5)
    assert second.up and second.keepalivesStarted == 2, "flow 2 is back on its own after the backoff"
    assert first.up and first.failures == 0 and len(a.requests) == before, "flow 1 untouched all along"
    assert regIds(b) == {(f"<{INSTANCE}>", 2)}, "back with the same instance and reg-id"
    assert client.recovery.failures == {1: 0, 2: 0}
    stop(net, client)


def test_whenEveryFlowFailedTheBaseIs30s() -> None:
    net = NetReactor()
    edges(net, EDGE_A, EDGE_B)
    client = role(net, [EDGE_A, EDGE_B])
    client.startService()
    net.run(1)
    waits: List[Tuple[int, float]] = []
    flowDown = client.flowDown

    def recorded(flow: Any, reason: object) -> float:
        delay = flowDown(flow, reason)
        waits.append((flow.key, delay))
        return delay

    client.flowDown = recorded  # type: ignore[method-assign]
    net.drop = True
    while len(waits) < 2:
        net.advance(0.5)
        assert net.seconds() < 120
    assert [delay for _, delay in waits] == [90.0, 30.0], "the first saw the other up (90 s), the second none (30 s)"
    assert client.recovery.allFailed and states(client)["down"] == 2
    stop(net, client)


def test_optionsPingsKeepTheFlowAndAnUnansweredOneIsAFlowFailure() -> None:
    net = NetReactor()
    a, = edges(net, EDGE_A)
    client = role(net, [EDGE_A], keepalive="options", backoffBase=5.0)
    client.startService()
    net.run(1)
    flow = client.flows[0]
    assert flow.pinger is not None and a.stunRequests == 0 and a.pings == 0, "OPTIONS instead of STUN or CRLF"
    net.run(40, step=0.5)
    options = [r for r in a.requests if r.method == "OPTIONS"]
    assert len(options) >= 2 and flow.failures == 0, "one every 12-15 s (the Flow-Timer), each answered"
    assert options[0].uri == "sip:127.0.0.1:5070" and options[0].headers.get("Call-ID") == options[1].headers.get(
        "Call-ID")
    figures = Figures()
    client.reportFigures(figures)
    assert figures.get("sipnat_keepalives_total", result="answered") >= 2
    net.ports[EDGE_A[1]].stopListening()
    silentSince = net.seconds()
    while flow.failures == 0:
        net.advance(0.5)
    assert net.seconds() - silentSince <= 15 + 32 + 0.5, "the next ping, unanswered until Timer F (32 s)"
    assert flow.retryAt == net.seconds() + 5.0, "then the §4.5 backoff: 50 % of 5 x 2^1 (--backoff-base 5)"
    figures = Figures()
    client.reportFigures(figures)
    assert figures.get("sipnat_flow_failures_total", reason="options_timeout") == 1
    net.listenUDP(EDGE_A[1], a, EDGE_A[0])
    net.run(flow.retryAt - net.seconds() + 1, step=0.5)
    assert flow.up and flow.keepalivesStarted == 2, "recovered after the §4.5 backoff"
    stop(net, client)


class FakeResolver:
    """SRV records and A records by name; a name without records fails as DNS would."""

    def __init__(self, srv: Dict[str, List[Tuple[int, int, int, str]]], hosts: Dict[str, str]) -> None:
        self.srv, self.hosts = srv, hosts
        self.asked: List[str] = []

    def lookupService(self, name: str) -> defer.Deferred[Any]:
        self.asked.append(name)
        if name not in self.srv:
            return defer.fail(DNSNameError(name))
        answers = [dns.RRHeader(name, dns.SRV, payload=dns.Record_SRV(p, w, port, target))
                   for p, w, port, target in self.srv[name]]
        return defer.succeed((answers, [], []))

    def getHostByName(self, name: str) -> defer.Deferred[str]:
        if name not in self.hosts:
            return defer.fail(DNSNameError(name))
        return defer.succeed(self.hosts[name])


def test_withoutNextHopsTheSRVRecordsGiveOneFlowEachInPriorityOrder() -> None:
    net = NetReactor()
    a, b = edges(net, EDGE_A, EDGE_B)
    resolver = FakeResolver({"_sip._udp.example.com": [(20, 0, 5071, "b.example.com"), (10, 0, 5070, "a.example.com"),
                                                       (30, 0, 5072, "c.example.com"), (5, 0, 5060, "")]},
                            {"a.example.com": "127.0.0.1", "b.example.com": "127.0.0.1", "c.example.com": "127.0.0.1"})
    client = role(net, None, srv=SIPHops(net, "example.com", maxFlows=2, resolver=resolver))
    client.startService()
    net.run(1)
    # the target "." (no service there, RFC 2782) is the empty name on the wire
    assert [f.nextHop for f in client.flows] == [EDGE_A, EDGE_B], "priority order, '.' skipped, --max-flows 2"
    assert len(a.requests) == 2, "each flow started once: a REGISTER and its authenticated retry"
    assert regIds(a) == {(f"<{INSTANCE}>", 1)} and regIds(b) == {(f"<{INSTANCE}>", 2)}
    assert resolver.asked == ["_sip._udp.example.com"]
    stop(net, client)


def test_aFailedSRVLookupIsTriedAgainAfterTheBackoff() -> None:
    net = NetReactor()
    edges(net, EDGE_A)
    resolver = FakeResolver({}, {"a.example.com": "127.0.0.1"})
    client = role(net, None, srv=SIPHops(net, "example.com", resolver=resolver))
    client.startService()
    net.run(1)
    assert client.flows == [] and resolver.asked == ["_sip._udp.example.com"]
    resolver.srv["_sip._udp.example.com"] = [(10, 0, 5070, "a.example.com")]
    net.run(31)
    assert len(resolver.asked) == 2 and [f.up for f in client.flows] == [True], "50 % of 30 x 2, then registered"
    stop(net, client)
