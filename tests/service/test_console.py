"""
Issue 13, the console: a port in use or an address that cannot be assigned is one line naming the option and exit
status 1 (it was a 45-line ``CannotListenError`` traceback, for every role); no "Starting factory/protocol"
lines from our protocols and factories; every log call of the package in a ``twisted_sipnat.*`` namespace with
the ``sipnat_event`` key; with ``--workers N`` every line of every worker carries its worker id.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import pkgutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest
from twisted.internet import error as netError
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import LogPublisher, formatEvent, globalLogPublisher

import twisted_sipnat
from twisted_sipnat.errors import ListenError
from twisted_sipnat.service import workers
from twisted_sipnat.service.listeners import UDPListener, listenFailed, whyNotListening

from .support import NetReactor

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "twisted_sipnat"
LOOPBACK = "127.0.0.1"
#: An address no host of ours has (TEST-NET-1, RFC 5737): binding it fails with EADDRNOTAVAIL.
FOREIGN = "192.0.2.77"


def _twistd(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "--logfile=-",
         "sipnat", *args],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=timeout,
    )


@pytest.fixture
def taken() -> Iterator[Tuple[int, int]]:
    """A UDP port and a TCP port on loopback that something else holds."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((LOOPBACK, 0))
    tcp = socket.socket()
    tcp.bind((LOOPBACK, 0))
    tcp.listen(1)
    try:
        yield udp.getsockname()[1], tcp.getsockname()[1]
    finally:
        udp.close()
        tcp.close()


def _oneLine(result: subprocess.CompletedProcess[str], expected: str) -> None:
    output = result.stdout + result.stderr
    ours = [line for line in output.splitlines() if "twistd sipnat:" in line]
    assert result.returncode == 1, output
    assert "Traceback" not in output and "CannotListenError" not in output, output
    assert len(ours) == 1, output
    assert ours[0].endswith(expected), ours[0]
    assert "[twisted_sipnat.listeners#error]" in ours[0]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "role,option,transport",
    [("stun", "udp", "udp"), ("stun", "tcp", "tcp"), ("edge", "udp", "udp"), ("edge", "tcp", "tcp"),
     ("client", "listen", "udp")],
)
def test_a_port_in_use_is_one_line_naming_the_option_and_status_1(
    taken: Tuple[int, int], role: str, option: str, transport: str
) -> None:
    udpPort, tcpPort = taken
    port = udpPort if transport == "udp" else tcpPort
    description = f"{transport}:{port}:interface={LOOPBACK}"
    args = {
        "stun": ["stun", "--udp", f"udp:0:interface={LOOPBACK}"],
        "edge": ["edge", "--udp", f"udp:0:interface={LOOPBACK}", "--tcp", "none"],
        "client": ["client", "--next-hop", f"{LOOPBACK}:5060", "--stun", f"{LOOPBACK}:3478"],
    }[role]
    args += [f"--{option}", description]
    _oneLine(_twistd(*args), f"twistd sipnat: --{option} {description}: port already in use")


@pytest.mark.timeout(60)
def test_an_address_that_cannot_be_assigned_is_one_line() -> None:
    _oneLine(_twistd("stun", "--udp", f"udp:3478:interface={FOREIGN}"),
             f"--udp udp:3478:interface={FOREIGN}: address cannot be assigned (not an address of this host)")


@pytest.mark.timeout(60)
def test_a_port_in_use_with_workers_is_one_line_too(taken: Tuple[int, int]) -> None:
    description = f"udp:{taken[0]}:interface={LOOPBACK}"
    result = _twistd("stun", "--udp", description, "--workers", "2")
    _oneLine(result, f"--udp {description}: port already in use")
    assert "[worker 0]" in result.stdout, "worker 0's line says which worker it is"


class _RefusingReactor(NetReactor):
    def listenUDP(self, port: int, proto: Any, interface: str = "", maxPacketSize: int = 8192) -> Any:
        raise netError.CannotListenError(interface, port, OSError(98, "Address already in use"))


def test_the_embedded_default_fails_in_one_line_too() -> None:
    """``twistd -n sipnat`` binds udp:0 on loopback, which hardly fails; when it does, the same one line."""
    from twisted_sipnat.service.embedded import EmbeddedDefault

    events: List[Dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        embedded = EmbeddedDefault(_RefusingReactor())
        with pytest.raises(ListenError) as info:
            embedded.privilegedStartService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert str(info.value) == "--udp udp:0:interface=127.0.0.1: port already in use"
    assert isinstance(info.value, SystemExit) and info.value.code == 1
    said = [e for e in events if e.get("sipnat_event") == "listen.failed"]
    assert [formatEvent(e) for e in said] == ["twistd sipnat: --udp udp:0:interface=127.0.0.1: port already in use"]


def test_listen_failed_is_reusable_by_any_listener() -> None:
    """What another listener (``--metrics tcp:PORT``) calls when its bind fails."""
    with pytest.raises(ListenError) as info:
        listenFailed("metrics", "tcp:9100", netError.CannotListenError("", 9100, OSError(98, "in use")))
    assert (info.value.option, info.value.description, info.value.why) == ("metrics", "tcp:9100", "port already in use")
    assert whyNotListening(OSError(13, "Permission denied")).startswith("permission denied")
    assert whyNotListening(socket.gaierror(-2, "Name or service not known")).startswith("cannot resolve")


def test_a_udp_listener_names_its_option() -> None:
    net = NetReactor()
    first = UDPListener(net, 5060, DatagramProtocol(), LOOPBACK)
    first.startService()
    with pytest.raises(ListenError, match="^--listen udp:5060:interface=127.0.0.1: "):
        UDPListener(net, 5060, DatagramProtocol(), LOOPBACK, option="listen").startService()
    first.stopService()


# ---- noisy, namespaces and the event key: the whole package, by its source -----------------------------------

#: Files allowed a log call without the event key: none.
ELSEWHERE: set = set()
#: Protocol classes owned elsewhere that are still noisy: none.
NOISY_ELSEWHERE: set = set()
LEVELS = {"debug", "info", "warn", "error", "critical", "failure", "emit", "msg", "err"}


def _logCalls() -> Iterator[Tuple[str, int, ast.Call, str]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            base = node.func.value
            name = base.id if isinstance(base, ast.Name) else base.attr if isinstance(base, ast.Attribute) else ""
            if node.func.attr in LEVELS and "log" in name.lower():
                yield str(path.relative_to(PACKAGE)), node.lineno, node, name


def test_every_log_call_has_the_event_key() -> None:
    calls = list(_logCalls())
    assert len(calls) > 30, "the walk finds the package's log calls"
    missing = [f"{path}:{line}" for path, line, call, _ in calls
               if path not in ELSEWHERE
               and not any(k.arg == "sipnat_event" or k.arg is None for k in call.keywords)]  # None: **fields
    assert missing == []


def test_every_logger_is_in_the_package_namespace_and_nothing_uses_the_legacy_log() -> None:
    seen = 0
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in (
                    "Logger", "WorkerOutputLogger"):
                seen += 1
                namespace = {k.arg: k.value for k in node.keywords}.get("namespace")
                assert namespace is not None, f"{path}:{node.lineno}: a Logger without namespace="
                if isinstance(namespace, ast.Constant):
                    assert str(namespace.value).split(".")[0] == "twisted_sipnat", f"{path}:{node.lineno}"
            if isinstance(node, ast.ImportFrom) and node.module == "twisted.python":
                assert "log" not in {a.name for a in node.names}, f"{path}:{node.lineno}: twisted.python.log"
            if isinstance(node, ast.Import):
                assert "twisted.python.log" not in {a.name for a in node.names}, f"{path}:{node.lineno}"
    assert seen >= 10


def _ourClasses() -> Iterator[Tuple[str, type]]:
    from twisted.internet import protocol

    for info in pkgutil.walk_packages(twisted_sipnat.__path__, "twisted_sipnat."):
        if info.name.endswith(("__main__", ".worker")):
            continue
        module = importlib.import_module(info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and issubclass(
                    cls, (protocol.AbstractDatagramProtocol, protocol.Factory)):
                yield f"{cls.__module__}.{name}", cls


def test_no_protocol_or_factory_of_ours_is_noisy() -> None:
    classes = dict(_ourClasses())
    assert "twisted_sipnat.protocols.SharedDatagramProtocol" in classes
    assert "twisted_sipnat.protocols.SharedStreamFactory" in classes
    noisy = sorted(name for name, cls in classes.items() if getattr(cls, "noisy", False) and name not in NOISY_ELSEWHERE)
    assert noisy == []


# ---- worker ids ------------------------------------------------------------------------------------------------


def test_worker_zero_tags_every_event_before_it_is_written() -> None:
    publisher = LogPublisher()
    written: List[str] = []
    publisher.addObserver(lambda event: written.append(formatEvent(event)))
    untag = workers.tagLogEvents(0, publisher=publisher)
    publisher({"log_format": "STUN server on UDP {where}", "where": "127.0.0.1:3478"})
    publisher({"log_format": "[{tag}] {line}", "tag": "worker 1", "line": "x", "sipnat_worker": 1})
    untag()
    publisher({"log_format": "after"})
    assert written == ["[worker 0] STUN server on UDP 127.0.0.1:3478", "[worker 1] x", "after"]


def test_the_lines_a_pool_relays_carry_the_event_key_and_the_worker_index() -> None:
    events: List[Dict[str, Any]] = []
    logger = workers.WorkerOutputLogger(namespace="twisted_sipnat.workers", observer=events.append)
    logger.info("[{tag}] {line}", tag="worker 3", line="hello", stream="stdout")
    (event,) = events
    assert (event["sipnat_event"], event["sipnat_worker"]) == ("worker.output", 3)


@pytest.mark.timeout(90)
def test_every_line_of_a_two_worker_stun_role_carries_a_worker_id() -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind((LOOPBACK, 0))
    port = probe.getsockname()[1]
    probe.close()
    process = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "--logfile=-",
         "sipnat", "stun", f"--udp=udp:{port}:interface={LOOPBACK}", "--workers=2"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    lines: List[str] = []
    try:
        assert process.stdout is not None
        end = time.monotonic() + 45
        while time.monotonic() < end:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if "[worker 1] [twisted_sipnat.stun#info] STUN server on UDP" in line:
                break
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=30)
        lines += rest.splitlines()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    ours = [line for line in lines if "[twisted_sipnat." in line]
    assert any("[worker 1] [twisted_sipnat.stun#info] STUN server on UDP" in line for line in ours), lines
    assert any("[twisted_sipnat.stun#info] [worker 0] STUN server on UDP" in line for line in ours), lines
    untagged = [line for line in ours if "[worker " not in line]
    assert untagged == [], lines
    assert not any("Starting protocol" in line or "Starting factory" in line for line in lines), lines
