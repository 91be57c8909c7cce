"""twisted_sipnat.service.sipclient: the RFC 3261 REGISTER client, on a simulated loopback network."""

from __future__ import annotations

import subprocess
import sys
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest
from twisted.internet import protocol
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from twisted_sipnat.core.sip import SIPURI, Request, Response, cseqOf, parse, responseTo
from twisted_sipnat.errors import InvalidSettingsError, RegistrationError
from twisted_sipnat.service.edge import EdgeRole
from twisted_sipnat.service.figures import Figures
from twisted_sipnat.service.sipclient import RegisterClient

from .support import NetReactor

REGISTRAR = ("127.0.0.1", 5999)


class FakeRegistrar(protocol.DatagramProtocol):
    """A registrar on the simulated network that answers each REGISTER with what ``answer`` builds."""

    def __init__(self, answer: Callable[[Request], Optional[Response]]) -> None:
        self.answer = answer
        self.requests: List[Request] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        request = parse(data)
        assert isinstance(request, Request)
        self.requests.append(request)
        response = self.answer(request)
        if response is not None:
            self.transport.write(response.toBytes(), addr)


def setUp(answer: Callable[[Request], Optional[Response]]) -> Any:
    net = NetReactor()
    registrar = FakeRegistrar(answer)
    net.listenUDP(REGISTRAR[1], registrar)
    ua = RegisterClient(net, "alice@example.com", REGISTRAR)
    port = net.listenUDP(0, ua)
    return net, registrar, ua, port


@pytest.fixture
def logged() -> Iterator[List[Dict[str, Any]]]:
    events: List[Dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def test_registerRetransmitsThenTimesOut() -> None:
    net = NetReactor()
    ua = RegisterClient(net, "alice@example.com", ("127.0.0.1", 5999))
    port = net.listenUDP(0, ua)
    failures: List[Failure] = []
    ua.register(("127.0.0.1", port.port)).addErrback(failures.append)
    net.run(33, step=0.25)
    writes = [src for d, src, dst in net.sent if dst == ("127.0.0.1", 5999)]
    # RFC 3261 Timer E: 0, 0.5, 1.5, 3.5, 7.5, then every 4 s until Timer F (32 s)
    assert len(writes) == 11
    assert failures and failures[0].check(RegistrationError)
    assert failures[0].value.code is None
    assert net.getDelayedCalls() == []
    port.stopListening()


def test_registerErrorResponse() -> None:
    net = NetReactor()
    edge = EdgeRole(net, udp=(5060, "127.0.0.1"), domain="example.com")
    edge.startService()
    ua = RegisterClient(net, "alice@other.example", ("127.0.0.1", 5060))
    port = net.listenUDP(0, ua)
    results: List[Any] = []
    ua.register(("127.0.0.1", port.port)).addBoth(results.append)
    net.run(34, step=0.5)
    # A registrar that refuses a foreign domain (or one that never answers it): an error, never a crash.
    assert isinstance(results[0], Failure) and results[0].check(RegistrationError)
    port.stopListening()
    edge.stopService()
    assert net.getDelayedCalls() == []


def test_a200FiresWithOurOwnSIPResponseAndItsGrantedLifetime() -> None:
    def answer(request: Request) -> Response:
        response = responseTo(request, 200)
        response.headers.add("Contact", "<sip:alice@203.0.113.50:5060>;expires=3600")
        response.headers.add("Contact", f"{request.headers.get('Contact')};expires=300")
        response.headers.add("Flow-Timer", "45")
        return response

    net, registrar, ua, port = setUp(answer)
    results: List[Any] = []
    ua.register(("198.51.100.7", 40000)).addBoth(results.append)
    net.run(0.2)
    assert isinstance(results[0], Response) and results[0].code == 200
    assert ua.contact == SIPURI("sip", "198.51.100.7", user="alice", port=40000)
    assert ua.grantedExpires(results[0]) == 300  # our binding's, not the other device's 3600
    assert len(registrar.requests) == 1
    assert ua.stats["register.succeeded"] == 1
    port.stopListening()
    assert net.getDelayedCalls() == []


def test_everyREGISTERKeepsTheCallIdAndCountsTheCSeqUp() -> None:
    net, registrar, ua, port = setUp(lambda request: responseTo(request, 200))
    for _ in range(3):
        ua.register(("198.51.100.7", 40000))
        net.run(0.2)
    assert {r.headers.get("Call-ID") for r in registrar.requests} == {ua.callId}
    assert [r.headers.get("CSeq") for r in registrar.requests] == [f"{n} REGISTER" for n in (1, 2, 3)]
    assert len({r.headers.get("Via") for r in registrar.requests}) == 3  # a fresh branch each
    port.stopListening()


def test_aResponseWithAnotherBranchIsNotOurs() -> None:
    # RFC 3261 §17.1.3: the Call-ID and CSeq alone (all the old client compared) do not make a response ours.
    net, registrar, ua, port = setUp(lambda request: None)
    d = ua.register(("198.51.100.7", 40000))
    net.run(0.1)
    forged = responseTo(registrar.requests[0], 200)
    forged.headers.set("Via", "SIP/2.0/UDP 127.0.0.1:40001;branch=z9hG4bKforged;rport")
    ua.datagramReceived(forged.toBytes(), REGISTRAR)
    assert not d.called and ua.pending
    assert ua.stats["dropped.unmatched"] == 1
    ua.datagramReceived(responseTo(registrar.requests[0], 200).toBytes(), REGISTRAR)
    assert d.called and not ua.pending
    port.stopListening()


def test_aProvisionalResponseSlowsRetransmissionsToT2() -> None:
    net, registrar, ua, port = setUp(lambda request: responseTo(request, 100) if len(registrar.requests) == 1 else None)
    failures: List[Failure] = []
    ua.register(("198.51.100.7", 40000)).addErrback(failures.append)
    net.run(9, step=0.05)
    # sent at 0, then Timer E at 0.5 (in Proceeding now), then every T2: 4.5 and 8.5 (the old client: 1.5, 3.5, 7.5)
    assert len(registrar.requests) == 4
    net.run(24, step=0.25)
    assert failures and failures[0].value.code is None
    port.stopListening()


def test_a423IsRetriedOnceWithMinExpires() -> None:
    def answer(request: Request) -> Response:
        if request.headers.get("Expires") == "3600":
            response = responseTo(request, 423)
            response.headers.add("Min-Expires", "7200")
            return response
        response = responseTo(request, 200)
        response.headers.add("Contact", f"{request.headers.get('Contact')};expires=7200")
        return response

    net, registrar, ua, port = setUp(answer)
    results: List[Any] = []
    ua.register(("198.51.100.7", 40000)).addBoth(results.append)
    net.run(0.3)
    assert [r.headers.get("Expires") for r in registrar.requests] == ["3600", "7200"]
    assert [r.headers.get("CSeq") for r in registrar.requests] == ["1 REGISTER", "2 REGISTER"]
    assert isinstance(results[0], Response) and ua.grantedExpires(results[0]) == 7200
    assert ua.expires == 7200  # refreshes ask for it from now on
    port.stopListening()


def test_a423AskingForLessOrAgainIsAnError() -> None:
    def answer(request: Request) -> Response:
        response = responseTo(request, 423)
        response.headers.add("Min-Expires", str(int(request.headers.get("Expires") or 0) + 1))
        return response

    net, registrar, ua, port = setUp(answer)
    failures: List[Failure] = []
    ua.register(("198.51.100.7", 40000)).addErrback(failures.append)
    net.run(0.3)
    assert len(registrar.requests) == 2
    assert failures[0].value.code == 423
    port.stopListening()
    assert net.getDelayedCalls() == []


def test_registerClientIgnoresGarbageRequestsAndStrangers() -> None:
    net, registrar, ua, port = setUp(lambda request: None)
    d = ua.register(("127.0.0.1", port.port))
    net.run(0.1)
    ua.datagramReceived(b"\xff\x00garbage\r\n\r\n", REGISTRAR)
    ua.datagramReceived(b"SIP/2.0 200 OK\r\nCall-ID: other\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n",
                        REGISTRAR)
    ua.datagramReceived(b"OPTIONS sip:alice@127.0.0.1 SIP/2.0\r\nContent-Length: 0\r\n\r\n", REGISTRAR)
    assert not d.called
    ua.datagramReceived(responseTo(registrar.requests[0], 403).toBytes(), REGISTRAR)
    failures: List[Failure] = []
    d.addErrback(failures.append)
    assert failures[0].value.code == 403
    ua.datagramReceived(b"\r\n\r\n", REGISTRAR)  # a CRLF keepalive is not a malformed message
    assert ua.stats["dropped.malformed"] == 1 and ua.stats["dropped.request"] == 1
    assert ua.stats["keepalives.received"] == 1
    assert net.getDelayedCalls() == []
    port.stopListening()


def test_aResponseThatIsNotUTF8IsDroppedEvenWhenItWouldMatch() -> None:
    net, registrar, ua, port = setUp(lambda request: None)
    d = ua.register(("198.51.100.7", 40000))
    net.run(0.1)
    data = responseTo(registrar.requests[0], 200, "OK \xff").toBytes().replace(b"OK \xc3\xbf", b"OK \xff")
    assert b"\xff" in data
    ua.datagramReceived(data, REGISTRAR)
    assert not d.called and ua.stats["dropped.malformed"] == 1
    ua.stop()
    d.addErrback(lambda f: None)
    port.stopListening()


def test_malformedDatagramsAreOneRateLimitedLineNeverATraceback(logged: List[Dict[str, Any]]) -> None:
    net, registrar, ua, port = setUp(lambda request: None)
    junk = [b"\xff\xfe\x00\x01", b"SIP/2.0 200 OK\r\nno colon here\r\n\r\n", b"SIP/2.0 999 What\r\n\r\n",
            b"SIP/2.0 200 OK\r\nContent-Length: 10\r\nl: 11\r\n\r\n", b"\r\n\r\nSIP/2.0", b"SIP/2.0 200 OK"]
    for _second in range(20):
        for data in junk * 50:
            port.protocol.datagramReceived(data, ("203.0.113.5", 5060))
        net.advance(1)
    assert ua.stats["dropped.malformed"] == 20 * 300
    port.stopListening()  # says what is still untold
    mine = [e for e in logged if e.get("log_namespace") == "twisted_sipnat.client"]
    drops = [e for e in mine if e.get("sipnat_event") == "sipnat.client.dropped"]
    # one line at the first drop, one per 10 s after it, one at the end: not one per datagram
    assert len(drops) == 3
    assert "dropped 3,000 SIP datagrams from 1 source in the last 10 s" in drops[1]["summary"]
    assert not [e for e in logged if e.get("log_failure") is not None]


def test_theSocketClosingFailsTheREGISTERInProgress() -> None:
    net, registrar, ua, port = setUp(lambda request: None)
    failures: List[Failure] = []
    ua.register(("198.51.100.7", 40000)).addErrback(failures.append)
    port.stopListening()
    assert failures and failures[0].check(RegistrationError) and failures[0].value.code is None
    net.advance(0)  # the REGISTER already on the simulated wire arrives
    assert net.getDelayedCalls() == []


def test_registerClientNeedsAnAOR() -> None:
    with pytest.raises(InvalidSettingsError) as info:
        RegisterClient(Clock(), "example.com", ("127.0.0.1", 5060))
    assert info.value.key == "register"


def test_theClientRoleDoesNotLoadTwistedsSIPStack() -> None:
    # The REGISTER client is on the project's own message layer (core.sip); twisted.protocols.sip, which
    # imports the global reactor when it loads, is no longer needed by the client role.
    program = (
        "import sys\n"
        "import twisted_sipnat.service.client, twisted_sipnat.service.sipclient\n"
        "print(sorted(m for m in sys.modules if m in ('twisted.protocols.sip', 'twisted.internet.reactor')))\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_theREGISTERTransactionsAreReportedByResult() -> None:
    answers = {1: 200, 2: 403, 3: 200}  # by CSeq; the fourth REGISTER goes unanswered

    def answer(request: Request) -> Optional[Response]:
        code = answers.get(cseqOf(request)[0])
        return responseTo(request, code) if code is not None else None

    net, registrar, ua, port = setUp(answer)
    for _ in range(4):
        ua.register(("198.51.100.7", 40000)).addErrback(lambda failure: None)
        net.run(0.2)
    net.run(33, step=0.5)
    figures = Figures()
    ua.reportFigures(figures)
    assert figures.get("sipnat_register_transactions_total", result="registered") == 2
    assert figures.get("sipnat_register_transactions_total", result="refused") == 1
    assert figures.get("sipnat_register_transactions_total", result="timeout") == 1
    port.stopListening()


def test_theClientRoleReportsItsREGISTERClient() -> None:
    from .support import clientFor

    net = NetReactor()
    role = clientFor(net, REGISTRAR, register="alice@example.com")
    figures = Figures()
    role.reportFigures(figures)
    assert ("sipnat_register_transactions_total", (("result", "registered"),)) in figures.values
