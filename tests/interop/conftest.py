"""
Real third-party peers on loopback for the ``interop`` tests: coturn (a STUN server no one here wrote) and
Kamailio (an RFC 5626 edge: STUN on the SIP UDP port, CRLF pongs on TCP, a registrar).

Each peer runs as a foreground child on a port the test session chooses, is polled with hand-built STUN until it
answers (bounded), and is always stopped.  A missing binary or a peer that will not come up FAILS the test with
the reason: an interop test that skipped would pass on a machine that proves nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Iterator, List

import pytest

# peerkit sits beside this file; make the import independent of pytest's import mode.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import peerkit  # noqa: E402
from peerkit import PeerError, RunningPeer  # noqa: E402

LOOPBACK = "127.0.0.1"


def started(what: str, start: Callable[..., RunningPeer], *args: Any) -> RunningPeer:
    """``start(*args)``, or the test fails (never skips) naming the missing peer: ``.ci/run`` installs them."""
    try:
        return start(*args)
    except PeerError as e:
        pytest.fail(f"{what} is needed for this interop test: {e}", pytrace=False)


@pytest.fixture(scope="session")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPeer]:
    """One coturn for the session, on 127.0.0.1 and a free port."""
    with started("coturn", peerkit.startCoturn, tmp_path_factory.mktemp("coturn"), [LOOPBACK]) as peer:
        yield peer


@pytest.fixture(scope="session")
def coturn6(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPeer]:
    """
    coturn on the IPv6 loopback.  A machine without ``::1`` (some containers) cannot run an IPv6 test at all:
    that is the one skip here, and it names the machine, not the library, as the reason.
    """
    import socket

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError as e:
        pytest.skip(f"this machine has no IPv6 loopback (::1): {e}")
    with started("coturn", peerkit.startCoturn, tmp_path_factory.mktemp("coturn6"), ["::1"]) as peer:
        yield peer


@pytest.fixture(scope="session")
def kamailio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPeer]:
    """One Kamailio edge for the session (tests that stop Kamailio use ``kamailioFactory`` instead)."""
    with started("Kamailio", peerkit.startKamailio, tmp_path_factory.mktemp("kamailio"), LOOPBACK) as peer:
        yield peer


@pytest.fixture
def kamailioFactory(tmp_path: Path) -> Iterator[Callable[[], RunningPeer]]:
    """
    Start a private Kamailio for one test, which the test may stop mid-way (``peer.stop()``) to see the flow
    fail; every instance is stopped at teardown whatever happened.
    """
    instances: List[RunningPeer] = []

    def make() -> RunningPeer:
        peer = started("Kamailio", peerkit.startKamailio, tmp_path / f"kamailio{len(instances)}", LOOPBACK)
        instances.append(peer)
        return peer

    try:
        yield make
    finally:
        for peer in instances:
            peer.stop()

