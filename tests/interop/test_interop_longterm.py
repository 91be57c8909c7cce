"""
STUN long-term credentials (RFC 8489 §9.2) against coturn run with ``--secure-stun --lt-cred-mech``, a realm and
one user, over loopback with the real reactor:

- ``resolvePublicAddress`` with ``credentialMechanism="long-term"`` succeeds: an unsigned request, coturn's 401
  (REALM, NONCE), one signed retry (USERNAME, REALM, NONCE, MESSAGE-INTEGRITY under the MD5 key: coturn offers
  no PASSWORD-ALGORITHMS), a signed success;
- a wrong password fails with ``STUNErrorResponse`` 401 after exactly one retry (two requests, two answers,
  and nothing more afterwards);
- coturn's nonces expire (``--stale-nonce=2``): a later resolution's signed request gets 438 and is retried
  once with the new nonce;
- coturn refuses an unauthenticated request with 401, and answers a short-term-signed one with an unsigned 400,
  which RFC 8489 §9.1.4 has the client discard (so the resolution times out instead of believing it).

coturn is started by the test (never skipped: ``.ci/install-peers`` installs it); what it answered is checked
by hand-parsing its bytes here, not only through our codec.
"""

from __future__ import annotations

import socket
import struct
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import pytest
import pytest_twisted

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peerkit  # noqa: E402
from peerkit import RunningPeer  # noqa: E402

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

LOOPBACK = "127.0.0.1"
REALM = "sipnat.test"
USER, PASSWORD = "alice", "s3cret-pw"
#: coturn's nonce lifetime here (``--stale-nonce``): short, so the 438 path is reached within the test.
NONCE_LIFETIME = 2.0


@pytest.fixture(scope="module")
def secureCoturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPeer]:
    """coturn requiring long-term authentication of Binding requests, with one user."""
    work = tmp_path_factory.mktemp("coturn-lt")
    extra = peerkit.coturnLongTermArguments(work, REALM, [(USER, PASSWORD)]) + [f"--stale-nonce={NONCE_LIFETIME:g}"]
    try:
        peer = peerkit.startCoturn(work, [LOOPBACK], extra=extra)
    except peerkit.PeerError as e:
        pytest.fail(f"coturn is needed for this interop test: {e}", pytrace=False)
    with peer:
        yield peer


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def sleep(seconds: float) -> Any:
    from twisted.internet.task import deferLater

    return deferLater(_reactor(), seconds, lambda: None)


def errorOf(data: bytes) -> Tuple[int, Dict[int, bytes]]:
    """``(error code, {attribute type: value})`` of a STUN error response, parsed by hand (RFC 8489 §14.8)."""
    length = struct.unpack("!H", data[2:4])[0]
    attributes: Dict[int, bytes] = {}
    offset = 20
    while offset + 4 <= 20 + length:
        atype, alen = struct.unpack("!HH", data[offset : offset + 4])
        attributes[atype] = data[offset + 4 : offset + 4 + alen]
        offset += 4 + alen + (-alen % 4)
    raw = attributes.get(0x0009, b"\0\0\0\0")
    return (raw[2] & 0x07) * 100 + raw[3], attributes


def listenShared(controller: Any) -> Tuple[Any, Any, Counter[Any]]:
    """A ``SharedDatagramProtocol`` on an ephemeral loopback port, counting the datagrams from each source."""
    from twisted_sipnat import SharedDatagramProtocol

    shared = SharedDatagramProtocol(controller=controller)
    port = _reactor().listenUDP(0, shared, interface=LOOPBACK)
    received: Counter[Any] = Counter()
    original = shared.datagramReceived

    def counting(data: bytes, addr: Any) -> None:
        received[addr] += 1
        original(data, addr)

    shared.datagramReceived = counting
    return shared, port, received


def longTerm(server: Tuple[str, int], password: str, **kw: Any) -> Any:
    from twisted_sipnat import NATSettings

    return NATSettings(stunServers=[server], username=USER, password=password, credentialMechanism="long-term",
                       rto=0.05, **kw)


def test_coturn_refuses_an_unauthenticated_binding_request_with_401(secureCoturn: RunningPeer) -> None:
    tid, request = peerkit.bindingRequest()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)
        sock.sendto(request, secureCoturn.address)
        data, _ = sock.recvfrom(2048)
    assert data[8:20] == tid and struct.unpack("!H", data[:2])[0] == 0x0111  # Binding error response
    code, attributes = errorOf(data)
    assert code == 401
    assert attributes[0x0014] == REALM.encode() and attributes.get(0x0015)  # REALM and a NONCE
    assert 0x0008 not in attributes  # the challenge is unsigned (RFC 8489 §9.2.4)
    assert 0x8002 not in attributes  # coturn 4.6 offers no PASSWORD-ALGORITHMS: MD5 it is


@pytest_twisted.ensureDeferred
async def test_resolve_with_long_term_credentials_succeeds(secureCoturn: RunningPeer) -> None:
    from twisted.internet.address import IPv4Address

    from twisted_sipnat import NATTraversalController

    controller = NATTraversalController(longTerm(secureCoturn.address, PASSWORD), reactor=_reactor())
    shared, port, received = listenShared(controller)
    try:
        address = await controller.resolvePublicAddress(None, shared, secureCoturn.address)
        assert address == IPv4Address("UDP", LOOPBACK, port.getHost().port)
        assert received[secureCoturn.address] == 2  # the 401 challenge, then the signed success
        assert controller.stats["stun.requests.sent"] == 2 and controller.stats["stun.auth.retries"] == 1
        # The realm and nonce are reused: the next resolution is signed at once, one request, one answer.
        again = await controller.resolvePublicAddress(None, shared, secureCoturn.address)
        assert again == address and received[secureCoturn.address] == 3
        # coturn's nonce expires: the signed request gets 438 Stale Nonce, retried once with the new nonce.
        await sleep(NONCE_LIFETIME + 1.0)
        third = await controller.resolvePublicAddress(None, shared, secureCoturn.address)
        assert third == address and received[secureCoturn.address] == 5
        assert controller.stats["stun.auth.retries"] == 2
    finally:
        controller.freeResources()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_wrong_password_fails_with_401_after_one_retry(secureCoturn: RunningPeer) -> None:
    from twisted_sipnat import NATTraversalController, STUNErrorResponse

    controller = NATTraversalController(longTerm(secureCoturn.address, "not-" + PASSWORD), reactor=_reactor())
    shared, port, received = listenShared(controller)
    error: Optional[BaseException] = None
    try:
        try:
            await controller.resolvePublicAddress(None, shared, secureCoturn.address)
        except STUNErrorResponse as e:
            error = e
        assert isinstance(error, STUNErrorResponse) and error.code == 401
        assert controller.stats["stun.requests.sent"] == 2 and controller.stats["stun.requests.retransmitted"] == 0
        assert received[secureCoturn.address] == 2  # 401 to the unsigned request, 401 to the signed retry
        await sleep(0.5)  # and nothing after it: no loop
        assert controller.stats["stun.requests.sent"] == 2 and received[secureCoturn.address] == 2
        assert controller.pendingTransactionCount == 0
    finally:
        controller.freeResources()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_short_term_signed_request_gets_an_unsigned_400_which_is_discarded(
    secureCoturn: RunningPeer,
) -> None:
    from twisted_sipnat import NATSettings, NATTraversalController, STUNTimeout

    settings = NATSettings(stunServers=[secureCoturn.address], username=USER, password=PASSWORD, rto=0.02)
    controller = NATTraversalController(settings, reactor=_reactor())
    shared, port, received = listenShared(controller)
    error: Optional[BaseException] = None
    try:
        try:
            await controller.resolvePublicAddress(None, shared, secureCoturn.address)
        except STUNTimeout as e:
            error = e
        assert isinstance(error, STUNTimeout)
        assert received[secureCoturn.address] == 7  # coturn answered every one of the 7 sends ...
        assert controller.stats["stun.dropped.bad-integrity"] == 7  # ... with an unsigned 400, each discarded
    finally:
        controller.freeResources()
        await port.stopListening()
