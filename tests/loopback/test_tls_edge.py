"""
SIP over TLS at the edge, for real: ``twistd sipnat edge --tcp ssl:...`` with a certificate made by the test, a
client that verifies it (Python's ``ssl``), a REGISTER over the TLS flow answered 200 with ``received``/``rport``,
and the TLS connection counted as such in the metrics (``sipnat_connections{transport="tls"}``).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.sipedgekit import register

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"


def _freePort() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def _certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for ``localhost`` and 127.0.0.1, and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address(LOOPBACK))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    certPath, keyPath = directory / "edge.crt", directory / "edge.key"
    certPath.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyPath.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return certPath, keyPath


@pytest.mark.timeout(60)
def test_a_register_over_tls_is_answered_and_counted_as_tls(tmp_path: Path) -> None:
    certPath, keyPath = _certificate(tmp_path)
    tls, metrics = _freePort(), _freePort()
    edge = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "--logfile=-",
         "sipnat", "edge", f"--udp=udp:0:interface={LOOPBACK}", "--domain=example.com", f"--host={LOOPBACK}",
         f"--tcp=ssl:{tls}:interface={LOOPBACK}:privateKey={keyPath}:certKey={certPath}",
         f"--metrics=tcp:{metrics}:interface={LOOPBACK}"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        context = ssl.create_default_context(cafile=str(certPath))  # verification on, as a real client has it
        deadline = time.monotonic() + 20
        while True:
            try:
                raw = socket.create_connection((LOOPBACK, tls), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline or edge.poll() is not None:
                    raise
                time.sleep(0.1)
        with context.wrap_socket(raw, server_hostname="localhost") as conn:
            conn.sendall(register("alice", transport="TLS", contacts=["<sip:alice@10.0.0.1:5061;transport=tls>"]))
            answer = conn.recv(65536)
            assert answer.startswith(b"SIP/2.0 200 "), answer
            via = next(line for line in answer.split(b"\r\n") if line.lower().startswith(b"via:"))
            assert b"received=127.0.0.1" in via and b"rport=" in via, via
            page = urllib.request.urlopen(f"http://{LOOPBACK}:{metrics}/metrics", timeout=5).read().decode()
            assert 'sipnat_connections{transport="tls"} 1.0' in page, page
            assert 'sipnat_flows{transport="tls"} 1.0' in page, page
            assert "sipnat_registrations 1.0" in page, page
    finally:
        edge.terminate()
        out, _ = edge.communicate(timeout=20)
    assert "Traceback" not in out, out
