"""
Floods of the two tables STUN answers grow on the client: the long-term credentials learned per server
(RFC 8489 §9.2; at most ``DEFAULT_MAX_CREDENTIALS`` = 1024 ``(server, username)`` pairs) and the failure cache
of ``stunFailureCacheTime`` (at most ``DEFAULT_MAX_FAILURES`` = 4096 keys), and a challenge storm that must not
turn into a request storm.  Each table's size is also a figure (``sipnat_stun_credentials``,
``sipnat_stun_failed_domains``), read here as the operator would.
"""

from __future__ import annotations

from typing import Any, List, Tuple

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from tests.addresses import SERVER
from twisted_sipnat import NATSettings, NATTraversalController, STUNErrorResponse, stun
from twisted_sipnat.core.failurecache import DEFAULT_MAX_FAILURES
from twisted_sipnat.core.longterm import DEFAULT_MAX_CREDENTIALS
from twisted_sipnat.service.figures import Figures
from twisted_sipnat.service.resolutionfigures import ResolutionFigures
from twisted_sipnat.testing import bindingResponse, sharedDatagramSocket


def outcome(d: Deferred[Any]) -> List[Any]:
    box: List[Any] = []
    d.addBoth(box.append)
    return box


def hops(n: int) -> List[Tuple[str, int]]:
    """``n`` distinct next hops (198.18.0.0/15, the benchmarking range), each its own STUN server."""
    return [(f"198.18.{i // 250}.{i % 250 + 1}", 5060 + i % 7) for i in range(n)]


def figures(controller: NATTraversalController) -> Figures:
    found = Figures()
    ResolutionFigures(controller).reportFigures(found)
    return found


def test_challenges_from_more_servers_than_the_bound_keep_the_table_at_its_bound() -> None:
    clock = Clock()
    settings = NATSettings(username="alice", password="pw", credentialMechanism="long-term")
    controller = NATTraversalController(settings, reactor=clock)
    shared, transport = sharedDatagramSocket(controller)
    servers = hops(DEFAULT_MAX_CREDENTIALS + 500)
    results = [outcome(controller.resolvePublicAddress(None, shared, hop)) for hop in servers]
    for n, (request, addr) in enumerate(transport.stunRequests()):
        # Every server challenges with its own realm and a long nonce: as much state per entry as it can.
        challenge = [stun.Realm(f"realm-{n}"), stun.Nonce("x" * 500)]
        shared.datagramReceived(bindingResponse(request, error=(401, "Unauthorized"), extra=challenge), addr)
    assert controller.learnedCredentialCount == DEFAULT_MAX_CREDENTIALS
    assert figures(controller).get("sipnat_stun_credentials") == DEFAULT_MAX_CREDENTIALS
    assert len(controller._engine.table.credentials._keys) <= DEFAULT_MAX_CREDENTIALS  # the derived-key cache too
    controller.freeResources()
    assert all(r for r in results) and clock.getDelayedCalls() == []


def test_a_storm_of_forged_challenges_causes_one_retry_not_one_per_challenge() -> None:
    clock = Clock()
    settings = NATSettings(stunServers=[SERVER], username="alice", password="pw", credentialMechanism="long-term")
    controller = NATTraversalController(settings, reactor=clock)
    shared, transport = sharedDatagramSocket(controller)
    result = outcome(controller.resolvePublicAddress(None, shared, SERVER))
    [(first, _)] = transport.stunRequests()
    transport.clear()
    for n in range(1000):  # 401s and 438s with ever new nonces, all for the first transaction
        code = 401 if n % 2 else 438
        challenge = [stun.Realm("example.org"), stun.Nonce(f"n{n}")]
        shared.datagramReceived(bindingResponse(first, error=(code, "challenge"), extra=challenge), SERVER)
    assert len(transport.stunRequests()) == 1  # one signed retry; the rest no longer match a transaction
    [(retry, _)] = transport.stunRequests()
    transport.clear()
    for n in range(1000):  # and for the retry: at most one more (the 438 kind), then the error
        challenge = [stun.Realm("example.org"), stun.Nonce(f"m{n}")]
        shared.datagramReceived(bindingResponse(retry, error=(438, "Stale Nonce"), extra=challenge), SERVER)
    followUps = transport.stunRequests()
    assert len(followUps) <= 1
    for request, _ in followUps:
        shared.datagramReceived(bindingResponse(request, error=(401, "Unauthorized"),
                                                extra=[stun.Realm("example.org"), stun.Nonce("z")]), SERVER)
    assert len(result) == 1 and isinstance(result[0], Failure) and result[0].check(STUNErrorResponse)
    assert controller.pendingTransactionCount == 0 and clock.getDelayedCalls() == []


def test_failing_next_hops_beyond_the_bound_keep_the_failure_cache_at_its_bound() -> None:
    clock = Clock()
    controller = NATTraversalController(NATSettings(stunFailureCacheTime=3600), reactor=clock)
    shared, transport = sharedDatagramSocket(controller)
    servers = hops(DEFAULT_MAX_FAILURES + 1000)
    results = [outcome(controller.resolvePublicAddress("example.com", shared, hop)) for hop in servers]
    for request, addr in transport.stunRequests():
        shared.datagramReceived(bindingResponse(request, error=(500, "Server Error")), addr)
    assert all(len(r) == 1 and r[0].check(STUNErrorResponse) for r in results)
    assert controller.failedDomainCount == DEFAULT_MAX_FAILURES
    assert figures(controller).get("sipnat_stun_failed_domains") == DEFAULT_MAX_FAILURES
    # The newest failures are the ones kept: the last hop fails at once, the first one is asked again.
    transport.clear()
    last = outcome(controller.resolvePublicAddress("example.com", shared, servers[-1]))
    assert last[0].check(STUNErrorResponse) and transport.written == []
    first = outcome(controller.resolvePublicAddress("example.com", shared, servers[0]))
    assert first == [] and len(transport.stunRequests()) == 1
    controller.freeResources()
    assert first[0].check(Exception) and clock.getDelayedCalls() == []
