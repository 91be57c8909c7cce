"""
Smoke tests of the interop fixtures themselves, with raw sockets and hand-built STUN: before the library is
blamed for a failure against coturn or Kamailio, these show the peer answers what the interop helpers (peerkit) expect of it.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

import peerkit
import pytest
from peerkit import RunningPeer

LOOPBACK = "127.0.0.1"

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]


def test_coturnAnswersBindingOverUDP(coturn: RunningPeer) -> None:
    """coturn reflects our loopback source address in XOR-MAPPED-ADDRESS."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        answer, local = peerkit.stunUDP(coturn.address, sock=sock, timeout=2.0)
    assert answer.messageType == peerkit.BINDING_SUCCESS
    assert answer.mapped == local
    assert answer.software is not None and "Coturn" in answer.software


def test_coturnAnswersBindingOverTCP(coturn: RunningPeer) -> None:
    """coturn listens on TCP on the same port too (RFC 8489 §6.2.2)."""
    answer = peerkit.stunTCP(coturn.address, timeout=2.0)
    assert answer.messageType == peerkit.BINDING_SUCCESS
    assert answer.mapped is not None and answer.mapped[0] == LOOPBACK


def test_kamailioAnswersSTUNOnTheSIPPort(kamailio: RunningPeer) -> None:
    """
    Kamailio's stun module answers a Binding request on the SIP UDP port with XOR-MAPPED-ADDRESS and SOFTWARE
    and, unlike coturn, no FINGERPRINT: the library must accept such replies as keepalive answers.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        answer, local = peerkit.stunUDP(kamailio.address, sock=sock, timeout=2.0)
    assert answer.messageType == peerkit.BINDING_SUCCESS
    assert answer.mapped == local
    assert not answer.hasFingerprint
    assert answer.software is not None and "kamailio" in answer.software


def test_kamailioNeverAddsFingerprint(kamailio: RunningPeer, coturn: RunningPeer) -> None:
    """
    Even when the request carries FINGERPRINT, Kamailio 5.6's reply has none (coturn's has one): a client that
    insisted on FINGERPRINT in responses could not use Kamailio as its keepalive peer.
    """
    kamailioAnswer, _ = peerkit.stunUDP(kamailio.address, timeout=2.0, fingerprint=True)
    coturnAnswer, _ = peerkit.stunUDP(coturn.address, timeout=2.0, fingerprint=True)
    assert kamailioAnswer.messageType == coturnAnswer.messageType == peerkit.BINDING_SUCCESS
    assert not kamailioAnswer.hasFingerprint
    assert coturnAnswer.hasFingerprint


def test_kamailioAnswersNoSTUNOverTCP(kamailio: RunningPeer) -> None:
    """
    Kamailio's stun module serves the SIP UDP port only: a Binding request on its TCP port gets no STUN answer.
    Recorded here because it is why TCP flows are kept alive with CRLF pings, never STUN.
    """
    with pytest.raises(peerkit.PeerError):
        peerkit.stunTCP(kamailio.address, timeout=1.0)


def test_kamailioPongsACRLFPingOnTCP(kamailio: RunningPeer) -> None:
    """``tcp_crlf_ping=yes``: a CRLFCRLF ping is answered with a single CRLF pong (RFC 5626 §4.4.1)."""
    with socket.create_connection(kamailio.address, timeout=2.0) as conn:
        for _ in range(3):
            conn.sendall(b"\r\n\r\n")
            assert conn.recv(16) == b"\r\n"


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_sippRegistersWithKamailio(
    kamailio: RunningPeer, transport: str, tmp_path: Path
) -> None:
    """SIPp's REGISTER scenario gets its 200 from the Kamailio edge over UDP and TCP."""
    argv = peerkit.sippArgv(
        peerkit.SIPP_REGISTER, kamailio.address, transport, LOOPBACK, peerkit.freePort(LOOPBACK)
    )
    started = time.monotonic()
    result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"sipp exited {result.returncode}:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
    assert time.monotonic() - started < 15


def test_kamailioFactoryStopsMidTest(kamailioFactory: Callable[[], RunningPeer]) -> None:
    """The function-scoped variant really stops Kamailio: afterwards STUN on its port goes unanswered."""
    peer = kamailioFactory()
    peerkit.stunUDP(peer.address, timeout=2.0)
    peer.stop()
    assert not peer.running
    with pytest.raises(peerkit.PeerError):
        peerkit.stunUDP(peer.address, timeout=0.5)
