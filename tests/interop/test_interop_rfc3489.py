"""
A real RFC 3489 client against ``twistd sipnat stun``: stund's client (Debian's ``stun-client``, 0.97), which
sends Binding requests without the magic cookie and reads MAPPED-ADDRESS, SOURCE-ADDRESS and CHANGED-ADDRESS.
Issue 13: it got no answer at all (RFC 8489 §12.2 says a server SHOULD answer it).

The role runs as a real ``twistd`` on loopback; with ``--alternate 127.0.0.2:PORT`` (Linux routes all of
127/8 to ``lo``) the client's CHANGE-REQUEST tests run too.  A missing binary fails the test: ``.ci/install-peers``
installs it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
ALTERNATE_IP = "127.0.0.2"


def _freePort() -> int:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind((LOOPBACK, 0))
    port = int(probe.getsockname()[1])
    probe.close()
    return port


def _answers(port: int) -> bool:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.2)
    try:
        sock.sendto(b"\x00\x01\x00\x00\x21\x12\xa4\x42" + os.urandom(12), (LOOPBACK, port))
        sock.recvfrom(2048)
        return True
    except OSError:
        return False
    finally:
        sock.close()


def _role(*args: str) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "--logfile=-",
         "sipnat", "stun", *args],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )
    try:
        yield process
    finally:
        process.terminate()
        process.wait(20)


def _stund(port: int) -> str:
    client = shutil.which("stun")
    if client is None:
        pytest.fail("stund's RFC 3489 client ('stun', Debian package stun-client) is needed: .ci/install-peers",
                    pytrace=False)
    result = subprocess.run([client, f"{LOOPBACK}:{port}", "-v"], capture_output=True, text=True, timeout=30)
    return result.stdout + result.stderr


def _started(process: subprocess.Popen[str], port: int) -> None:
    end = time.monotonic() + 20
    while time.monotonic() < end and process.poll() is None:
        if _answers(port):
            return
    pytest.fail(f"twistd sipnat stun never answered on {port}", pytrace=False)


def _values(output: str, name: str) -> List[str]:
    return [line.split("=", 1)[1].strip() for line in output.splitlines() if line.strip().startswith(f"{name} =")]


@pytest.mark.timeout(90)
def test_stund_client_gets_its_mapped_address() -> None:
    port = _freePort()
    for process in _role("--udp", f"udp:{port}:interface={LOOPBACK}"):
        _started(process, port)
        output = _stund(port)
        mapped = _values(output, "MappedAddress")
        assert mapped and all(m.startswith(f"{LOOPBACK}:") for m in mapped), output
        assert "test I = 1" in output, output


@pytest.mark.timeout(90)
def test_stund_client_runs_its_change_request_tests_against_rfc5780_alternates() -> None:
    port = _freePort()
    alternate: Optional[int] = None
    for candidate in (port + 1, port - 1):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((ALTERNATE_IP, candidate))
                alternate = candidate
                break
            except OSError:
                continue
    assert alternate is not None
    for process in _role("--udp", f"udp:{port}:interface={LOOPBACK}", "--alternate", f"{ALTERNATE_IP}:{alternate}"):
        _started(process, port)
        output = _stund(port)
        assert f"ChangedAddress = {ALTERNATE_IP}:{alternate}" in output, output
        sources = set(_values(output, "SourceAddress"))
        # test I from the primary, stund's change-IP test from the other IP, its change-port test from the other port
        assert {f"{LOOPBACK}:{port}", f"{ALTERNATE_IP}:{port}", f"{LOOPBACK}:{alternate}"} <= sources, output
        assert "Unknown Attribute" not in output, output
        for test in ("test I = 1", "test II = 1", "test III = 1"):
            assert test in output, output
