"""
The client role over TCP and TLS for real: the project's own edge role (``twistd sipnat edge --tcp tcp:...`` and
``--tcp ssl:...`` with a certificate the test makes) on loopback, the client role on the real reactor.

- over TCP, and over TLS with the certificate verified, the client registers, and CRLF pings go out on the
  connection that registered and are answered with pongs (the edge's ``--flow-timer 1``);
- the edge going away closes the connection: a flow failure (``FlowConnectionLost``), and a retry scheduled;
- a TLS edge whose certificate does not name the domain the client wants is refused: ``twistd sipnat client``
  says so in one line, with no traceback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
import pytest_twisted
from twisted.internet import task
from twisted.logger import globalLogPublisher

from tests.loopback.test_tls_edge import _certificate
from twisted_sipnat import NATSettings
from twisted_sipnat.service.client import ClientRole
from twisted_sipnat.service.flowtransport import FlowTransport

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
INSTANCE = "urn:uuid:2b0b6f0e-3f5e-4c43-9d0e-3a1f1f7b9c21"
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "--logfile=-"]

pytestmark = pytest.mark.timeout(60)


def _freePort() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def _edge(tcp: str, domain: str) -> subprocess.Popen[str]:
    """``twistd sipnat edge`` with the stream endpoint ``tcp`` (``tcp:PORT...`` or ``ssl:PORT...``), once it listens."""
    port = int(tcp.split(":")[1])
    edge = subprocess.Popen(
        TWISTD + ["sipnat", "edge", f"--udp=udp:0:interface={LOOPBACK}", f"--domain={domain}", f"--host={LOOPBACK}",
                  f"--tcp={tcp}", "--flow-timer=1"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection((LOOPBACK, port), timeout=1).close()
            return edge
        except OSError:
            if time.monotonic() > deadline or edge.poll() is not None:
                edge.kill()
                raise
            time.sleep(0.1)


def _stop(edge: subprocess.Popen[str]) -> str:
    if edge.poll() is None:
        edge.terminate()
    out, _ = edge.communicate(timeout=20)
    return out


@pytest.fixture
def events() -> Iterator[List[Dict[str, Any]]]:
    logged: List[Dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)
    yield logged
    globalLogPublisher.removeObserver(logged.append)


def _sleep(seconds: float) -> Any:
    from twisted.internet import reactor

    return task.deferLater(reactor, seconds, lambda: None)


def _role(port: int, aor: str, transport: FlowTransport) -> ClientRole:
    from twisted.internet import reactor

    return ClientRole(reactor, (LOOPBACK, port), {"default": NATSettings()}, "default", listen=(0, LOOPBACK),
                      register=aor, instance=INSTANCE, transport=transport)


async def _registerThenLoseTheEdge(edge: subprocess.Popen[str], role: ClientRole,
                                   events: List[Dict[str, Any]]) -> Any:
    role.startService()
    try:
        await role.ready
        socketAtStart = role.registerClient.socket if role.registerClient is not None else None
        await _sleep(2.6)  # the edge's Flow-Timer is 1 s: a ping every 0.8-1 s
        stream = role.registerClient.socket if role.registerClient is not None else None
        assert stream is socketAtStart and stream is not None, "the keepalives run on the connection that registered"
        assert stream.stats["pongs.received"] >= 2, stream.stats
        assert role.failures == 0
        edge.terminate()  # its output is read by the test, once it exited
        for _ in range(100):
            if role.failures:
                break
            await _sleep(0.1)
        failures = [e for e in events if e.get("sipnat_event") == "sipnat.client.flowFailure"]
        assert role.failures == 1 and failures, "the closed connection is a flow failure"
        assert role.retryAt is not None, "and the role will try again after the backoff"
        return stream
    finally:
        await role.stopService()


@pytest_twisted.ensureDeferred
async def test_the_client_registers_over_tcp_and_keeps_the_connection_alive(
        tmp_path: Path, events: List[Dict[str, Any]]) -> None:
    port = _freePort()
    edge = _edge(f"tcp:{port}:interface={LOOPBACK}", "example.com")
    try:
        role = _role(port, "alice@example.com", FlowTransport("tcp"))
        await _registerThenLoseTheEdge(edge, role, events)
    finally:
        out = _stop(edge)
    assert "registered sip:alice@example.com at sip:alice@127.0.0.1:" in out and ";transport=tcp;ob" in out, out
    assert "Traceback" not in out, out
    assert not [e for e in events if e.get("log_failure") is not None]


@pytest_twisted.ensureDeferred
async def test_the_client_registers_over_tls_with_the_certificate_verified(
        tmp_path: Path, events: List[Dict[str, Any]]) -> None:
    cert, key = _certificate(tmp_path)
    port = _freePort()
    edge = _edge(f"ssl:{port}:interface={LOOPBACK}:privateKey={key}:certKey={cert}", "localhost")
    try:
        role = _role(port, "alice@localhost", FlowTransport("tls", caCerts=str(cert)))
        await _registerThenLoseTheEdge(edge, role, events)
    finally:
        out = _stop(edge)
    assert "registered sip:alice@localhost at sips:alice@127.0.0.1:" in out, out
    assert "Traceback" not in out, out
    assert not [e for e in events if e.get("log_failure") is not None]
    assert not [e for e in events if e.get("sipnat_event") == "sipnat.client.tls.unverified"]


def test_a_tls_edge_whose_certificate_names_another_domain_is_refused_in_one_line(tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path)  # names localhost and 127.0.0.1, not example.com
    port = _freePort()
    edge = _edge(f"ssl:{port}:interface={LOOPBACK}:privateKey={key}:certKey={cert}", "example.com")
    client = subprocess.Popen(
        TWISTD + ["sipnat", "client", f"--listen=udp:0:interface={LOOPBACK}", f"--next-hop={LOOPBACK}:{port}",
                  "--register=alice@example.com", "--transport=tls", f"--ca-certs={cert}",
                  f"--state-dir={tmp_path / 'state'}"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: List[str] = []
    try:
        assert client.stdout is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = client.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "trying again in" in line:
                break
    finally:
        client.terminate()
        rest, _ = client.communicate(timeout=20)
        edgeOut = _stop(edge)
    out = "".join(lines) + rest
    failed = [line for line in lines if "REGISTER failed" in line]
    assert len(failed) == 1 and "TLS with 127.0.0.1" in failed[0], out
    assert failed[0].rstrip().endswith("failed: the certificate does not name example.com (RFC 5922 §7.2)"), out
    assert "Traceback" not in out, out
    assert "registered" not in edgeOut, edgeOut  # the REGISTER never reached the edge's registrar


@pytest_twisted.ensureDeferred
async def test_no_verify_registers_with_any_certificate_and_says_so(tmp_path: Path,
                                                                   events: List[Dict[str, Any]]) -> None:
    cert, key = _certificate(tmp_path)  # names localhost: refused for example.com when verified
    port = _freePort()
    edge = _edge(f"ssl:{port}:interface={LOOPBACK}:privateKey={key}:certKey={cert}", "example.com")
    role = _role(port, "alice@example.com", FlowTransport("tls", verify=False))
    try:
        role.startService()
        await role.ready
        assert role.failures == 0 and role.keepalivesStarted == 1
        warnings = [e for e in events if e.get("sipnat_event") == "sipnat.client.tls.unverified"]
        assert len(warnings) == 1 and warnings[0]["log_level"].name == "warn"
    finally:
        await role.stopService()
        out = _stop(edge)
    assert "registered sip:alice@example.com at sips:alice@127.0.0.1:" in out, out
