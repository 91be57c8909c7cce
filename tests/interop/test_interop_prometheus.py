"""
A real Prometheus server (Debian's ``prometheus``) scraping ``--metrics``: what it stored is what happened.

The client role runs under twistd against a STUN next hop played by the test, which answers the resolution
and exactly ``KEEPALIVES`` keepalives and then goes silent, so the flow fails with a STUN timeout.  Prometheus
scrapes every second; the test then asks its HTTP API (``/api/v1/query``) for every figure and compares it with
what the test counted on the wire.  A ``stun --workers 2`` beside it shows that each worker is a target of its
own (``PORT`` and ``PORT+1``).  The peer is installed by ``.ci/install-peers``; a missing one fails the test.
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


def writePrometheusConfig(path: Path, client: int, stunBase: int) -> None:
    path.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        f"  - job_name: client\n    static_configs:\n      - targets: ['{LOOPBACK}:{client}']\n"
        "  - job_name: stun\n    static_configs:\n"
        f"      - targets: ['{LOOPBACK}:{stunBase}', '{LOOPBACK}:{stunBase + 1}']\n"
    )


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
        for process in processes:
            dead = process.deadReason()
            if dead is not None:
                return f"{process.name}: {dead}"
        return None

    promConfig = tmp_path / "prometheus.yml"
    writePrometheusConfig(promConfig, clientMetrics, stunMetrics)
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
