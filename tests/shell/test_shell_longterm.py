"""
``resolvePublicAddress`` with STUN long-term credentials (RFC 8489 §9.2) and the per-domain failure cache
(``stunFailureCacheTime``), through the controller on a Clock and a recording UDP transport, against a scripted
long-term server that checks every request it is sent.
"""

from __future__ import annotations

import hashlib
from typing import Any, List, Optional

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from tests.addresses import HOP, SERVER
from twisted_sipnat import NATSettings, NATTraversalController, STUNErrorResponse, STUNTimeout, stun
from twisted_sipnat.service.figures import Figures
from twisted_sipnat.service.resolutionfigures import ResolutionFigures
from twisted_sipnat.testing import bindingResponse, sharedDatagramSocket

MAPPED = ("203.0.113.1", 40000)
REALM = "example.org"


def outcome(d: Deferred[Any]) -> List[Any]:
    box: List[Any] = []
    d.addBoth(box.append)
    return box


class LongTermServer:
    """
    A long-term-credential STUN server as coturn behaves (``--lt-cred-mech``): an unsigned request gets 401 with
    REALM and NONCE; a signed one with a NONCE it no longer accepts, 438 and a new NONCE; a request signed
    under the right key, a signed success; anything else 401 with a fresh NONCE.
    """

    def __init__(self, password: str = "secret", address: Any = SERVER) -> None:
        self.address = address
        self.key = hashlib.md5(f"alice:{REALM}:{password}".encode()).digest()
        self.nonce = "n-0"
        self.issued = 0
        self.requests: List[stun.Message] = []

    def rotate(self) -> None:
        """The nonce expires: the next signed request gets 438."""
        self.issued += 1
        self.nonce = f"n-{self.issued}"

    def answer(self, request: stun.Message) -> bytes:
        self.requests.append(request)
        challenge = [stun.Realm(REALM), stun.Nonce(self.nonce)]
        if not request.hasIntegrity:
            return bindingResponse(request, error=(401, "Unauthorized"), extra=challenge)
        nonce = request.get(stun.NONCE)
        if nonce is None or nonce.value != self.nonce:
            return bindingResponse(request, error=(438, "Stale Nonce"), extra=challenge)
        if request.get(stun.USERNAME) != stun.Username("alice") or not request.verifyIntegrity(self.key):
            self.rotate()
            return bindingResponse(request, error=(401, "Unauthorized"),
                                   extra=[stun.Realm(REALM), stun.Nonce(self.nonce)])
        return bindingResponse(request, MAPPED, key=self.key)

    def serve(self, shared: Any, transport: Any) -> int:
        """Answer every request written so far, in order; how many were answered."""
        count = 0
        while True:
            requests = transport.stunRequests()
            transport.clear()
            if not requests:
                return count
            for message, addr in requests:
                assert addr == self.address
                shared.datagramReceived(self.answer(message), addr)
                count += 1


def longTerm(password: str, **kw: Any) -> NATSettings:
    return NATSettings(stunServers=[SERVER], username="alice", password=password, credentialMechanism="long-term",
                       **kw)


def resolveOnce(clock: Clock, controller: NATTraversalController, server: LongTermServer,
                domain: Optional[str] = None) -> List[Any]:
    shared, transport = sharedDatagramSocket(controller)
    result = outcome(controller.resolvePublicAddress(domain, shared, HOP))
    server.serve(shared, transport)
    return result


def test_resolve_with_long_term_credentials_succeeds_after_one_401(clock: Clock) -> None:
    server = LongTermServer()
    controller = NATTraversalController(longTerm("secret"), reactor=clock)
    result = resolveOnce(clock, controller, server)
    assert result == [IPv4Address("UDP", *MAPPED)]
    first, retry = server.requests
    assert not first.hasIntegrity and first.get(stun.USERNAME) is None
    assert retry.transactionId != first.transactionId and retry.get(stun.REALM) == stun.Realm(REALM)
    assert controller.pendingTransactionCount == 0 and controller.learnedCredentialCount == 1
    # The next resolution is signed from its first request: one request, no challenge.
    again = resolveOnce(clock, controller, server)
    assert again == [IPv4Address("UDP", *MAPPED)] and len(server.requests) == 3
    assert server.requests[2].hasIntegrity


def test_a_wrong_password_fails_with_401_after_exactly_one_retry(clock: Clock) -> None:
    server = LongTermServer()
    controller = NATTraversalController(longTerm("not-the-password"), reactor=clock)
    [failure] = resolveOnce(clock, controller, server)
    assert isinstance(failure, Failure) and failure.check(STUNErrorResponse)
    assert failure.value.code == 401
    assert len(server.requests) == 2  # the unsigned first request and one signed retry, never a loop
    assert controller.pendingTransactionCount == 0


def test_a_stale_nonce_is_retried_once_with_the_new_one(clock: Clock) -> None:
    server = LongTermServer()
    controller = NATTraversalController(longTerm("secret"), reactor=clock)
    resolveOnce(clock, controller, server)
    server.rotate()
    result = resolveOnce(clock, controller, server)
    assert result == [IPv4Address("UDP", *MAPPED)]
    stale, fresh = server.requests[2:]
    assert stale.get(stun.NONCE) == stun.Nonce("n-0") and fresh.get(stun.NONCE) == stun.Nonce("n-1")


def test_figures_report_the_credentials_and_the_challenges(clock: Clock) -> None:
    controller = NATTraversalController(longTerm("not-the-password"), reactor=clock)
    resolveOnce(clock, controller, LongTermServer())
    figures = Figures()
    ResolutionFigures(controller).reportFigures(figures)
    assert figures.get("sipnat_stun_credentials") == 1
    assert figures.get("sipnat_stun_auth_total", result="retried") == 1
    assert figures.get("sipnat_stun_auth_total", result="refused") == 0


def test_keepalives_to_a_long_term_next_hop_are_signed_and_keep_the_flow(clock: Clock) -> None:
    """An RFC 5626 edge answering STUN with long-term credentials: the keepalives reuse what the 401 taught."""
    import random

    from twisted_sipnat.testing import RecordingObserver

    hop = LongTermServer(address=HOP)
    settings = NATSettings(username="alice", password="secret", credentialMechanism="long-term",
                           udpKeepaliveInterval=10)
    controller = NATTraversalController(settings, reactor=clock, rng=random.Random(7))
    shared, transport = sharedDatagramSocket(controller)
    observer = RecordingObserver()
    result = outcome(controller.resolvePublicAddress(None, shared, HOP, observer))
    hop.serve(shared, transport)
    assert result == [IPv4Address("UDP", *MAPPED)] and len(hop.requests) == 2
    assert controller.refreshNATBinding(shared, observer, HOP)
    for _ in range(3):
        clock.advance(10)
        assert hop.serve(shared, transport) == 1  # one signed keepalive, answered at once: no challenge
    assert all(r.hasIntegrity and r.get(stun.NONCE) == stun.Nonce("n-0") for r in hop.requests[2:])
    hop.rotate()  # the edge's nonce expires: the keepalive's 438 is retried within the same keepalive
    clock.advance(10)
    assert hop.serve(shared, transport) == 2
    assert observer.failures == [] and controller.stats["stun.auth.retries"] == 2
    controller.freeResources()


# -- the failure cache ----------------------------------------------------------------------------------------


def test_a_domain_that_failed_errbacks_at_once_for_the_cache_time(clock: Clock) -> None:
    settings = {"example.com": NATSettings(stunServers=[SERVER], stunFailureCacheTime=60)}
    controller = NATTraversalController(settings, reactor=clock)
    shared, transport = sharedDatagramSocket(controller)
    first = outcome(controller.resolvePublicAddress("example.com", shared, HOP))
    clock.advance(39.5)
    assert isinstance(first[0], Failure) and first[0].check(STUNTimeout)
    transport.clear()
    clock.advance(59.5)  # 59.5 s after the failure
    cached = outcome(controller.resolvePublicAddress("example.com", shared, HOP))
    assert len(cached) == 1 and cached[0].check(STUNTimeout) and cached[0].value is not first[0].value
    assert str(cached[0].value) == str(first[0].value)
    assert transport.written == [] and clock.getDelayedCalls() == []
    figures = Figures()
    ResolutionFigures(controller).reportFigures(figures)
    assert figures.get("sipnat_stun_failed_domains") == 1 and figures.get("sipnat_stun_failure_cache_hits_total") == 1
    clock.advance(0.5)  # 60 s: expired, a request goes out again
    again = outcome(controller.resolvePublicAddress("example.com", shared, HOP))
    assert len(transport.stunRequests()) == 1 and again == []
    clock.advance(39.5)
    assert again[0].check(STUNTimeout)


def test_without_a_cache_time_every_resolution_sends(clock: Clock) -> None:
    controller = NATTraversalController(NATSettings(stunServers=[SERVER]), reactor=clock)
    shared, transport = sharedDatagramSocket(controller)
    for _ in range(2):
        transport.clear()
        result = outcome(controller.resolvePublicAddress("example.com", shared, HOP))
        assert len(transport.stunRequests()) == 1
        clock.advance(39.5)
        assert result[0].check(STUNTimeout)
    assert controller.failedDomainCount == 0


def test_a_cached_wrong_password_is_the_same_401_and_sends_nothing(clock: Clock) -> None:
    server = LongTermServer()
    controller = NATTraversalController(longTerm("not-the-password", stunFailureCacheTime=300), reactor=clock)
    resolveOnce(clock, controller, server, "example.com")
    [cached] = resolveOnce(clock, controller, server, "example.com")
    assert cached.check(STUNErrorResponse) and cached.value.code == 401
    assert len(server.requests) == 2
