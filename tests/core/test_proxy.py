"""
twisted_sipnat.core.proxy: the edge's handling of every message, as RFC 3261 §16 (stateless proxy) and RFC 5626
§5.3 say: Via stamping, requests for the edge itself, proxying to a registered flow, responses back.
"""

from __future__ import annotations

from typing import Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.sipedgekit import CALLER, TCP_FLOW, UDP_FLOW, asRequest, asResponse, register, request
from twisted_sipnat.core.proxy import BRANCH_PREFIX, EdgeProxy, Outcome
from twisted_sipnat.core.registrar import Flow, Registrar
from twisted_sipnat.core.sip import Via

EDGE_HOST = "203.0.113.20"
OUTBOUND = '<sip:bob@10.0.0.1:5060;ob>;+sip.instance="<urn:uuid:1>";reg-id=1'


def _proxy(**kw: object) -> EdgeProxy:
    return EdgeProxy(Registrar(["example.com"], **kw), host=EDGE_HOST, ports={"udp": 5062, "tcp": 5063},  # type: ignore[arg-type]
                     secret=b"k" * 32)


def _registered(proxy: EdgeProxy, flow: Flow = UDP_FLOW, contact: str = "<sip:bob@10.0.0.1:5060>",
                extra: tuple = ()) -> None:  # type: ignore[type-arg]
    outcome = proxy.receive(register(contacts=[contact], extra=extra), flow, 0.0, stream=flow.transport == "tcp")
    assert asResponse(outcome.sends[0].data).code == 200


def _only(outcome: Outcome, flow: Optional[Flow] = None) -> bytes:
    assert len(outcome.sends) == 1, outcome
    if flow is not None:
        assert outcome.sends[0].flow == flow
    return outcome.sends[0].data


# -- Via stamping (RFC 3261 §18.2.1, RFC 3581 §4) --------------------------------------------------------------


@pytest.mark.parametrize("flow", [UDP_FLOW, TCP_FLOW])
def test_topViaGetsReceivedAndRportOnEveryTransport(flow: Flow) -> None:
    proxy = _proxy()
    outcome = proxy.receive(register(transport=flow.transport.upper()), flow, 0.0, stream=flow.transport == "tcp")
    via = Via.parse(asResponse(_only(outcome, flow)).headers.get("Via") or "")
    assert via.received == flow.host
    assert via.rport == flow.port


# -- malformed input ------------------------------------------------------------------------------------------


def test_malformedDatagramGets400AndStreamIsClosed() -> None:
    proxy = _proxy()
    bad = register().replace(b"To: <sip:bob@example.com>\r\n", b"To <sip:bob@example.com>\r\n")
    outcome = proxy.receive(bad, UDP_FLOW, 0.0)
    assert outcome.kind == "malformed" and not outcome.close
    assert asResponse(_only(outcome, UDP_FLOW)).code == 400
    outcome = proxy.receive(bad, TCP_FLOW, 0.0, stream=True)
    assert outcome.close and asResponse(_only(outcome)).code == 400


def test_unanswerableJunkIsDropped() -> None:
    outcome = _proxy().receive(b"\x16\x03\x01 not sip at all\r\n\r\n", UDP_FLOW, 0.0)
    assert outcome.kind == "malformed" and outcome.sends == []


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_noBytesRaise(data: bytes) -> None:
    for stream in (False, True):
        outcome = _proxy().receive(data, TCP_FLOW if stream else UDP_FLOW, 0.0, stream=stream)
        assert outcome.kind in ("malformed", "answered", "dropped", "response")


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([register(), request(), request("ACK"), register(contacts=[OUTBOUND], extra=["Supported: outbound"])]),
       st.lists(st.tuples(st.integers(0, 400), st.binary(min_size=0, max_size=3)), min_size=1, max_size=4))
def test_mutatedMessagesNeverRaise(message: bytes, edits: list) -> None:  # type: ignore[type-arg]
    """Valid messages with bytes replaced, inserted or cut: an outcome every time, and a 400 only for requests."""
    data = bytearray(message)
    for at, replacement in edits:
        at %= len(data) or 1
        data[at : at + 1] = replacement
    proxy = _proxy()
    _registered(proxy)
    for stream in (False, True):
        outcome = proxy.receive(bytes(data), TCP_FLOW if stream else UDP_FLOW, 1.0, stream=stream)
        assert outcome.kind in ("malformed", "answered", "dropped", "response")
        if outcome.kind == "malformed":
            assert outcome.close == stream
        for send in outcome.sends:
            assert send.data.startswith((b"SIP/2.0 ", b"INVITE ", b"ACK ", b"REGISTER ")) or b" SIP/2.0\r\n" in send.data


# -- requests for the edge itself -----------------------------------------------------------------------------


@pytest.mark.parametrize("uri", ["sip:example.com", f"sip:{EDGE_HOST}:5062", f"sip:ping@{EDGE_HOST}"])
def test_optionsForTheEdgeIs200(uri: str) -> None:
    response = asResponse(_only(_proxy().receive(request("OPTIONS", uri), CALLER, 0.0), CALLER))
    assert response.code == 200
    assert "REGISTER" in (response.headers.get("Allow") or "")


@pytest.mark.parametrize(("method", "code"), [("INVITE", 405), ("MESSAGE", 405), ("BREW", 501), ("CANCEL", 481)])
def test_otherRequestsForTheEdge(method: str, code: int) -> None:
    response = asResponse(_only(_proxy().receive(request(method, "sip:example.com"), CALLER, 0.0)))
    assert response.code == code
    if code == 405:
        assert response.headers.getAll("Allow") == ["REGISTER", "OPTIONS"]


def test_ackIsNeverAnswered() -> None:
    proxy = _proxy()
    assert proxy.receive(request("ACK", "sip:example.com"), CALLER, 0.0).sends == []
    assert proxy.receive(request("ACK", "sip:nobody@example.com"), CALLER, 0.0).sends == []


# -- proxying (RFC 3261 §16.6, RFC 5626 §5.3) -----------------------------------------------------------------


def test_requestToARegisteredAORIsProxiedOverItsFlow() -> None:
    proxy = _proxy()
    _registered(proxy)
    forwarded = asRequest(_only(proxy.receive(request("MESSAGE", body=b"hi"), CALLER, 1.0), UDP_FLOW))
    assert forwarded.uri == "sip:bob@10.0.0.1:5060", "§16.6 step 1: the Request-URI is the Contact"
    assert forwarded.headers.get("Max-Forwards") == "69", "§16.6 step 3"
    vias = [Via.parse(v) for v in forwarded.headers.getAll("Via")]
    assert (vias[0].transport, vias[0].host, vias[0].port) == ("UDP", EDGE_HOST, 5062)
    assert (vias[0].branch or "").startswith(BRANCH_PREFIX) and (vias[0].branch or "").startswith("z9hG4bK")
    assert vias[1].received == CALLER.host and vias[1].rport == CALLER.port
    assert forwarded.body == b"hi"


def test_missingMaxForwardsGets70AndZeroIs483() -> None:
    proxy = _proxy()
    _registered(proxy)
    forwarded = asRequest(_only(proxy.receive(request(maxForwards=None), CALLER, 1.0)))
    assert forwarded.headers.get("Max-Forwards") == "70"
    response = asResponse(_only(proxy.receive(request(maxForwards="0"), CALLER, 1.0), CALLER))
    assert response.code == 483


def test_branchIsStatelessAndSharedByCancelAndAck() -> None:
    """§16.11: the same incoming Via gives the same branch (retransmission, CANCEL, ACK of a non-2xx)."""
    proxy = _proxy()
    _registered(proxy)

    def branch(method: str, incoming: str = "z9hG4bKcall1") -> Optional[str]:
        forwarded = asRequest(_only(proxy.receive(request(method, branch=incoming), CALLER, 1.0)))
        return Via.parse(forwarded.headers.getAll("Via")[0]).branch

    assert branch("INVITE") == branch("INVITE") == branch("CANCEL") == branch("ACK")
    assert branch("INVITE") != branch("INVITE", "z9hG4bKcall2")


def test_unregisteredAORIs404() -> None:
    response = asResponse(_only(_proxy().receive(request(), CALLER, 0.0)))
    assert response.code == 404


def test_foreignDomainIs404() -> None:
    response = asResponse(_only(_proxy().receive(request(uri="sip:bob@elsewhere.example"), CALLER, 0.0)))
    assert response.code == 404


def test_expiredBindingIsNotUsed() -> None:
    proxy = _proxy()
    _registered(proxy)
    assert asResponse(_only(proxy.receive(request(), CALLER, 4000.0))).code == 404


def test_deadOutboundFlowIs430AndDeadPlainFlowIs480() -> None:
    proxy = _proxy()
    _registered(proxy, TCP_FLOW, OUTBOUND, ("Supported: outbound",))
    proxy.registrar.flowClosed(TCP_FLOW)
    assert asResponse(_only(proxy.receive(request(), CALLER, 1.0))).code == 430
    plain = _proxy()
    _registered(plain, TCP_FLOW)
    plain.registrar.flowClosed(TCP_FLOW)
    assert asResponse(_only(plain.receive(request(), CALLER, 1.0))).code == 480


def test_tcpBindingIsReachedOverItsConnectionWithATCPVia() -> None:
    proxy = _proxy()
    _registered(proxy, TCP_FLOW, OUTBOUND, ("Supported: outbound",))
    forwarded = asRequest(_only(proxy.receive(request(), CALLER, 1.0), TCP_FLOW))
    top = Via.parse(forwarded.headers.getAll("Via")[0])
    assert (top.transport, top.port) == ("TCP", 5063)


def test_tlsBindingIsReachedOverItsConnectionWithATLSVia() -> None:
    """RFC 3261 §18.2.1: the Via names the transport the request goes out on, TLS for a flow over TLS."""
    proxy = EdgeProxy(Registrar(["example.com"]), host=EDGE_HOST, ports={"udp": 5062, "tls": 5061}, secret=b"k" * 32)
    tls = Flow("tls", TCP_FLOW.host, TCP_FLOW.port, TCP_FLOW.connection)
    outcome = proxy.receive(register(contacts=[OUTBOUND], extra=("Supported: outbound",), transport="TLS"), tls,
                            0.0, stream=True)
    assert asResponse(_only(outcome, tls)).code == 200
    forwarded = asRequest(_only(proxy.receive(request(), CALLER, 1.0), tls))
    top = Via.parse(forwarded.headers.getAll("Via")[0])
    assert (top.transport, top.port) == ("TLS", 5061)


def test_proxyRequireIs420() -> None:
    proxy = _proxy()
    _registered(proxy)
    response = asResponse(_only(proxy.receive(request(extra=["Proxy-Require: foo"]), CALLER, 1.0)))
    assert response.code == 420 and response.headers.get("Unsupported") == "foo"


def test_ownRouteIsRemoved() -> None:
    proxy = _proxy()
    _registered(proxy)
    data = request(extra=[f"Route: <sip:{EDGE_HOST}:5062;lr>, <sip:next.example;lr>"])
    forwarded = asRequest(_only(proxy.receive(data, CALLER, 1.0)))
    assert forwarded.headers.getAll("Route") == ["<sip:next.example;lr>"]


def test_inDialogRequestToARegisteredContactIsForwarded() -> None:
    proxy = _proxy()
    _registered(proxy)
    forwarded = asRequest(_only(proxy.receive(request("BYE", "sip:bob@10.0.0.1:5060"), CALLER, 1.0), UDP_FLOW))
    assert forwarded.method == "BYE"


# -- responses ------------------------------------------------------------------------------------------------


def _responseFor(forwarded: bytes, code: int = 180) -> bytes:
    message = asRequest(forwarded)
    vias = "".join(f"Via: {v}\r\n" for v in message.headers.getAll("Via"))
    return (f"SIP/2.0 {code} Whatever\r\n{vias}To: <sip:bob@example.com>;tag=b\r\nFrom: <sip:alice@example.com>;tag=a1"
            f"\r\nCall-ID: call1@test\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n").encode()


@pytest.mark.parametrize("caller", [CALLER, Flow("tcp", "192.0.2.50", 5070, 3), Flow("tls", "192.0.2.50", 5071, 4)])
def test_responseGoesBackToTheNextVia(caller: Flow) -> None:
    proxy = _proxy()
    _registered(proxy)
    data = request()
    if caller.transport != "udp":
        data = data.replace(b"SIP/2.0/UDP", f"SIP/2.0/{caller.transport.upper()}".encode())
    forwarded = _only(proxy.receive(data, caller, 1.0))
    outcome = proxy.receive(_responseFor(forwarded), UDP_FLOW, 2.0)
    back = asResponse(_only(outcome, caller))
    assert outcome.kind == "response"
    assert [Via.parse(v).branch for v in back.headers.getAll("Via")] == ["z9hG4bKcall1"]


def test_forgedResponsesAreDropped() -> None:
    """A response not carrying our MAC is not reflected to the address in its second Via."""
    proxy = _proxy()
    forged = (f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {EDGE_HOST}:5062;branch={BRANCH_PREFIX}0.0123456789abcdef0123\r\n"
              "Via: SIP/2.0/UDP 192.0.2.99:9;branch=z9hG4bKv\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\n"
              "Call-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n").encode()
    assert proxy.receive(forged, UDP_FLOW, 0.0).sends == []
    alone = forged.replace(b"Via: SIP/2.0/UDP 192.0.2.99:9;branch=z9hG4bKv\r\n", b"")
    assert proxy.receive(alone, UDP_FLOW, 0.0).sends == []


def test_ipv6FlowsAndVias() -> None:
    proxy = EdgeProxy(Registrar(["example.com"]), host="2001:db8::20", ports={"udp": 5060}, secret=b"k" * 32)
    flow = Flow("udp", "2001:db8::7", 40001)
    data = register(via="SIP/2.0/UDP [2001:db8::7]:5060;branch=z9hG4bKv6;rport")
    via = Via.parse(asResponse(_only(proxy.receive(data, flow, 0.0), flow)).headers.get("Via") or "")
    assert (via.received, via.rport) == ("2001:db8::7", 40001)
    caller = Flow("udp", "2001:db8::50", 5070)
    invite = request().replace(b"192.0.2.50:5070", b"[2001:db8::50]:5070")
    forwarded = asRequest(_only(proxy.receive(invite, caller, 1.0), flow))
    top = Via.parse(forwarded.headers.getAll("Via")[0])
    assert top.host == "2001:db8::20" and str(top).startswith("SIP/2.0/UDP [2001:db8::20]:5060;")
    vias = "".join(f"Via: {v}\r\n" for v in forwarded.headers.getAll("Via"))
    answer = (f"SIP/2.0 180 Ringing\r\n{vias}To: <sip:bob@example.com>;tag=b\r\nFrom: <sip:alice@example.com>;tag=a1"
              "\r\nCall-ID: call1@test\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n").encode()
    assert _only(proxy.receive(answer, flow, 2.0), caller)
