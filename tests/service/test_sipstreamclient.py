"""twisted_sipnat.service.sipstreamclient: REGISTER over one TCP/TLS connection, on StringTransports and a Clock."""

from __future__ import annotations

from typing import Any, List

import pytest
from OpenSSL import SSL
from service_identity import VerificationError
from service_identity.hazmat import DNS_ID, DNSMismatch
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from twisted_sipnat import NATSettings, NATTraversalController
from twisted_sipnat.core.sip import SIPURI, Response, Via
from twisted_sipnat.errors import (
    FlowConnectError,
    FlowConnectionLost,
    PongTimeout,
    RegistrationConnectionLost,
    RegistrationError,
    TLSVerificationError,
)
from twisted_sipnat.service.figures import Figures
from twisted_sipnat.service.sipstreamclient import CLOSE_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, tlsRefusal
from twisted_sipnat.testing import RecordingObserver

from .streamkit import INSTANCE, LOCAL, REGISTRAR, answer, streamClient


def results(d: defer.Deferred[Any]) -> List[Any]:
    out: List[Any] = []
    d.addBoth(out.append)
    return out


def test_the_first_register_connects_and_sends_one_REGISTER_over_tcp(clock: Clock) -> None:
    client, endpoint, controller = streamClient(clock, instance=INSTANCE, regId=1)
    got = results(client.register(("198.51.100.7", 5060)))
    assert len(endpoint.connections) == 1 and endpoint.hop == REGISTRAR
    conn = endpoint.last.accept()
    [request] = conn.requests()
    via = Via.parse(request.headers.get("Via") or "")
    # RFC 3261 §18.1.1: the transport and the connection's own address in the Via; §19.1.1: ;transport=tcp
    assert (via.transport, via.host, via.port) == ("TCP", *LOCAL) and via.hasParam("rport")
    assert request.headers.get("Contact") == (
        f'<sip:alice@{LOCAL[0]}:{LOCAL[1]};transport=tcp;ob>;reg-id=1;+sip.instance="<{INSTANCE}>"')
    assert request.headers.get("Content-Length") == "0"
    conn.receive(answer(request, flowTimer=30))
    assert isinstance(got[0], Response) and got[0].code == 200
    assert client.registered is not None and client.registered.flowTimer == 30
    assert client.grantedExpires(got[0]) == 600
    assert client.socket is conn.protocol and client.connected
    client.stopService()
    conn.lose()


def test_a_TLS_flow_has_a_TLS_Via_and_a_sips_Contact(clock: Clock) -> None:
    client, endpoint, _ = streamClient(clock, "TLS")
    client.register()
    conn = endpoint.last.accept()
    [request] = conn.requests()
    assert request.headers.get("Via", "").startswith(f"SIP/2.0/TLS {LOCAL[0]}:{LOCAL[1]};")
    assert request.headers.get("Contact") == f"<sips:alice@{LOCAL[0]}:{LOCAL[1]}>"
    conn.receive(answer(request))
    assert client.contact == SIPURI("sips", LOCAL[0], user="alice", port=LOCAL[1])
    client.stop()


def test_no_retransmission_on_a_stream_and_Timer_F_still_ends_it(clock: Clock) -> None:
    client, endpoint, _ = streamClient(clock)
    got = results(client.register())
    conn = endpoint.last.accept()
    assert len(conn.requests()) == 1
    clock.advance(64 * 0.5 - 0.1)
    assert conn.requests() == [] and got == []  # RFC 3261 §17.1.2.2: no Timer E over a reliable transport
    clock.advance(0.1)
    assert isinstance(got[0], Failure) and got[0].check(RegistrationError) and got[0].value.code is None
    assert "Timer F" in got[0].getErrorMessage()
    assert client.stats["register.timeout"] == 1 and client.stats["register.sent"] == 1


def test_a_refresh_goes_over_the_same_connection(clock: Clock) -> None:
    client, endpoint, _ = streamClient(clock)
    client.register()
    conn = endpoint.last.accept()
    conn.receive(answer(conn.requests()[0]))
    got = results(client.register())
    [refresh] = conn.requests()
    assert refresh.headers.get("CSeq") == "2 REGISTER" and len(endpoint.connections) == 1
    conn.receive(answer(refresh))
    assert isinstance(got[0], Response)


def test_a_response_in_pieces_with_pongs_between_is_read(clock: Clock) -> None:
    client, endpoint, controller = streamClient(clock)
    got = results(client.register())
    conn = endpoint.last.accept()
    data = b"\r\n" + answer(conn.requests()[0])
    for i in range(len(data)):
        conn.receive(data[i:i + 1])
    assert isinstance(got[0], Response)
    assert conn.protocol.stats["pongs.received"] == 1  # the CRLF went to the controller, not to the parser
    assert client.stats["dropped.malformed"] == 0


def test_the_controller_keeps_the_connection_alive_with_CRLF_pings(clock: Clock) -> None:
    client, endpoint, controller = streamClient(clock)
    client.register()
    conn = endpoint.last.accept()
    conn.receive(answer(conn.requests()[0], flowTimer=10))
    observer = RecordingObserver()
    assert controller.refreshNATBinding(client.socket, observer, nextHop=REGISTRAR, flowTimer=10) is True
    for _ in range(3):
        clock.advance(10)
        conn.requests()
        conn.receive(b"\r\n")  # RFC 5626 §4.4.1: the pong
    assert conn.pings == 3 and observer.failures == []
    assert controller.flowCountByTransport() == {"udp": 0, "tcp": 1}
    clock.advance(10)
    conn.requests()
    clock.advance(NATSettings().pongTimeout)  # no pong this time: the flow failed
    assert len(observer.failures) == 1 and observer.failures[0].check(PongTimeout)
    controller.freeResources()


def test_a_lost_connection_is_a_flow_failure_and_the_next_register_reconnects(clock: Clock) -> None:
    client, endpoint, controller = streamClient(clock)
    client.register()
    conn = endpoint.last.accept()
    conn.receive(answer(conn.requests()[0], flowTimer=10))
    observer = RecordingObserver()
    controller.refreshNATBinding(client.socket, observer, nextHop=REGISTRAR, flowTimer=10)
    conn.lose()
    assert len(observer.failures) == 1 and observer.failures[0].check(FlowConnectionLost)
    assert client.socket is None and not controller.isKeepingAlive(observer)
    got = results(client.register())
    assert len(endpoint.connections) == 2
    second = endpoint.last.accept(("10.0.0.2", 40001))
    [request] = second.requests()
    assert "10.0.0.2:40001;transport=tcp" in (request.headers.get("Contact") or "")  # the new flow's address
    second.receive(answer(request))
    assert isinstance(got[0], Response)


def test_a_REGISTER_in_progress_when_the_connection_goes_fails_with_RegistrationConnectionLost(clock: Clock) -> None:
    client, endpoint, _ = streamClient(clock)
    got = results(client.register())
    conn = endpoint.last.accept()
    conn.lose()
    failure = got[0]
    assert failure.check(RegistrationConnectionLost)
    assert isinstance(failure.value, RegistrationError) and isinstance(failure.value, FlowConnectionLost)
    assert failure.getErrorMessage().startswith("REGISTER failed: the TCP connection to 192.0.2.1:5060 closed")
    assert clock.getDelayedCalls() == []


def test_a_refused_connection_fails_the_REGISTER_with_FlowConnectError(clock: Clock) -> None:
    client, endpoint, _ = streamClient(clock)
    got = results(client.register())
    endpoint.last.refuse()
    assert got[0].check(FlowConnectError) and "could not connect to 192.0.2.1:5060 over TCP" in got[0].getErrorMessage()
    assert client.stats["connect.failed"] == 1 and clock.getDelayedCalls() == []


def test_a_connection_that_is_never_made_times_out(clock: Clock) -> None:
    client, endpoint, _ = streamClient(clock)
    got = results(client.register())
    clock.advance(DEFAULT_CONNECT_TIMEOUT)
    assert got[0].check(FlowConnectError) and "no connection to 192.0.2.1:5060 within 32 s" in got[0].getErrorMessage()
    assert endpoint.last.d.called  # the endpoint's attempt was cancelled


def test_stop_during_the_connect_keeps_the_attempt_for_the_next_register(clock: Clock) -> None:
    client, endpoint, _ = streamClient(clock)
    first = results(client.register())
    client.stop()
    assert first[0].check(defer.CancelledError)
    second = results(client.register())
    assert len(endpoint.connections) == 1  # one connection being made is enough
    conn = endpoint.last.accept()
    conn.receive(answer(conn.requests()[0]))
    assert isinstance(second[0], Response)


def test_a_certificate_refused_by_TLS_is_a_TLSVerificationError(clock: Clock) -> None:
    client, endpoint, _ = streamClient(clock, "TLS")
    got = results(client.register())
    conn = endpoint.last.accept()
    conn.lose(Failure(SSL.Error([("SSL routines", "", "certificate verify failed")])))
    assert got[0].check(TLSVerificationError)
    assert got[0].getErrorMessage() == "REGISTER failed: TLS with 192.0.2.1:5060 failed: certificate verify failed"
    assert client.stats["tls.refused"] == 1


def test_what_tlsRefusal_says() -> None:
    mismatch = VerificationError(errors=[DNSMismatch(mismatched_id=DNS_ID("example.com"))])
    assert tlsRefusal(Failure(mismatch)) == (True, "the certificate does not name example.com (RFC 5922 §7.2)")
    assert tlsRefusal(Failure(SSL.Error([("SSL routines", "", "wrong version number")]))) == (
        False, "wrong version number")
    assert tlsRefusal(Failure(ValueError("x"))) is None


def test_a_framing_error_closes_the_connection_and_fails_the_REGISTER_in_one_line(clock: Clock) -> None:
    client, endpoint, _ = streamClient(clock)
    got = results(client.register())
    conn = endpoint.last.accept()
    conn.receive(b"SIP/2.0 200 OK\r\nContent-Length: many\r\n\r\n")
    assert conn.closed and got == []
    conn.lose()
    assert got[0].check(RegistrationConnectionLost)


def test_a_malformed_message_that_frames_is_dropped_and_the_connection_stays(clock: Clock) -> None:
    client, endpoint, _ = streamClient(clock)
    got = results(client.register())
    conn = endpoint.last.accept()
    request = conn.requests()[0]
    conn.receive(b"SIP/2.0 2x0 Nope\r\nContent-Length: 0\r\n\r\n")
    conn.receive(b"OPTIONS sip:alice@10.0.0.2 SIP/2.0\r\nContent-Length: 0\r\n\r\n")
    assert not conn.closed and client.stats["dropped.malformed"] == 1 and client.stats["dropped.request"] == 1
    conn.receive(answer(request))
    assert isinstance(got[0], Response)


def test_dropFlow_aborts_the_connection(clock: Clock) -> None:
    client, endpoint, _ = streamClient(clock)
    client.register()
    conn = endpoint.last.accept()
    conn.receive(answer(conn.requests()[0]))
    client.dropFlow()
    assert conn.closed and client.socket is None


def test_a_dropped_connection_lost_late_does_not_fail_the_REGISTER_waiting_for_the_next(clock: Clock) -> None:
    client, endpoint, _ = streamClient(clock)
    client.register()
    old = endpoint.last.accept()
    old.receive(answer(old.requests()[0]))
    client.dropFlow()  # aborted: a real transport reports the loss a moment later
    got = results(client.register())
    assert len(endpoint.connections) == 2
    old.lose()
    assert got == []
    new = endpoint.last.accept(("10.0.0.2", 40001))
    new.receive(answer(new.requests()[0]))
    assert isinstance(got[0], Response)


def test_stopping_closes_the_connection_and_waits_for_it_at_most_CLOSE_TIMEOUT(clock: Clock) -> None:
    client, endpoint, _ = streamClient(clock)
    client.startService()
    client.register()
    conn = endpoint.last.accept()
    conn.receive(answer(conn.requests()[0]))
    stopped = results(client.stopService())
    assert conn.closed and stopped == []
    clock.advance(CLOSE_TIMEOUT)  # the peer never closed: aborted
    conn.lose()
    assert stopped == [None] and clock.getDelayedCalls() == []


def test_the_REGISTER_transactions_are_figures(clock: Clock) -> None:
    client, endpoint, _ = streamClient(clock)
    client.register()
    conn = endpoint.last.accept()
    conn.receive(answer(conn.requests()[0]))
    client.register().addErrback(lambda _: None)
    conn.receive(answer(conn.requests()[0], 403))
    figures = Figures()
    client.reportFigures(figures)
    counted = {result: figures.get("sipnat_register_transactions_total", result=result)
               for result in ("registered", "refused", "timeout")}
    assert counted == {"registered": 1, "refused": 1, "timeout": 0}


def test_a_stream_client_is_TCP_or_TLS() -> None:
    with pytest.raises(ValueError):
        streamClient(Clock(), "UDP")


def test_a_controller_of_its_own_is_not_needed_for_the_figures(clock: Clock) -> None:
    controller = NATTraversalController(NATSettings(), reactor=clock)
    client, _, _ = streamClient(clock, controller=controller)
    assert client.controller is controller


def test_the_per_flow_REGISTER_client_interface(clock: Clock) -> None:
    # What a role with one REGISTER client per flow asks of it, besides register/stop/registered/grantedExpires:
    # keepaliveSocket (its own connection), makeConnection/datagramReceived (the shared UDP socket: unused) and
    # doStop (the role stops: the connection closes).
    client, endpoint, _ = streamClient(clock)
    client.makeConnection(object())
    assert client.keepaliveSocket is None
    client.register()
    conn = endpoint.last.accept()
    conn.receive(answer(conn.requests()[0]))
    assert client.keepaliveSocket is client.socket is conn.protocol
    client.datagramReceived(b"SIP/2.0 200 OK\r\n\r\n", REGISTRAR)
    assert client.stats["dropped.datagram"] == 1 and client.registered is not None
    client.doStop()
    assert conn.closed
    conn.lose()
    assert clock.getDelayedCalls() == []


def test_registerClientFactory_makes_each_flows_client_from_the_role(clock: Clock) -> None:
    from types import SimpleNamespace

    from twisted_sipnat.core.sip.digest import Credentials
    from twisted_sipnat.service.flowtransport import FlowTransport, registerClientFactory
    from twisted_sipnat.service.sipclient import RegisterClient
    from twisted_sipnat.service.sipstreamclient import StreamRegisterClient

    controller = NATTraversalController(NATSettings(), reactor=clock)
    role = SimpleNamespace(reactor=clock, aor="alice@example.com", controller=controller,
                           credentials=Credentials("alice", "pw"), instance=INSTANCE)
    tls = registerClientFactory(FlowTransport("tls", verify=False))(role, 2, REGISTRAR, 2)
    assert isinstance(tls, StreamRegisterClient) and tls.transportName == "TLS" and tls.controller is controller
    assert (tls.registration.regId, tls.registration.instance, tls.nextHop) == (2, INSTANCE, REGISTRAR)
    udp = registerClientFactory(FlowTransport())(role, 1, REGISTRAR, 1)
    assert isinstance(udp, RegisterClient) and udp.registration.regId == 1


OPTIONS = (b"OPTIONS sip:alice@10.0.0.2:40000;transport=tcp SIP/2.0\r\n"
           b"Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bKopt%d\r\n"
           b"From: <sip:edge@example.com>;tag=e1\r\nTo: <sip:alice@example.com>\r\nCall-ID: opt%d\r\n"
           b"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")


def test_a_request_over_the_flow_is_answered_on_the_connection_when_an_answer_is_given(clock: Clock) -> None:
    from twisted_sipnat.core.sip import Request, parse, responseTo

    client, endpoint, _ = streamClient(clock)
    client.answer = lambda request: responseTo(request, 200 if request.method == "OPTIONS" else 480)
    client.register()
    conn = endpoint.last.accept()
    conn.receive(answer(conn.requests()[0]))
    conn.receive(OPTIONS % (1, 1))
    [written] = conn.buffer.feed(conn.written())
    response = parse(written, stream=True)
    assert not isinstance(response, Request) and response.startLine == "SIP/2.0 200 OK"
    assert response.headers.get("Call-ID") == "opt1" and client.stats["requests.answered"] == 1


def test_requests_over_the_flow_are_answered_within_the_rate(clock: Clock) -> None:
    from twisted_sipnat.core.sip import responseTo

    client, endpoint, _ = streamClient(clock)
    client.answer = lambda request: responseTo(request, 200)
    client.register()
    conn = endpoint.last.accept()
    conn.receive(answer(conn.requests()[0]))
    conn.receive(b"".join(OPTIONS % (n, n) for n in range(200)))
    assert client.stats["requests.received"] == 200
    assert client.stats["requests.answered"] == 20 and client.stats["requests.rate_limited"] == 180  # the burst
    clock.advance(1.0)
    conn.receive(OPTIONS % (300, 300))
    assert client.stats["requests.answered"] == 21


def test_without_an_answer_requests_are_dropped_as_on_udp(clock: Clock) -> None:
    client, endpoint, _ = streamClient(clock)
    client.register()
    conn = endpoint.last.accept()
    conn.requests()
    conn.receive(OPTIONS % (1, 1))
    assert client.stats["dropped.request"] == 1 and conn.written() == b""
    client.stop()
