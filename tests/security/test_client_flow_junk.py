"""
Junk on the client role's flows: what arrives from the next hop or from anyone else on the SIP socket never causes
a traceback, an answer to a stranger (the user agent must not reflect spoofed requests), a flow failure or a
registration change; it is counted and said in one rate-limited line per interval.
"""

from __future__ import annotations

import random
from typing import Any, Dict, List

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.logger import LogLevel, globalLogPublisher

from tests.service.flowkit import EDGE_A, edges, role, stop
from tests.service.support import NetReactor
from twisted_sipnat.service.figures import Figures

OPTIONS = (
    "OPTIONS sip:alice@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.9:5060;branch=z9hG4bKx{n}\r\n"
    "From: <sip:eve@example.net>;tag=e\r\nTo: <sip:alice@example.com>\r\nCall-ID: x{n}\r\nCSeq: 1 OPTIONS\r\n\r\n"
)
FORGED_200 = (
    "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKforged\r\nFrom: <sip:alice@example.com>;tag=1\r\n"
    "To: <sip:alice@example.com>;tag=2\r\nCall-ID: forged\r\nCSeq: 1 REGISTER\r\nContact: <sip:eve@203.0.113.9>\r\n\r\n"
)


def junk(rng: random.Random) -> List[bytes]:
    return [
        bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300))),
        b"\xff\xfe INVITE sip:x SIP/2.0\r\n\r\n",
        b"INVITE sip:x SIP/2.0\r\n" + b"X: " + b"a" * 70000 + b"\r\n\r\n",
        b"OPTIONS sip:alice@127.0.0.1 SIP/2.0\r\nCSeq: 1 OPTIONS\r\n\r\n",  # nothing a response could copy
        b"SIP/2.0 200 OK\r\nVia: garbage\r\n\r\n",
        b"SIP/2.0 999999 Whatever\r\n\r\n",
        b"\r\n\r\n\r\n",
        b"M" * 40 + b" sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n",
    ]


def test_aFloodOfJunkFromTheNextHopAndFromStrangersChangesNothing() -> None:
    net = NetReactor()
    registrar, = edges(net, EDGE_A)
    client = role(net, [EDGE_A])
    client.startService()
    net.run(1)
    port = client.listener.address()[1]
    registered = client.flows[0].registerClient.registered  # type: ignore[union-attr]
    stranger = net.listenUDP(6000, type(registrar)(), "127.0.0.1")
    events: List[Dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    rng = random.Random(14)
    sentBefore = len(net.sent)
    try:
        for n in range(500):
            for data in junk(rng):
                registrar.transport.write(data, ("127.0.0.1", port))
                stranger.write(data, ("127.0.0.1", port))
            stranger.write(OPTIONS.format(n=n).encode(), ("127.0.0.1", port))
            stranger.write(FORGED_200.encode(), ("127.0.0.1", port))
            net.advance(0.02)
        net.run(2)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert not [e for e in events if e.get("log_failure") is not None], "no traceback"
    toStranger = [d for d, src, dst in net.sent[sentBefore:] if src == ("127.0.0.1", port) and dst[1] == 6000]
    assert toStranger == [], "nothing is answered to an address that is no next hop (no reflection)"
    warnings = [e for e in events if e.get("sipnat_event") == "sipnat.client.dropped"]
    assert 1 <= len(warnings) <= 3, "one line per 10 s interval, not one per datagram"
    assert all(e["log_level"] == LogLevel.warn for e in warnings)
    flow = client.flows[0]
    assert flow.up and flow.failures == 0 and flow.registerClient.registered is registered  # type: ignore[union-attr]
    stats = client.demux.stats
    assert stats["requests.stranger"] >= 500 and stats["dropped.malformed"] >= 1000
    figures = Figures()
    client.reportFigures(figures)
    assert figures.get("sipnat_client_requests_total", result="stranger") == stats["requests.stranger"]
    assert figures.get("sipnat_client_requests_total", result="options") == 0
    stranger.stopListening()
    stop(net, client)


def test_aFloodOfRequestsFromTheNextHopIsAnsweredAtItsRateAndLoggedOncePerInterval() -> None:
    net = NetReactor()
    registrar, = edges(net, EDGE_A)
    client = role(net, [EDGE_A])
    client.startService()
    net.run(1)
    port = client.listener.address()[1]
    events: List[Dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for n in range(2000):  # 2,000 OPTIONS in 2 s
            registrar.transport.write(OPTIONS.format(n=n).encode(), ("127.0.0.1", port))
            net.advance(0.001)
        net.run(1)
    finally:
        globalLogPublisher.removeObserver(events.append)
    stats = client.demux.stats
    assert stats["requests.options"] <= 20 + 10 * 4, "the burst, then 10/s"
    assert stats["requests.options"] + stats["requests.rate_limited"] == 2000
    received = [e for e in events if e.get("sipnat_event") == "sip.request.received"]
    assert len(received) == stats["requests.options"], "an info line per answered request, none per dropped one"
    assert len([e for e in events if e.get("sipnat_event") == "sipnat.client.dropped"]) <= 1
    figures = Figures()
    client.reportFigures(figures)
    assert figures.get("sipnat_client_requests_total", result="rate_limited") == stats["requests.rate_limited"]
    assert client.flows[0].up and client.failures == 0
    stop(net, client)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2000), fromHop=st.booleans())
def test_noDatagramMakesTheDemuxRaise(data: bytes, fromHop: bool) -> None:
    from twisted_sipnat.service.flowdemux import FlowDemux

    class Flow:
        nextHop = ("192.0.2.1", 5060)

        def __init__(self) -> None:
            self.received: List[bytes] = []

        def datagramReceived(self, data: bytes, message: Any, addr: Any) -> None:
            self.received.append(data)

        def attach(self, transport: Any) -> None:
            pass

        def detach(self) -> None:
            pass

    class Transport:
        def __init__(self) -> None:
            self.written: List[Any] = []

        def write(self, data: bytes, addr: Any) -> None:
            self.written.append((data, addr))

    demux = FlowDemux(lambda: 0.0)
    flow, transport = Flow(), Transport()
    demux.add(flow)
    demux.makeConnection(transport)  # type: ignore[arg-type]
    source = ("192.0.2.1", 5060) if fromHop else ("203.0.113.9", 5060)
    for prefix in (b"", b"OPTIONS sip:a@b SIP/2.0\r\n", b"SIP/2.0 200 OK\r\n"):
        demux.datagramReceived(prefix + data, source)
    if not fromHop:
        assert transport.written == [] and flow.received == [], "a stranger gets nothing, reaches nothing"
