"""
Requests reaching the client role on a flow (RFC 5626 §5.3: the registrar reaches the UA through the flow it
registered): OPTIONS answered 200 with Supported: outbound, anything else 480, ACK not at all, each logged as
``sip.request.received`` with its method and source, and counted in ``sipnat_client_requests_total``.
"""

from __future__ import annotations

from typing import Any, Dict, List

from twisted.logger import globalLogPublisher

from twisted_sipnat.core.sip import Response, parse
from twisted_sipnat.service.figures import Figures

from .flowkit import EDGE_A, edges, role, stop
from .support import NetReactor

REQUEST = (
    "{method} sip:alice@127.0.0.1:{port};ob SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{branch}\r\n"
    "From: <sip:bob@example.com>;tag=b1\r\n"
    "To: <sip:alice@example.com>\r\n"
    "Call-ID: {branch}@example.com\r\n"
    "CSeq: 1 {method}\r\n"
    "Max-Forwards: 69\r\n"
    "Content-Length: 0\r\n\r\n"
)


def answersTo(net: NetReactor, port: int) -> List[Response]:
    out = []
    for data, source, _dest in net.sent:
        if source == ("127.0.0.1", port) and not data.startswith((b"REGISTER", b"OPTIONS")) and data[:3] == b"SIP":
            message = parse(data)
            if isinstance(message, Response) and "Call-ID" in message.headers and "@example.com" in (
                    message.headers.get("Call-ID") or ""):
                out.append(message)
    return out


def test_requestsFromTheRegistrarAreAnsweredAndLogged() -> None:
    net = NetReactor()
    registrar, = edges(net, EDGE_A)
    client = role(net, [EDGE_A])
    client.startService()
    net.run(1)
    port = client.listener.address()[1]
    events: List[Dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for index, method in enumerate(("OPTIONS", "INVITE", "ACK", "MESSAGE")):
            registrar.transport.write(REQUEST.format(method=method, port=port, branch=f"r{index}").encode(),
                                      ("127.0.0.1", port))
        net.run(1)
    finally:
        globalLogPublisher.removeObserver(events.append)
    answers = answersTo(net, port)
    assert [(a.code, a.headers.get("CSeq")) for a in answers] == [(200, "1 OPTIONS"), (480, "1 INVITE"),
                                                                   (480, "1 MESSAGE")], "ACK: no answer"
    assert "outbound" in (answers[0].headers.get("Supported") or "") and answers[0].headers.get("Allow")
    received = [e for e in events if e.get("sipnat_event") == "sip.request.received"]
    assert [(e["method"], e["source"]) for e in received] == [(m, "127.0.0.1:5070") for m in
                                                               ("OPTIONS", "INVITE", "ACK", "MESSAGE")]
    assert all(e["log_level"].name == "info" for e in received)
    figures = Figures()
    client.reportFigures(figures)
    assert [figures.get("sipnat_client_requests_total", result=r) for r in ("options", "unavailable", "ack")] == [
        1, 2, 1]
    assert client.flows[0].up and client.failures == 0, "the flow is untouched"
    stop(net, client)
