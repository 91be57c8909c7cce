"""
twisted_sipnat.service.workers: the worker pool's life cycle (a Clock and a recording process reactor), the
arguments a worker is started with, the twistd roles with ``--workers``, and a worker's own stop.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any, Dict, List, Tuple

import pytest
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from twisted_sipnat.service import workers
from twisted_sipnat.service.workers import WorkerPool, workerArguments

LOOPBACK = "127.0.0.1"


def test_worker_arguments_reproduce_the_options_with_overrides() -> None:
    from twisted_sipnat.service.options import STUNOptions

    options = STUNOptions()
    options.parseOptions(["--udp=udp:3478:interface=127.0.0.1", "--rate=5", "--no-rate-limit"])
    argv = workerArguments(options, {"udp": "udp:40000:interface=127.0.0.1", "tcp": None, "extra": "x"})
    assert "--udp=udp:40000:interface=127.0.0.1" in argv
    assert "--rate=5" in argv and "--no-rate-limit" in argv and "--extra=x" in argv
    assert not any(a.startswith("--tcp") for a in argv)
    again = STUNOptions()
    again.parseOptions([a for a in argv if a != "--extra=x"])
    assert again["udp"] == "udp:40000:interface=127.0.0.1" and again["no-rate-limit"]


class FakeProcessTransport:
    def __init__(self) -> None:
        self.signals: List[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class ProcessClock(Clock):
    """A Clock that records spawnProcess calls instead of starting anything."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: List[Tuple[Any, str, List[str], Dict[str, str]]] = []

    def spawnProcess(self, proto: Any, executable: str, args: List[str], env: Dict[str, str],
                     childFDs: Any = None) -> FakeProcessTransport:
        transport = FakeProcessTransport()
        proto.makeConnection(transport)  # as a real reactor does: the process protocol is connected
        self.spawned.append((proto, executable, list(args), env))
        return transport


def endWorker(proto: Any) -> None:
    from twisted.internet.error import ProcessTerminated

    proto.processEnded(Failure(ProcessTerminated(signal=15)))


def test_the_pool_starts_the_other_workers_restarts_a_dead_one_and_stops_them_all() -> None:
    clock = ProcessClock()
    pool = WorkerPool(clock, 3, lambda: ["-m", "twisted_sipnat.service.worker", "stun", "--reuse-port"],
                      env={"PATH": os.environ.get("PATH", "")}, executable=sys.executable)
    pool.startService()
    assert [args for _, _, args, _ in clock.spawned] == [
        [sys.executable, "-m", "twisted_sipnat.service.worker", "stun", "--reuse-port"]
    ] * 2
    assert sorted(env["TWISTED_SIPNAT_WORKER"] for _, _, _, env in clock.spawned) == ["1", "2"]
    assert sorted(pool.workers) == [1, 2]

    endWorker(clock.spawned[0][0])  # worker 1 dies
    assert sorted(pool.workers) == [2]
    clock.advance(workers.RESTART_DELAY)
    assert sorted(pool.workers) == [1, 2] and len(clock.spawned) == 3 and pool.restarts == 1

    stopped = pool.stopService()
    running = [clock.spawned[1][0], clock.spawned[2][0]]
    assert all(p.transport.signals == ["TERM"] for p in running)
    assert not stopped.called
    for proto in running:
        endWorker(proto)
    assert stopped.called and pool.workers == {}
    assert clock.getDelayedCalls() == []  # nothing restarts after the stop


def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace_period() -> None:
    clock = ProcessClock()
    pool = WorkerPool(clock, 2, lambda: ["-c", "pass"])
    pool.startService()
    (worker, _, _, _), = clock.spawned
    stopped = pool.stopService()
    assert worker.transport.signals == ["TERM"] and not stopped.called
    clock.advance(workers.STOP_GRACE)
    assert worker.transport.signals == ["TERM", "KILL"]
    endWorker(worker)
    assert stopped.called and clock.getDelayedCalls() == []


def test_a_restart_pending_at_stop_is_cancelled() -> None:
    clock = ProcessClock()
    pool = WorkerPool(clock, 2, lambda: ["-c", "pass"])
    pool.startService()
    endWorker(clock.spawned[0][0])
    assert len(clock.getDelayedCalls()) == 1
    stopped = pool.stopService()
    assert stopped.called and clock.getDelayedCalls() == []
    clock.advance(10)
    assert len(clock.spawned) == 1


def test_one_worker_means_no_child() -> None:
    clock = ProcessClock()
    pool = WorkerPool(clock, 1, lambda: ["-c", "pass"])
    pool.startService()
    assert clock.spawned == [] and pool.stopService().called


@pytest.mark.parametrize("count", [0, -1, 1.5, "2"])
def test_a_bad_worker_count_is_refused(count: Any) -> None:
    with pytest.raises(ValueError):
        WorkerPool(Clock(), count, lambda: [])


def parseRole(argv: List[str]) -> Any:
    from twisted_sipnat.tap import Options, buildService

    options = Options()
    options.parseOptions(argv)
    return buildService(options, ProcessClock())


@pytest.mark.parametrize("role", ["stun", "edge"])
def test_one_worker_is_the_role_itself_and_more_add_a_pool(role: str) -> None:
    from twisted_sipnat.service.edge import EdgeRole
    from twisted_sipnat.service.stunserver import STUNRole

    single: Any = parseRole([role, "--udp=udp:0:interface=127.0.0.1"])
    assert isinstance(single, (EdgeRole, STUNRole))
    listener: Any = getattr(single, "udp" if role == "edge" else "listener")
    assert listener.reusePort is False
    several = parseRole([role, "--udp=udp:0:interface=127.0.0.1", "--workers=3"])
    assert several.workers.count == 3
    listener = several.role.udp if role == "edge" else several.role.listener
    assert listener.reusePort is True
    assert parseRole([role, "--udp=udp:0", "--reuse-port"]).__class__ is single.__class__


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_a_bad_workers_value_is_refused_naming_the_option(value: str) -> None:
    from twisted_sipnat.errors import InvalidSettingsError

    with pytest.raises(InvalidSettingsError) as info:
        parseRole(["stun", f"--workers={value}"])
    assert "workers" in str(info.value)


def freePort() -> int:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind((LOOPBACK, 0))
    port = int(probe.getsockname()[1])
    probe.close()
    return port


def stunAnswers(port: int, flows: int, deadline: float) -> int:
    """Send a Binding request from ``flows`` sockets (retrying until ``deadline``); how many got an answer."""
    import time

    from twisted_sipnat import stun

    answered = 0
    end = time.monotonic() + deadline
    for _ in range(flows):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(0.2)
        try:
            while time.monotonic() < end:
                request = stun.encodeBindingRequest(os.urandom(12))
                sock.sendto(request, (LOOPBACK, port))
                try:
                    data, _ = sock.recvfrom(2048)
                except (TimeoutError, ConnectionRefusedError):
                    continue
                if data[8:20] == request[8:20]:
                    answered += 1
                    break
        finally:
            sock.close()
    return answered


def childPids(pid: int) -> List[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


@pytest.mark.timeout(60)
def test_twistd_stun_with_two_workers_answers_on_one_port_and_stops_its_worker() -> None:
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    port = freePort()
    repo = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "sipnat", "stun",
         f"--udp=udp:{port}:interface={LOOPBACK}", "--no-rate-limit", "--workers=2"],
        cwd=repo, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONPATH=str(repo)), start_new_session=True,
    )
    try:
        assert stunAnswers(port, 1, 20) == 1, "the first worker never answered"
        end = time.monotonic() + 20
        while time.monotonic() < end and not childPids(process.pid):
            time.sleep(0.1)
        workers = childPids(process.pid)
        assert len(workers) == 1, workers
        time.sleep(1.0)  # the second worker binds a moment after it starts
        assert stunAnswers(port, 32, 10) == 32
        process.send_signal(signal.SIGTERM)
        process.wait(20)
        end = time.monotonic() + 10
        while time.monotonic() < end and os.path.exists(f"/proc/{workers[0]}"):
            with open(f"/proc/{workers[0]}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            time.sleep(0.1)
        alive = os.path.exists(f"/proc/{workers[0]}")
        if alive:
            with open(f"/proc/{workers[0]}/stat") as f:
                alive = f.read().rsplit(")", 1)[1].split()[0] != "Z"
        assert not alive, "the worker outlived twistd"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        output = process.stdout.read().decode("utf-8", "replace") if process.stdout else ""
    assert "worker 1 of 2 started" in output, output
    assert "[worker 1] [twisted_sipnat.stun#info] STUN server on UDP" in output, "the worker's lines, tagged"
    assert "Traceback" not in output, output


def test_a_worker_asked_to_stop_twice_stops_once() -> None:
    """SIGTERM from the pool and from a supervisor signalling the process group: one reactor.stop()."""

    class Reactor:
        running = True
        stops = 0

        def stop(self) -> None:
            self.stops += 1

    reactor = Reactor()
    stop = workers.stopOnce(reactor)
    stop()
    stop()
    assert reactor.stops == 1
    idle = Reactor()
    idle.running = False
    workers.stopOnce(idle)()
    assert idle.stops == 0


def test_every_line_a_worker_writes_is_logged_with_its_index() -> None:
    from twisted.logger import formatEvent, globalLogPublisher

    events: List[Dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        clock = ProcessClock()
        pool = WorkerPool(clock, 3, lambda: ["-c", "pass"])
        pool.startService()
        second = pool.workers[2]
        second.outReceived(b"[twisted_sipnat.stun#info] STUN server on UDP 127.0.0.1:3478\n")
        second.errReceived(b"oops\n")
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [formatEvent(e) for e in events if e.get("log_namespace") == "twisted_sipnat.workers"]
    assert "[worker 2] [twisted_sipnat.stun#info] STUN server on UDP 127.0.0.1:3478" in lines
    assert "[worker 2] oops" in lines
    assert "worker 1 of 3 started" in lines and "worker 2 of 3 started" in lines


def test_a_worker_that_lived_starts_again_at_once_and_one_that_cannot_start_backs_off() -> None:
    clock = ProcessClock()
    pool = WorkerPool(clock, 2, lambda: ["-c", "pass"])
    pool.startService()
    clock.advance(10)
    endWorker(pool.workers[1])  # it ran 10 s: ProcessMonitor starts it again at once
    clock.advance(0)
    assert len(clock.spawned) == 2 and sorted(pool.workers) == [1]
    endWorker(pool.workers[1])  # died at once: 1 s, then 2 s, ...
    clock.advance(workers.RESTART_DELAY)
    assert len(clock.spawned) == 3
    endWorker(pool.workers[1])
    clock.advance(workers.RESTART_DELAY)
    assert len(clock.spawned) == 3, "the delay doubled"
    clock.advance(workers.RESTART_DELAY)
    assert len(clock.spawned) == 4 and pool.restarts == 3
    stopped = pool.stopService()
    endWorker(pool.workers[1])
    assert stopped.called and clock.getDelayedCalls() == []
