"""
SIPp user agents against ``twistd -n sipnat edge`` on loopback: a UA registers over UDP, a second one sends a
MESSAGE to its AOR, the edge proxies it over the registered flow (the UA checks the rewritten Request-URI, a
``z9hG4bK`` branch and Max-Forwards 69) and relays the 200 back; then the UA de-registers with ``Expires: 0``, is
answered 200, and the next MESSAGE to it gets 404: the binding is gone.  SIPp is a real, independent SIP
implementation; a missing binary fails the test (never skips).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List, Optional

import peerkit
import pytest
from peerkit import PeerProcess

from tests.data import dataPath

LOOPBACK = "127.0.0.1"
DOMAIN = "example.com"

pytestmark = [pytest.mark.interop, pytest.mark.timeout(90)]

_TWISTD = (
    "import sys; from twisted.scripts.twistd import run; "
    "sys.argv = ['twistd', '-n', '--pidfile=', 'sipnat', *sys.argv[1:]]; run()"
)


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[peerkit.HostPort]:
    """The edge role as an operator runs it, UDP and TCP on one free loopback port; always stopped."""
    port = peerkit.freePort(LOOPBACK)
    argv = [sys.executable, "-c", _TWISTD, "edge", "--udp", f"udp:{port}:interface={LOOPBACK}",
            "--tcp", f"tcp:{port}:interface={LOOPBACK}",
            "--domain", DOMAIN, "--host", LOOPBACK, "--flow-timer", "30"]
    process = PeerProcess("twistd sipnat edge", argv, tmp_path / "edge.log")
    try:
        peerkit.waitForSTUN((LOOPBACK, port), time.monotonic() + 15, "the edge", process.deadReason)
        yield (LOOPBACK, port)
    finally:
        process.stop()


def _sipp(scenario: str, localPort: int, user: str, *extra: str, target: Optional[peerkit.HostPort] = None,
          transport: str = "u1") -> List[str]:
    sipp = peerkit.requireTool("sipp", "sip-tester")
    argv = [sipp, "-sf", str(dataPath(f"sipp/{scenario}")), "-m", "1", "-t", transport, "-i", LOOPBACK,
            "-p", str(localPort), "-s", user, "-key", "domain", DOMAIN, *extra, "-nostdin",
            "-timeout", "15s", "-timeout_error"]
    if target is not None:
        argv.append(f"{target[0]}:{target[1]}")
    return argv


def _run(argv: List[str], cwd: Path) -> None:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=40)
    assert result.returncode == 0, (f"{' '.join(argv[1:4])} exited {result.returncode}:\n"
                                    f"{result.stdout[-2000:]}{result.stderr[-2000:]}")


def test_sippRegistersReceivesAProxiedMessageAndDeregisters(edge: peerkit.HostPort, tmp_path: Path) -> None:
    uaPort = peerkit.freePort(LOOPBACK)
    senderPort = peerkit.freePort(LOOPBACK)
    # 1. The UA registers for 120 s over UDP; its scenario checks the 200 grants exactly that.
    _run(_sipp("edge-register.xml", uaPort, "alice", "-key", "expires", "120", target=edge), tmp_path)
    # 2. The same UA (same port: the flow the registration came in on) waits for a MESSAGE...
    receiver = subprocess.Popen(_sipp("edge-receive-message.xml", uaPort, "alice"), cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(0.3)  # let it bind its port: SIPp has no readiness signal
        # ...which a second SIPp sends to the AOR through the edge, and gets the UA's 200 back.
        _run(_sipp("edge-message.xml", senderPort, "alice", target=edge), tmp_path)
        out, _ = receiver.communicate(timeout=30)
        assert receiver.returncode == 0, f"the registered UA's scenario failed:\n{out[-3000:]}"
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    # 3. De-registration with Expires: 0 is answered 200...
    _run(_sipp("edge-unregister.xml", uaPort, "alice", target=edge), tmp_path)
    # ...and removed the binding: a MESSAGE to the AOR now gets 404 from the edge.
    _run(_sipp("edge-message-404.xml", senderPort, "alice", target=edge), tmp_path)


def test_sippRegistersAndDeregistersOverTCP(edge: peerkit.HostPort, tmp_path: Path) -> None:
    """The same REGISTER (granted 120 s) and de-REGISTER over TCP: each answered 200 on the connection."""
    uaPort = peerkit.freePort(LOOPBACK)
    _run(_sipp("edge-register.xml", uaPort, "carol", "-key", "expires", "120", target=edge, transport="t1"), tmp_path)
    _run(_sipp("edge-unregister.xml", uaPort, "carol", target=edge, transport="t1"), tmp_path)
