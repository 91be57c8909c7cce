"""
The library through a real netfilter NAT (issue 6, items 1-4 and 6).  The client runs in ``lan`` as a driver
process (drivers/natclient.py: NATTraversalController + SharedDatagramProtocol / SharedStreamFactory); the
peers run in ``pub``; the router's conntrack table is the referee.

The conntrack UDP timeout is 3 s (conftest.UDP_TIMEOUT), keepalive intervals 0.5-1 s and RTO 50-100 ms, so
"many timeouts' worth of silence" takes seconds, not minutes.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Tuple

import netlab
import peerkit
import pytest
from netlab import Driver, NetLab

pytestmark = [pytest.mark.lab, pytest.mark.timeout(90)]

COTURN = (netlab.PUB_ADDR, 3478)
KAMAILIO = (netlab.PUB_ADDR, 5060)
RESPONDER = (netlab.PUB_ADDR, 4478)
FLOW_FAILURES = ("STUNTimeout", "MappedAddressChanged", "PongTimeout", "FlowConnectionLost")


def resolve(client: Driver, nextHop: Tuple[str, int], timeout: float = 10.0) -> Dict[str, Any]:
    client.send("resolve", nextHop=list(nextHop))
    event = client.expect(lambda e: e["event"] in ("resolved", "resolveError"), timeout, "a resolution")
    assert event["event"] == "resolved", event
    return event


def localOf(client: Driver) -> Tuple[str, int]:
    ready = next(e for e in client.history if e["event"] == "ready")
    return (ready["local"][0], ready["local"][1])


def stats(client: Driver) -> Dict[str, int]:
    return client.call("stats", "stats")["counts"]


def flowFailures(events: Any) -> list:
    return [e for e in events if e.get("event") == "flowFailure"]


# ------------------------------------------------------------------------------------------------ item 1


@pytest.mark.parametrize("mode", ["eim", "random"])
def test_resolveThroughTheNATAgainstCoturn(
    lab: NetLab, labCoturn: peerkit.RunningPeer, natClient: Callable[..., Driver], mode: str
) -> None:
    """resolvePublicAddress from ``lan`` returns 203.0.113.1 and exactly the port conntrack allocated."""
    lab.setMode(mode)
    client = natClient(stunServers=[list(COTURN)])
    result = resolve(client, COTURN)
    local = localOf(client)
    entry = lab.mappingFor(local, COTURN)
    assert entry is not None, lab.snapshot()
    assert (result["host"], result["port"]) == entry.publicAddress
    assert result["host"] == netlab.NAT_OUTSIDE
    if mode == "eim":
        assert result["port"] == local[1]


@pytest.mark.parametrize("mode", ["eim", "random"])
def test_resolveThroughTheNATAgainstOurResponder(
    lab: NetLab, natClient: Callable[..., Driver], responder: Driver, mode: str
) -> None:
    """
    The same against our own responder role in ``pub``: the address it saw the request come from, the address
    it reported, and the router's mapping are one and the same.
    """
    lab.setMode(mode)
    client = natClient(stunServers=[list(RESPONDER)])
    result = resolve(client, RESPONDER)
    entry = lab.mappingFor(localOf(client), RESPONDER)
    assert entry is not None, lab.snapshot()
    assert (result["host"], result["port"]) == entry.publicAddress
    seen = responder.expectEvent("request", 5)
    assert tuple(seen["from"]) == entry.publicAddress


# ------------------------------------------------------------------------------------------------ item 2


@pytest.mark.parametrize("method", ["stun", "crlf"])
def test_keepalivesHoldTheMappingAndItExpiresWithout(
    lab: NetLab, labKamailio: peerkit.RunningPeer, natClient: Callable[..., Driver], record_property: Any, method: str
) -> None:
    """
    Random mode, Kamailio as the RFC 5626 edge (next hop and STUN server).  With keepalives every 0.8-1 s
    (below the 3 s conntrack timeout) — STUN Binding requests, or CRLFCRLF datagrams that nothing answers — the
    mapping stays for 4 timeouts' worth of SIP silence (same conntrack entry, same port, no flow failure) and a
    new resolution still gets it; after ``freeResources`` the mapping expires and the next resolution gets a
    new port.
    """
    lab.setMode("random")
    client = natClient(udpKeepaliveInterval=1.0, rto=0.1, udpKeepaliveMethod=method)
    first = resolve(client, KAMAILIO)
    local = localOf(client)
    mapped = (first["host"], first["port"])
    assert client.call("keepalive", "keepalive", nextHop=list(KAMAILIO))["started"] is True
    silence = 4 * lab.udpTimeout
    end = time.monotonic() + silence
    while time.monotonic() < end:
        events = client.collect(lab.udpTimeout / 2)
        assert flowFailures(events) == []
        entry = lab.mappingFor(local, KAMAILIO)
        assert entry is not None and entry.publicAddress == mapped, lab.snapshot()
    counts = stats(client)
    sent = counts.get(f"udpTx:{KAMAILIO[0]}:{KAMAILIO[1]}", 0)
    answered = counts.get(f"udpRx:{KAMAILIO[0]}:{KAMAILIO[1]}", 0)
    assert sent >= silence / 1.0 - 1, counts
    if method == "stun":
        assert answered >= silence / 1.0 - 1, counts
    else:
        assert answered == 1, f"only the resolution is answered; CRLF keepalives get no reply: {counts}"
    again = resolve(client, KAMAILIO)
    assert (again["host"], again["port"]) == mapped

    client.call("free", "freed")
    stoppedAt = time.monotonic()
    while lab.mappingFor(local, KAMAILIO) is not None:
        assert time.monotonic() - stoppedAt < lab.udpTimeout + 6, lab.snapshot()
        assert flowFailures(client.collect(0.25)) == []
    record_property(f"mappingLifetimeAfterKeepalivesStopped[{method}]", round(time.monotonic() - stoppedAt, 2))
    fresh = resolve(client, KAMAILIO)
    assert fresh["host"] == netlab.NAT_OUTSIDE
    assert fresh["port"] != mapped[1], "a mapping re-created after expiry gets a new random port"


# ------------------------------------------------------------------------------------------------ item 3


@pytest.mark.parametrize("rebind", ["flush", "modeChange"])
def test_rebindingIsAMappedAddressChange(
    lab: NetLab, labCoturn: peerkit.RunningPeer, natClient: Callable[..., Driver], rebind: str, record_property: Any
) -> None:
    """
    While a flow is kept alive (coturn as the next hop), the router forgets the mapping — ``conntrack -F`` in
    random mode, or a switch from port-preserving to random masquerade — and the very next keepalive sees a
    new XOR-MAPPED-ADDRESS: ``flowFailure(MappedAddressChanged(old, new))`` within one keepalive interval,
    once, with ``old``/``new`` matching the router's tables before and after.
    """
    interval = 1.0
    lab.setMode("eim" if rebind == "modeChange" else "random")
    client = natClient(udpKeepaliveInterval=interval, rto=0.1)
    assert client.call("keepalive", "keepalive", nextHop=list(COTURN))["started"] is True
    local = localOf(client)
    answersKey = f"udpRx:{COTURN[0]}:{COTURN[1]}"
    deadline = time.monotonic() + 4 * interval
    while stats(client).get(answersKey, 0) < 2:
        assert time.monotonic() < deadline, "keepalives are not being answered"
        assert flowFailures(client.collect(0.2)) == []
    before = lab.mappingFor(local, COTURN)
    assert before is not None
    if rebind == "flush":
        lab.flushConntrack()
    else:
        lab.setMode("random")
    rebound = time.monotonic()
    failure = client.expectEvent("flowFailure", interval + 1.0)
    after = lab.mappingFor(local, COTURN)
    record_property("rebindingDetectedAfter", round(failure["t"] - rebound, 3))
    assert failure["type"] == "MappedAddressChanged", failure
    assert failure["t"] - rebound <= interval + 0.3
    assert tuple(failure["old"]) == before.publicAddress
    assert after is not None and tuple(failure["new"]) == after.publicAddress
    assert failure["new"] != failure["old"]
    assert flowFailures(client.collect(2 * interval)) == [], "reported once; the context's keepalives stop"


# ------------------------------------------------------------------------------------------------ item 4


def startTCPFlow(
    lab: NetLab, natClient: Callable[..., Driver], peer: peerkit.RunningPeer, interval: float, pongTimeout: float
) -> Driver:
    client = natClient(tcpKeepaliveInterval=interval, pongTimeout=pongTimeout)
    connected = client.call("connect", "connected", host=peer.address[0], port=peer.address[1])
    entry = lab.mappingFor(tuple(connected["local"]), peer.address, proto="tcp")
    assert entry is not None and entry.publicAddress[0] == netlab.NAT_OUTSIDE, lab.snapshot()
    started = client.call("keepalive", "keepalive", nextHop=list(peer.address), transport="tcp")
    assert started["started"] is True
    return client


def test_tcpPingsThroughTheNATThenKamailioKilled(
    lab: NetLab, labKamailioFactory: Callable[[], peerkit.RunningPeer], natClient: Callable[..., Driver]
) -> None:
    """
    One TCP connection from ``lan`` through the NAT to Kamailio: CRLFCRLF pings every 0.4-0.5 s, each answered
    by a CRLF pong, no false PongTimeout over 3 s; then Kamailio is killed → ``FlowConnectionLost`` (it closes
    the connection) or ``PongTimeout``, within one interval + ``pongTimeout``.
    """
    interval, pongTimeout = 0.5, 1.0
    peer = labKamailioFactory()
    client = startTCPFlow(lab, natClient, peer, interval, pongTimeout)
    assert flowFailures(client.collect(3.0)) == []
    counts = stats(client)
    assert counts.get("tcpPings", 0) >= 5, counts
    assert counts.get("tcpPongs", 0) >= counts["tcpPings"] - 1, counts
    peer.stop()
    killed = time.monotonic()
    failure = client.expectEvent("flowFailure", interval + pongTimeout + 3.0)
    assert failure["type"] in ("FlowConnectionLost", "PongTimeout"), failure
    assert failure["t"] - killed <= interval + pongTimeout + 0.5


def test_tcpSilentPathIsAPongTimeout(
    lab: NetLab, labKamailioFactory: Callable[[], peerkit.RunningPeer], natClient: Callable[..., Driver]
) -> None:
    """
    The path dies without a FIN or RST (the router drops everything): no pong comes, and the flow fails with
    ``PongTimeout`` between ``pongTimeout`` and one interval + ``pongTimeout`` after the path died.
    """
    interval, pongTimeout = 0.5, 1.0
    peer = labKamailioFactory()
    client = startTCPFlow(lab, natClient, peer, interval, pongTimeout)
    assert flowFailures(client.collect(1.2)) == []
    assert stats(client).get("tcpPongs", 0) >= 1
    lab.impair(loss=1.0)
    cut = time.monotonic()
    failure = client.expectEvent("flowFailure", interval + pongTimeout + 3.0)
    assert failure["type"] == "PongTimeout", failure
    assert pongTimeout - 0.1 <= failure["t"] - cut <= interval + pongTimeout + 0.5


# ------------------------------------------------------------------------------------------------ item 6


def test_lossWithinTheRetransmissionBudgetIsNoFlowFailure(
    lab: NetLab, labCoturn: peerkit.RunningPeer, natClient: Callable[..., Driver], record_property: Any
) -> None:
    """
    30 % loss in the router, first on the way out (requests lost), then on the way back (responses lost), 8 s
    each with keepalives every 0.8-1 s: RFC 8489 retransmissions carry every keepalive through, so there is no
    flow failure, and the counters show that retransmissions really happened (more requests than answers).

    One direction at a time keeps a *true* failure (7 requests in a row lost: 0.3^7 ≈ 2e-4 per keepalive)
    negligible; with loss both ways (0.51^7 ≈ 0.9 % per keepalive) a correct library would fail now and then.
    """
    client = natClient(udpKeepaliveInterval=1.0, rto=0.1)
    assert client.call("keepalive", "keepalive", nextHop=list(COTURN))["started"] is True
    mechanisms = []
    for direction in ("out", "in"):
        mechanisms.append(lab.impair(loss=0.3, directions=direction))
        failures = flowFailures(client.collect(8.0))
        assert failures == [], f"{direction}: {failures}\n{client.describe()}"
    lab.clearImpairment()
    assert flowFailures(client.collect(1.5)) == []
    counts = stats(client)
    sent = counts.get(f"udpTx:{COTURN[0]}:{COTURN[1]}", 0)
    answered = counts.get(f"udpRx:{COTURN[0]}:{COTURN[1]}", 0)
    record_property("lossMechanism", mechanisms[0])
    record_property("lossRequestsSent", sent)
    record_property("lossAnswersReceived", answered)
    assert answered >= 14, counts
    assert sent > answered, f"30 % loss must have cost retransmissions: {counts}"


# ---------------------------------------------------------------------------------------- updateNextHop


def test_updateNextHopMovesTheFlowWithoutAFalseRebinding(
    lab: NetLab, labCoturn: peerkit.RunningPeer, labKamailio: peerkit.RunningPeer, natClient: Callable[..., Driver]
) -> None:
    """
    Random mode gives each destination its own public port, so moving the keepalives from coturn to Kamailio
    (``updateNextHop``) legitimately changes the XOR-MAPPED-ADDRESS: that is a new flow, not a rebinding, and
    must not be reported.  The keepalives go to the new hop at once (its conntrack entry appears, the old one
    is no longer fed), and a real rebinding afterwards is still caught against the new hop's baseline.
    """
    interval = 0.5
    lab.setMode("random")
    client = natClient(udpKeepaliveInterval=interval, rto=0.1)
    assert client.call("keepalive", "keepalive", nextHop=list(COTURN))["started"] is True
    assert flowFailures(client.collect(3 * interval)) == []
    local = localOf(client)
    oldHop = lab.mappingFor(local, COTURN)
    assert oldHop is not None
    client.call("updateNextHop", "nextHopUpdated", nextHop=list(KAMAILIO))
    assert flowFailures(client.collect(4 * interval)) == [], client.describe()
    counts = stats(client)
    assert counts.get(f"udpRx:{KAMAILIO[0]}:{KAMAILIO[1]}", 0) >= 3, counts
    newHop = lab.mappingFor(local, KAMAILIO)
    assert newHop is not None and newHop.publicAddress != oldHop.publicAddress, lab.snapshot()
    toCoturn = counts.get(f"udpTx:{COTURN[0]}:{COTURN[1]}", 0)
    assert flowFailures(client.collect(2 * interval)) == []
    assert stats(client).get(f"udpTx:{COTURN[0]}:{COTURN[1]}", 0) == toCoturn, "nothing more goes to the old hop"
    lab.flushConntrack()
    failure = client.expectEvent("flowFailure", interval + 1.0)
    assert failure["type"] == "MappedAddressChanged", failure
    assert tuple(failure["old"]) == newHop.publicAddress


# --------------------------------------------------------------------------------- TCP binding lifetime


OPTIONS = (
    "OPTIONS sip:{host}:{port} SIP/2.0\r\n"
    "Via: SIP/2.0/TCP {local};branch=z9hG4bK-lab-{n};rport\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:probe@{host}>;tag=lab{n}\r\n"
    "To: <sip:{host}>\r\n"
    "Call-ID: sipnat-lab-{n}@{local}\r\n"
    "CSeq: {n} OPTIONS\r\n"
    "Content-Length: 0\r\n\r\n"
)


@pytest.mark.parametrize("pings", [True, False])
def test_tcpPingsKeepTheNATBindingUsable(
    lab: NetLab, labKamailio: peerkit.RunningPeer, natClient: Callable[..., Driver], pings: bool, record_property: Any
) -> None:
    """
    Random mode and a 3 s idle timeout for established TCP entries in the router.  With CRLFCRLF pings every
    0.8-1 s, the connection to Kamailio outlives three timeouts of SIP silence and still carries an OPTIONS /
    200 exchange; without them the router forgets the connection and the next SIP message does not get
    through (it leaves on a new random port, which Kamailio does not know).
    """
    timeout = 3
    lab.setMode("random")
    lab.setTcpEstablishedTimeout(timeout)
    client = natClient(tcpKeepaliveInterval=1.0, pongTimeout=1.0)
    connected = client.call("connect", "connected", host=KAMAILIO[0], port=KAMAILIO[1])
    local = (connected["local"][0], connected["local"][1])
    before = lab.mappingFor(local, KAMAILIO, proto="tcp")
    assert before is not None, lab.snapshot()
    if pings:
        assert client.call("keepalive", "keepalive", nextHop=list(KAMAILIO), transport="tcp")["started"] is True
        end = time.monotonic() + 3 * timeout
        while time.monotonic() < end:
            assert flowFailures(client.collect(1.0)) == []
            entry = lab.mappingFor(local, KAMAILIO, proto="tcp")
            assert entry is not None and entry.publicAddress == before.publicAddress, lab.snapshot()
    else:
        silentSince = time.monotonic()
        while lab.mappingFor(local, KAMAILIO, proto="tcp") is not None:
            assert time.monotonic() - silentSince < timeout + 6, lab.snapshot()
            client.collect(0.25)
        record_property("tcpMappingLifetimeIdle", round(time.monotonic() - silentSince, 2))
    client.send("sipSend", text=OPTIONS.format(host=KAMAILIO[0], port=KAMAILIO[1], local=f"{local[0]}:{local[1]}", n=1))
    if pings:
        reply = client.expect(lambda e: e["event"] in ("sipData", "sipConnectionLost"), 3.0, "Kamailio's reply")
        assert reply["event"] == "sipData" and reply["text"].startswith("SIP/2.0 200"), reply
    else:
        outcome = [e for e in client.collect(3.0) if e["event"] in ("sipData", "sipConnectionLost")]
        record_property("tcpWithoutPingsOutcome", ",".join(e["event"] for e in outcome) or "silence")
        assert not any(e["event"] == "sipData" for e in outcome), outcome
