"""
``--metrics``: the Prometheus endpoint of every role, scraped over real loopback HTTP and parsed with
``prometheus_client``'s own parser; ``--stats-interval``; the options; a port that cannot be bound; workers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Dict, FrozenSet, List, Tuple, cast

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import task
from twisted.logger import ILogObserver, globalLogPublisher
from zope.interface import implementer

from twisted_sipnat.errors import InvalidSettingsError
from twisted_sipnat.service.figures import CONTRACT_LABELS, METRICS, Figures, IFigureSource
from twisted_sipnat.service.options import parseMetrics, parseStatsInterval
from twisted_sipnat.settings import NATSettings
from twisted_sipnat.tap import Options, buildService

LOOPBACK = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[2]
Samples = Dict[Tuple[str, FrozenSet[Tuple[str, str]]], float]


def parseScrape(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


async def scrape(port: int) -> Samples:
    from twisted.internet import reactor
    from twisted.web.client import Agent, readBody

    response = await Agent(reactor).request(b"GET", f"http://{LOOPBACK}:{port}/metrics".encode())
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
    with warnings.catch_warnings():  # Twisted's own response transport lacks abortConnection: nothing of ours
        warnings.simplefilter("ignore", DeprecationWarning)
        body = await readBody(response)
    return parseScrape(body.decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@implementer(IFigureSource)
class Source:
    """A part with figures that the test changes between scrapes."""

    def __init__(self) -> None:
        self.answered = 0
        self.asked = 0

    def reportFigures(self, figures: Figures) -> None:
        self.asked += 1
        figures.count("sipnat_stun_requests_total", self.answered, result="answered")
        figures.gauge("sipnat_registrations", 7)
        figures.gauge("sipnat_connections", 2, transport="tcp")
        figures.count("sipnat_connections_refused_total", 3, reason="total_limit")


def freePort() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


# ---- the endpoint, in this process ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_every_contract_metric_is_exposed_and_each_scrape_asks_again() -> None:
    from twisted.internet import reactor

    from twisted_sipnat.service.metrics import MetricsServer

    source = Source()
    server = MetricsServer(reactor, f"tcp:0:interface={LOOPBACK}", source)
    server.startService()
    try:
        port = server.address()[1]  # type: ignore[index]
        first = await scrape(port)
        source.answered = 41
        second = await scrape(port)
    finally:
        await server.stopService()
    names = {name for name, _ in first}
    for metric, spec in METRICS.items():
        if spec.kind == "histogram":
            assert {metric + "_bucket", metric + "_count", metric + "_sum"} <= names
            assert value(first, metric + "_count") == 0
            assert value(first, metric + "_bucket", le="+Inf") == 0
        elif metric in CONTRACT_LABELS:
            for label in CONTRACT_LABELS[metric]:
                assert (metric, frozenset({(spec.labels[0], label)})) in first, (metric, label)
    assert value(first, "sipnat_stun_requests_total", result="answered") == 0
    assert value(first, "sipnat_stun_requests_total", result="rate_limited") == 0  # nobody reported it: 0
    assert value(second, "sipnat_stun_requests_total", result="answered") == 41  # never stale
    assert value(second, "sipnat_registrations") == 7
    assert value(second, "sipnat_connections", transport="tcp") == 2
    assert value(second, "sipnat_connections_refused_total", reason="total_limit") == 3
    assert value(second, "sipnat_flows", transport="udp") == 0
    assert source.asked == 2, "one gathering per scrape"


@pytest_twisted.ensureDeferred
async def test_two_roles_in_one_process_keep_their_own_figures() -> None:
    from twisted.internet import reactor

    from twisted_sipnat.service.metrics import MetricsServer

    a, b = Source(), Source()
    a.answered, b.answered = 1, 2
    servers = [MetricsServer(reactor, f"tcp:0:interface={LOOPBACK}", s) for s in (a, b)]
    for server in servers:
        server.startService()
    try:
        seen = [await scrape(server.address()[1]) for server in servers]  # type: ignore[index]
    finally:
        for server in servers:
            await server.stopService()
    assert [value(s, "sipnat_stun_requests_total", result="answered") for s in seen] == [1, 2]


@pytest_twisted.ensureDeferred
async def test_the_client_role_reports_its_flow_and_every_answered_keepalive() -> None:
    from twisted.internet import reactor

    from twisted_sipnat.service.client import ClientRole
    from twisted_sipnat.service.metrics import MetricsServer
    from twisted_sipnat.service.stunserver import STUNRole

    stun = STUNRole(reactor, udp=(0, LOOPBACK), rateLimit=None)
    stun.startService()
    client = ClientRole(reactor, stun.address, {"default": NATSettings(udpKeepaliveInterval=0.1)}, "default",
                        listen=(0, LOOPBACK))
    server = MetricsServer(reactor, f"tcp:0:interface={LOOPBACK}", client)
    server.setServiceParent(client)
    client.startService()
    try:
        await client.ready
        deadline = reactor.seconds() + 10
        while client.controller.stats["keepalive.answered"] < 3 and reactor.seconds() < deadline:
            await task.deferLater(reactor, 0.05)
        samples = await scrape(server.address()[1])  # type: ignore[index]
        answered = client.controller.stats["keepalive.answered"]
    finally:
        await client.stopService()
        await stun.stopService()
    assert answered >= 3
    assert value(samples, "sipnat_flows", transport="udp") == 1
    got = value(samples, "sipnat_keepalives_total", result="answered")
    assert answered - 1 <= got <= answered  # one more may have been answered while the scrape was served
    assert value(samples, "sipnat_keepalive_rtt_seconds_count") == got
    assert 0 < value(samples, "sipnat_keepalive_rtt_seconds_sum") < got * 1.0  # loopback: well under 1 s each
    assert value(samples, "sipnat_keepalives_total", result="timeout") == 0
    assert value(samples, "sipnat_flow_failures_total", reason="stun_timeout") == 0


@pytest_twisted.ensureDeferred
async def test_idle_connections_cannot_lock_the_scraper_out_for_long() -> None:
    """A flood of idle connections: past MAX_CONNECTIONS each new one is closed; once they go, scrapes work."""
    from twisted.internet import reactor

    from twisted_sipnat.service.metrics import MAX_CONNECTIONS, MetricsServer

    server = MetricsServer(reactor, f"tcp:0:interface={LOOPBACK}", Source())
    server.startService()
    port = server.address()[1]  # type: ignore[index]
    idle: List[socket.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS * 2):  # within the listen backlog: the reactor accepts after this loop
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex((LOOPBACK, port))
            idle.append(s)
        deadline = reactor.seconds() + 5
        while len(server.factory.protocols) + server.factory.refused < len(idle) and reactor.seconds() < deadline:
            await task.deferLater(reactor, 0.02)
        assert len(server.factory.protocols) == MAX_CONNECTIONS
        assert server.factory.refused == len(idle) - MAX_CONNECTIONS
        for s in idle:
            s.close()
        idle.clear()
        while server.factory.protocols and reactor.seconds() < deadline:
            await task.deferLater(reactor, 0.02)
        samples = await scrape(port)
        assert value(samples, "sipnat_registrations") == 7
    finally:
        for s in idle:
            s.close()
        await server.stopService()


def test_a_port_in_use_is_one_line_naming_the_option() -> None:
    from twisted.internet import reactor

    from twisted_sipnat.service.metrics import MetricsServer

    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = MetricsServer(reactor, f"tcp:{port}:interface={LOOPBACK}", Source())
        with pytest.raises(SystemExit) as info:
            server.privilegedStartService()
    message = str(info.value.code)
    assert "\n" not in message
    assert message.startswith(f"twistd sipnat: invalid metrics='tcp:{port}:interface={LOOPBACK}': cannot listen (")
    assert not server.running and server.listener.port is None


# ---- the options ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, worker, description",
    [
        ("tcp:9460", 0, "tcp:9460"),
        ("tcp:9460", 3, "tcp:9463"),
        ("tcp:0", 3, "tcp:0"),
        ("TCP:port=9460:interface=127.0.0.1", 0, "tcp:9460:interface=127.0.0.1"),
        ("tcp:9460:interface=::1", 1, "tcp:9461:interface=\\:\\:1"),
        ("tcp:9460:interface=[::1]", 0, "tcp:9460:interface=\\:\\:1"),
    ],
)
def test_metrics_descriptions(text: str, worker: int, description: str) -> None:
    assert parseMetrics(text, worker) == description


@pytest.mark.parametrize("text", ["9460", "udp:9460", "tcp:", "tcp:70000", "tcp:9460:interface=localhost",
                                  "unix:/tmp/m", "tcp:9460:backlog=5"])
def test_bad_metrics_descriptions_name_the_option(text: str) -> None:
    with pytest.raises(InvalidSettingsError) as info:
        parseMetrics(text)
    assert info.value.key == "metrics"


def test_the_last_worker_port_must_exist() -> None:
    with pytest.raises(InvalidSettingsError, match="worker 2: 65536"):
        parseMetrics("tcp:65534", 2)
    with pytest.raises(InvalidSettingsError, match="worker 2: 65536"):  # checked by twistd itself, up front
        from twisted.internet import reactor

        buildService(_parse(["stun", "--udp", "udp:0", "--workers", "3", "--metrics", "tcp:65534"]), reactor)


@pytest.mark.parametrize("text", ["0", "-1", "soon", "nan", "inf"])
def test_bad_stats_intervals_name_the_option(text: str) -> None:
    with pytest.raises(InvalidSettingsError) as info:
        parseStatsInterval(text)
    assert info.value.key == "stats-interval"


ROLES = {
    "embedded": [],
    "client": ["client", "--next-hop", "127.0.0.1:5060", "--listen", "udp:0"],
    "edge": ["edge", "--udp", "udp:0", "--tcp", "none"],
    "stun": ["stun", "--udp", "udp:0"],
}


def _parse(argv: List[str]) -> Options:
    options = Options()
    options.parseOptions(argv)
    return options


@pytest.mark.parametrize("role", sorted(ROLES))
def test_every_role_takes_metrics_and_stats_interval(role: str) -> None:
    from twisted.internet import reactor

    from twisted_sipnat.service.metrics import MetricsServer
    from twisted_sipnat.service.statslog import StatsLog

    argv = ROLES[role] + ["--metrics", "tcp:9460:interface=127.0.0.1", "--stats-interval", "30"]
    top = buildService(_parse(argv), reactor)
    kinds = [type(child) for child in top]
    assert MetricsServer in kinds and StatsLog in kinds
    server = next(child for child in top if isinstance(child, MetricsServer))
    assert server.description == "tcp:9460:interface=127.0.0.1"
    plain = buildService(_parse(ROLES[role]), reactor)
    assert not any(isinstance(child, (MetricsServer, StatsLog)) for child in plain)


def test_a_worker_serves_on_its_own_port() -> None:
    from twisted.internet import reactor

    from twisted_sipnat.service.metrics import MetricsServer

    top = buildService(_parse(["stun", "--udp", "udp:0", "--metrics", "tcp:9460"]), reactor, worker=2)
    assert [c.description for c in top if isinstance(c, MetricsServer)] == ["tcp:9462"]


@pytest.mark.parametrize("option", ["--metrics=tcp:9460", "--stats-interval=10"])
def test_figure_options_before_a_subcommand_are_refused(option: str) -> None:
    with pytest.raises(InvalidSettingsError, match="goes after the subcommand"):
        buildService(_parse([option, "stun"]), None)


# ---- --stats-interval -----------------------------------------------------------------------------------------


def test_stats_interval_logs_one_line_of_the_same_figures_per_interval(clock: Any) -> None:
    from twisted_sipnat.service.statslog import StatsLog

    events: List[Dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    source = Source()
    stats = StatsLog(clock, 10, source)
    globalLogPublisher.addObserver(observer)
    try:
        stats.startService()
        clock.advance(5)
        source.answered = 10
        clock.advance(5)
        source.answered = 12
        clock.advance(10)
        stats.stopService()
    finally:
        globalLogPublisher.removeObserver(observer)
    lines = [e for e in events if e.get("sipnat_event") == "sipnat.stats"]
    assert len(lines) == 2
    assert lines[0]["log_namespace"] == "twisted_sipnat.stats"
    assert "stun_requests answered=10 rate_limited=0 malformed=0" in lines[0]["stats"]
    assert "registrations=7" in lines[0]["stats"] and "connections tcp=2" in lines[0]["stats"]
    assert "flows udp=0 tcp=0" in lines[0]["stats"]
    assert lines[1]["stun_requests_answered"] == 12


# ---- real twistd runs -----------------------------------------------------------------------------------------


def _twistd(*args: str) -> List[str]:
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "sipnat", *args]


@pytest.mark.parametrize("role", sorted(ROLES))
def test_twistd_with_its_metrics_port_taken_says_so_in_one_line_and_exits_1(role: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(_twistd(*ROLES[role], f"--metrics=tcp:{port}:interface={LOOPBACK}"), cwd=tmp_path,
                                env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                                timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if "twistd sipnat:" in line]
    assert len(lines) == 1 and f"invalid metrics='tcp:{port}:interface={LOOPBACK}': cannot listen (" in lines[0]


def _get(port: int) -> Samples:
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=5) as response:
        return parseScrape(response.read().decode())


@pytest.mark.timeout(90)
def test_twistd_with_workers_serves_each_workers_figures_on_its_own_port(tmp_path: Path) -> None:
    """``--workers 2 --metrics tcp:P``: worker 0 (twistd) on P, worker 1 on P+1, each with its own figures."""
    base = freePort()
    while True:  # P+1 free as well
        try:
            with socket.socket() as s:
                s.bind((LOOPBACK, base + 1))
            break
        except OSError:
            base = freePort()
    process = subprocess.Popen(
        _twistd("stun", f"--udp=udp:{freePort()}:interface={LOOPBACK}", "--workers=2",
                f"--metrics=tcp:{base}:interface={LOOPBACK}"),
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    seen: Dict[int, Samples] = {}
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(seen) < 2:
            for port in (base, base + 1):
                if port not in seen:
                    try:
                        seen[port] = _get(port)
                    except OSError:
                        pass
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        output = process.stdout.read().decode("utf-8", "replace") if process.stdout else ""
    assert sorted(seen) == [base, base + 1], output
    for samples in seen.values():
        assert ("sipnat_stun_requests_total", frozenset({("result", "answered")})) in samples
    assert "Traceback" not in output, output


def test_a_worker_whose_metrics_port_is_taken_says_so_in_one_line_and_exits_1(tmp_path: Path) -> None:
    """Worker 1 of ``--metrics tcp:P`` binds P+1: taken, it ends with the one line and status 1 (the pool retries)."""
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "twisted_sipnat.service.worker", "stun", f"--udp=udp:0:interface={LOOPBACK}",
             f"--metrics=tcp:{port - 1}:interface={LOOPBACK}"],
            cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT), TWISTED_SIPNAT_WORKER="1"),
            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        f"twistd sipnat: invalid metrics='tcp:{port}:interface={LOOPBACK}': cannot listen "
        "([Errno 98] Address already in use)"], result.stderr
