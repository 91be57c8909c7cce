"""
Digest challenges as an attack surface of the client role's REGISTER client: an answerer (the registrar, or
anyone who can see and answer its requests) that challenges forever, marks every nonce stale, or sends a
challenge of any size, must not make the UA loop or spend unbounded work (RFC 3261 §22.2; RFC 7616 §3.3).
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet.task import Clock
from twisted.python.failure import Failure

from twisted_sipnat.core.sip import Request, parse, responseTo
from twisted_sipnat.core.sip.digest import MAX_STALE_RETRIES, Credentials
from twisted_sipnat.core.sip.registration import MAX_RETRIES
from twisted_sipnat.errors import RegistrationError
from twisted_sipnat.service.sipclient import RegisterClient
from twisted_sipnat.testing import FakeDatagramTransport

REGISTRAR = ("192.0.2.1", 5060)


def client() -> Any:
    clock = Clock()
    ua = RegisterClient(clock, "alice@example.com", REGISTRAR, credentials=Credentials("alice", "pw"))
    transport = FakeDatagramTransport("192.0.2.10", 5060)
    ua.makeConnection(transport)  # type: ignore[arg-type]
    return clock, ua, transport


def answerEach(ua: Any, transport: Any, build: Any, limit: int = 100) -> int:
    """Answer every REGISTER the UA writes with ``build(request, n)``; returns how many it sent."""
    answered = 0
    while answered < len(transport.written) and answered < limit:
        request = parse(transport.written[answered][0])
        assert isinstance(request, Request)
        answered += 1
        ua.datagramReceived(build(request, answered).toBytes(), REGISTRAR)
    return answered


def test_aChallengeForeverFailsAfterOneRetry() -> None:
    """The old client had no credentials at all; a naive one answers every 401 and loops."""
    clock, ua, transport = client()
    results: List[Any] = []
    ua.register(("198.51.100.7", 40000)).addBoth(results.append)

    def challenge(request: Request, n: int) -> Any:
        response = responseTo(request, 401)
        response.headers.add("WWW-Authenticate", f'Digest realm="r", nonce="forged{n}", qop="auth"')
        return response

    assert answerEach(ua, transport, challenge) == 2
    assert isinstance(results[0], Failure) and results[0].check(RegistrationError)
    assert results[0].value.code == 401
    assert clock.getDelayedCalls() == []


def test_everyNonceStaleIsBounded() -> None:
    clock, ua, transport = client()
    results: List[Any] = []
    ua.register(("198.51.100.7", 40000)).addBoth(results.append)

    def stale(request: Request, n: int) -> Any:
        response = responseTo(request, 407)
        response.headers.add("Proxy-Authenticate", f'Digest realm="r", nonce="s{n}", stale=true')
        return response

    sent = answerEach(ua, transport, stale)
    assert sent <= MAX_STALE_RETRIES + 2 <= MAX_RETRIES + 1
    assert isinstance(results[0], Failure) and results[0].value.code == 407
    assert clock.getDelayedCalls() == []


def test_aHugeChallengeIsRefusedNotAnswered() -> None:
    clock, ua, transport = client()
    results: List[Any] = []
    ua.register(("198.51.100.7", 40000)).addBoth(results.append)
    request = parse(transport.written[0][0])
    assert isinstance(request, Request)
    response = responseTo(request, 401)
    for _ in range(6):  # each over MAX_CHALLENGE_LENGTH, under the parser's line bound: read, then refused
        response.headers.add("WWW-Authenticate", 'Digest realm="r", nonce="' + "x" * 5000 + '"')
    ua.datagramReceived(response.toBytes(), REGISTRAR)
    assert len(transport.written) == 1, "nothing answered"
    assert isinstance(results[0], Failure) and results[0].value.code == 401
    assert "no WWW-Authenticate digest challenge" in results[0].value.phrase
    assert clock.getDelayedCalls() == []
