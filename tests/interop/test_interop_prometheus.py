"""
A real Prometheus server (Debian's ``prometheus``) scraping ``--metrics``: what it stored is what happened.

The client role runs under twistd against a STUN next hop played by the test, which answers the resolution
and exactly ``KEEPALIVES`` keepalives and then goes silent, so the flow fails with a STUN timeout.  Prometheus
scrapes every second; the test then asks its HTTP API (``/api/v1/query``) for every figure and compares it with
what the test counted on the wire.  A ``stun --workers 2`` beside it shows that each worker is a target of its
own (``PORT`` and ``PORT+1``).  A second test does the same for the edge role: its SIP and STUN requests by
result, its registrations, connections and flows.  The peer is installed by ``.ci/install-peers``; a missing
one fails the test.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peerkit import PeerError, PeerProcess, freePort, requireTool  # noqa: E402

from twisted_sipnat.core import stun  # noqa: E402
from twisted_sipnat.testing import bindingResponse  # noqa: E402

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]

LOOPBACK = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[2]
#: Keepalives the test's next hop answers before it goes silent.
KEEPALIVES = 5
MAPPED = ("203.0.113.9", 41000)


class NextHop:
    """A STUN next hop on loopback: answers the first ``answer`` transactions (and their retransmissions)."""

    def __init__(self, answer: int) -> None:
        self.answer = answer
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.answered: List[bytes] = []
        self.ignored: Set[bytes] = set()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.is_set():
            try:
                data, addr = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            if not stun.isSTUN(data):
                continue
            request = stun.decode(data)
            tid = request.transactionId
            if tid not in self.answered and len(self.answered) >= self.answer:
                self.ignored.add(tid)
                continue
            if tid not in self.answered:
                self.answered.append(tid)
            self.sock.sendto(bindingResponse(request, MAPPED), addr)

    def close(self) -> None:
        self.done.set()
        self.thread.join(5)
        self.sock.close()


def twistd(*args: str) -> List[str]:
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
            "--logfile=-", "sipnat", *args]


def get(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
        return body


def waitFor(what: str, check: Callable[[], Any], deadline: float, alive: Callable[[], Optional[str]]) -> Any:
    last: Any = None
    while time.monotonic() < deadline:
        dead = alive()
        if dead is not None:
            pytest.fail(f"{what}: a process ended: {dead}")
        try:
            last = check()
        except OSError as e:
            last = e
        else:
            if last:
                return last
        time.sleep(0.2)
    pytest.fail(f"{what}: not in time (last: {last!r})")


def firstDead(processes: List[PeerProcess]) -> Optional[str]:
    """Why the first of ``processes`` that ended did (``None`` while all run)."""
    for process in processes:
        dead = process.deadReason()
        if dead is not None:
            return f"{process.name}: {dead}"
    return None


class PromQL:
    """Instant queries against Prometheus's HTTP API."""

    def __init__(self, port: int) -> None:
        self.base = f"http://{LOOPBACK}:{port}"

    def vector(self, query: str) -> List[Tuple[Dict[str, str], float]]:
        url = f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        answer = json.loads(get(url))
        assert answer["status"] == "success", answer
        return [(r["metric"], float(r["value"][1])) for r in answer["data"]["result"]]

    def scalar(self, query: str) -> Optional[float]:
        found = self.vector(query)
        assert len(found) <= 1, (query, found)
        return found[0][1] if found else None


def writePrometheusConfig(path: Path, jobs: Dict[str, List[int]]) -> None:
    """A scrape every second of each job's loopback ports."""
    text = ("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n")
    for job, ports in jobs.items():
        targets = ", ".join(f"'{LOOPBACK}:{port}'" for port in ports)
        text += f"  - job_name: {job}\n    static_configs:\n      - targets: [{targets}]\n"
    path.write_text(text)


def test_prometheus_stores_what_the_client_role_did(tmp_path: Path) -> None:
    try:
        binary = requireTool("prometheus", "prometheus")
    except PeerError as e:
        pytest.fail(f"Prometheus is needed for this interop test: {e}", pytrace=False)
    hop = NextHop(answer=1 + KEEPALIVES)  # the resolution, then the keepalives
    clientMetrics, stunMetrics, web = freePort(), freePort(span=2), freePort()
    config = tmp_path / "sipnat.ini"
    # rto 0.05 s: the unanswered keepalive times out after 3.95 s (RFC 8489 §6.2.1, Rc = 7, Rm = 16).
    config.write_text("[default]\nrto = 0.05\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    processes: List[PeerProcess] = []

    def start(name: str, argv: List[str]) -> PeerProcess:
        process = PeerProcess(name, argv, tmp_path / f"{name}.log")
        processes.append(process)
        return process

    def alive() -> Optional[str]:
        return firstDead(processes)

    promConfig = tmp_path / "prometheus.yml"
    writePrometheusConfig(promConfig, {"client": [clientMetrics], "stun": [stunMetrics, stunMetrics + 1]})
    old = os.environ.copy()
    os.environ.update(env)  # PeerProcess passes the environment on
    try:
        start("client", twistd("--config", str(config), "client", f"--next-hop={LOOPBACK}:{hop.port}",
                               f"--listen=udp:0:interface={LOOPBACK}", "--interval=1", "--backoff-base=1800",
                               f"--metrics=tcp:{clientMetrics}:interface={LOOPBACK}"))
        start("stun", twistd("stun", f"--udp=udp:{freePort()}:interface={LOOPBACK}", "--workers=2",
                             f"--metrics=tcp:{stunMetrics}:interface={LOOPBACK}"))
    finally:
        os.environ.clear()
        os.environ.update(old)
    prom = start("prometheus", [binary, f"--config.file={promConfig}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                f"--web.listen-address={LOOPBACK}:{web}"])
    api = PromQL(web)
    try:
        deadline = time.monotonic() + 120
        waitFor("Prometheus ready", lambda: get(f"http://{LOOPBACK}:{web}/-/ready") is not None, deadline, alive)
        # The next hop answered the resolution and KEEPALIVES keepalives, then let one go unanswered ...
        waitFor("the next hop going silent", lambda: hop.ignored, deadline, alive)
        # ... whose timeout failed the flow; Prometheus has scraped that once it stores the failure.
        waitFor("Prometheus storing the flow failure",
                lambda: api.scalar('sipnat_flow_failures_total{job="client",reason="stun_timeout"}') == 1,
                deadline, alive)
        waitFor("both stun workers scraped", lambda: api.scalar('count(up{job="stun"} == 1)') == 2, deadline, alive)
        stored = {
            "answered": api.scalar('sipnat_keepalives_total{job="client",result="answered"}'),
            "timeout": api.scalar('sipnat_keepalives_total{job="client",result="timeout"}'),
            "error": api.scalar('sipnat_keepalives_total{job="client",result="error"}'),
            "flows now": api.scalar('sipnat_flows{job="client",transport="udp"}'),
            "flows max": api.scalar('max_over_time(sipnat_flows{job="client",transport="udp"}[5m])'),
            "rtt count": api.scalar('sipnat_keepalive_rtt_seconds_count{job="client"}'),
            "rtt <= 0.1 s": api.scalar('sipnat_keepalive_rtt_seconds_bucket{job="client",le="0.1"}'),
            "rtt sum": api.scalar('sipnat_keepalive_rtt_seconds_sum{job="client"}'),
            "connection_lost": api.scalar('sipnat_flow_failures_total{job="client",reason="connection_lost"}'),
            "stun targets up": api.scalar('count(up{job="stun"} == 1)'),
            "stun series per worker": len(api.vector('sipnat_stun_requests_total{job="stun",result="answered"}')),
            "client scrapes": api.scalar('count_over_time(up{job="client"}[5m])'),
            "samples per client scrape": api.scalar('scrape_samples_scraped{job="client"}'),
        }
    finally:
        for process in reversed(processes):
            process.stop()
        hop.close()
        print("\nPrometheus stored:", json.dumps(stored if "stored" in locals() else {}, sort_keys=True))
    assert len(hop.answered) == 1 + KEEPALIVES and len(hop.ignored) >= 1
    assert stored["answered"] == KEEPALIVES, stored
    assert stored["timeout"] == 1 and stored["error"] == 0, stored
    assert stored["flows max"] == 1 and stored["flows now"] == 0, stored
    assert stored["rtt count"] == KEEPALIVES and stored["rtt <= 0.1 s"] == KEEPALIVES, stored  # loopback
    assert 0 < stored["rtt sum"] < KEEPALIVES * 0.1, stored
    assert stored["connection_lost"] == 0, stored
    assert stored["stun targets up"] == 2 and stored["stun series per worker"] == 2, stored
    assert stored["client scrapes"] >= 2, stored  # at least one while the flow lived, one after it failed
    assert prom.logTail(200).count("Server is ready to receive web requests") == 1
    for name in ("client", "stun"):  # twistd stopped by SIGTERM ends with that signal's status, cleanly
        log = (tmp_path / f"{name}.log").read_text()
        assert "Traceback" not in log and "Server Shut Down" in log, log


def _collect(sock: socket.socket, quiet: float = 1.0) -> List[bytes]:
    """Every datagram ``sock`` receives until it has been quiet for ``quiet`` seconds."""
    sock.settimeout(quiet)
    received: List[bytes] = []
    while True:
        try:
            received.append(sock.recv(65536))
        except TimeoutError:
            return received


def test_prometheus_stores_what_the_edge_role_answered_refused_and_holds(tmp_path: Path) -> None:
    """
    The edge role under twistd, scraped every second: REGISTERs over UDP and TCP, malformed SIP, a SIP burst
    past its rate limit and a STUN burst past the responder's, and two TCP connections held open.  Prometheus
    must store exactly what the test counted on the wire.
    """
    sys.path.insert(0, str(ROOT))
    from tests.sipedgekit import register

    try:
        binary = requireTool("prometheus", "prometheus")
    except PeerError as e:
        pytest.fail(f"Prometheus is needed for this interop test: {e}", pytrace=False)
    sipPort, tcpPort, metrics, web = freePort(), freePort(), freePort(), freePort()
    processes: List[PeerProcess] = []

    def alive() -> Optional[str]:
        return firstDead(processes)

    promConfig = tmp_path / "prometheus.yml"
    writePrometheusConfig(promConfig, {"edge": [metrics]})
    old = os.environ.copy()
    os.environ["PYTHONPATH"] = str(ROOT)
    try:
        processes.append(PeerProcess("edge", twistd(
            "edge", f"--udp=udp:{sipPort}:interface={LOOPBACK}", f"--tcp=tcp:{tcpPort}:interface={LOOPBACK}",
            "--domain=example.com", f"--host={LOOPBACK}", "--sip-rate=1", "--sip-burst=10",
            f"--metrics=tcp:{metrics}:interface={LOOPBACK}"), tmp_path / "edge.log"))
    finally:
        os.environ.clear()
        os.environ.update(old)
    processes.append(PeerProcess("prometheus", [
        binary, f"--config.file={promConfig}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address={LOOPBACK}:{web}"], tmp_path / "prometheus.log"))
    api = PromQL(web)
    sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stunSock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    streams: List[socket.socket] = []
    try:
        deadline = time.monotonic() + 120
        waitFor("Prometheus ready", lambda: get(f"http://{LOOPBACK}:{web}/-/ready") is not None, deadline, alive)
        waitFor("the edge scraped", lambda: api.scalar('up{job="edge"}') == 1, deadline, alive)
        edge = (LOOPBACK, sipPort)
        # Three UDP REGISTERs and two malformed requests (no CSeq: a 400), all within the SIP burst of 10 ...
        for i in range(3):
            sip.sendto(register(f"u{i}", callId=f"c{i}@udp", contacts=[f"<sip:u{i}@{LOOPBACK}:5060>"]), edge)
        for i in range(2):
            sip.sendto(register(f"bad{i}", callId=f"b{i}@udp").replace(b"CSeq: 1 REGISTER\r\n", b""), edge)
        # ... then 20 OPTIONS at once: the 5 tokens left and whatever refilled are answered, the rest dropped.
        for i in range(20):
            sip.sendto(b"OPTIONS sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKo%d\r\n"
                       b"From: <sip:x@example.com>;tag=1\r\nTo: <sip:example.com>\r\nCall-ID: o%d\r\n"
                       b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n" % (i, i), edge)
        sipAnswers = _collect(sip)
        # 60 STUN Binding requests at once on the SIP port: the responder's burst of 40 answers, the rest dropped.
        for _ in range(60):
            stunSock.sendto(stun.Message(stun.BINDING, stun.REQUEST).encode(), edge)
        stunAnswers = _collect(stunSock)
        # Two TCP connections, each registering (so they are flows, kept past the first-message timeout).
        for i in range(2):
            conn = socket.create_connection((LOOPBACK, tcpPort), timeout=5)
            conn.sendall(register(f"t{i}", callId=f"c{i}@tcp", transport="TCP",
                                  contacts=[f"<sip:t{i}@{LOOPBACK}:5060;transport=tcp>"]))
            assert conn.recv(65536).startswith(b"SIP/2.0 200 "), "the TCP REGISTER answered"
            streams.append(conn)
        codes = sorted(a.split(b" ", 2)[1].decode() for a in sipAnswers)
        answered = codes.count("200") + 2  # and the two TCP REGISTERs
        expected = {"answered": answered, "malformed": codes.count("400"),
                    "rate_limited": 3 + 2 + 20 - len(sipAnswers)}
        waitFor("Prometheus storing the SIP requests", lambda: api.scalar(
            'sipnat_sip_requests_total{job="edge",result="answered"}') == answered, deadline, alive)
        waitFor("Prometheus storing the connections", lambda: api.scalar(
            'sipnat_connections{job="edge",transport="tcp"}') == 2, deadline, alive)
        stored = {
            "sip": {r: api.scalar(f'sipnat_sip_requests_total{{job="edge",result="{r}"}}') for r in expected},
            "stun answered": api.scalar('sipnat_stun_requests_total{job="edge",result="answered"}'),
            "stun rate_limited": api.scalar('sipnat_stun_requests_total{job="edge",result="rate_limited"}'),
            "registrations": api.scalar('sipnat_registrations{job="edge"}'),
            "connections": api.scalar('sipnat_connections{job="edge",transport="tcp"}'),
            "flows": {t: api.scalar(f'sipnat_flows{{job="edge",transport="{t}"}}') for t in ("udp", "tcp")},
        }
    finally:
        for conn in streams:
            conn.close()
        sip.close()
        stunSock.close()
        for process in reversed(processes):
            process.stop()
        print("\nPrometheus stored (edge):", json.dumps(stored if "stored" in locals() else {}, sort_keys=True))
    assert codes.count("400") == 2 and codes.count("200") == len(sipAnswers) - 2, codes
    assert stored["sip"] == {k: float(v) for k, v in expected.items()}, (stored, expected)
    assert expected["rate_limited"] >= 10, expected  # the burst really was cut
    assert len(stunAnswers) == 40, len(stunAnswers)
    assert stored["stun answered"] == 40 and stored["stun rate_limited"] == 20, stored
    assert stored["registrations"] == 5 and stored["connections"] == 2, stored
    assert stored["flows"] == {"udp": 1.0, "tcp": 2.0}, stored  # the three UDP bindings share one source
    log = (tmp_path / "edge.log").read_text()
    assert "Traceback" not in log and "Server Shut Down" in log, log
