"""
twisted_sipnat.reuseport: SO_REUSEPORT sockets adopted by the reactor, the worker pool's life cycle (a Clock and
a recording process reactor), and the arguments a worker is started with.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any, Dict, List, Optional, Tuple

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from twisted_sipnat import reuseport
from twisted_sipnat.reuseport import WorkerPool, listenUDPReusePort, reusePortSocket, workerArguments

LOOPBACK = "127.0.0.1"


def test_two_sockets_share_a_port_only_with_so_reuseport() -> None:
    first = reusePortSocket(0, LOOPBACK)
    try:
        port = first.getsockname()[1]
        second = reusePortSocket(port, LOOPBACK)
        try:
            assert second.getsockname() == (LOOPBACK, port)
            assert not second.getblocking()
        finally:
            second.close()
        plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            with pytest.raises(OSError):
                plain.bind((LOOPBACK, port))
        finally:
            plain.close()
    finally:
        first.close()


def test_an_ipv6_interface_gives_an_ipv6_socket() -> None:
    try:
        sock = reusePortSocket(0, "::1")
    except OSError as e:  # a host without IPv6 loopback: say what happened, do not pretend
        pytest.fail(f"cannot bind ::1 on this host: {e}")
    try:
        assert sock.family == socket.AF_INET6
    finally:
        sock.close()


class Recorder(DatagramProtocol):
    def __init__(self) -> None:
        self.received: List[Tuple[bytes, Any]] = []
        self.arrived: Optional[defer.Deferred[None]] = None

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.received.append((datagram, addr))
        if self.arrived is not None and not self.arrived.called:
            self.arrived.callback(None)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_the_kernel_spreads_flows_over_adopted_ports_and_keeps_each_flow_on_one() -> None:
    from twisted.internet import reactor

    first, second = Recorder(), Recorder()
    portA = listenUDPReusePort(reactor, 0, first, LOOPBACK)
    number = portA.getHost().port
    portB = listenUDPReusePort(reactor, number, second, LOOPBACK)
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(64)]
    try:
        assert portB.getHost().port == number
        for _ in range(2):  # every flow twice: it must land where it landed the first time
            for i, sender in enumerate(senders):
                sender.sendto(b"flow %d" % i, (LOOPBACK, number))
        deadline = reactor.seconds() + 5
        while len(first.received) + len(second.received) < 128 and reactor.seconds() < deadline:
            d: defer.Deferred[None] = defer.Deferred()
            reactor.callLater(0.01, d.callback, None)
            await d
        assert len(first.received) + len(second.received) == 128
        assert first.received and second.received  # 64 flows on one socket alone: chance 2**-63
        flowsA = {data for data, _ in first.received}
        flowsB = {data for data, _ in second.received}
        assert not flowsA & flowsB
    finally:
        for sender in senders:
            sender.close()
        await defer.gatherResults([defer.maybeDeferred(portA.stopListening),
                                   defer.maybeDeferred(portB.stopListening)])


def test_worker_arguments_reproduce_the_options_with_overrides() -> None:
    from twisted_sipnat.tap import STUNOptions

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
        proto.transport = transport
        self.spawned.append((proto, executable, list(args), env))
        return transport


def endWorker(proto: Any) -> None:
    from twisted.internet.error import ProcessTerminated

    proto.processEnded(Failure(ProcessTerminated(signal=15)))


def test_the_pool_starts_the_other_workers_restarts_a_dead_one_and_stops_them_all() -> None:
    clock = ProcessClock()
    pool = WorkerPool(clock, 3, lambda: ["-m", "twisted_sipnat.reuseport", "stun", "--reuse-port"],
                      env={"PATH": os.environ.get("PATH", "")}, executable=sys.executable)
    pool.startService()
    assert [args for _, _, args, _ in clock.spawned] == [
        [sys.executable, "-m", "twisted_sipnat.reuseport", "stun", "--reuse-port"]
    ] * 2
    assert sorted(env["TWISTED_SIPNAT_WORKER"] for _, _, _, env in clock.spawned) == ["1", "2"]
    assert sorted(pool.workers) == [1, 2]

    endWorker(clock.spawned[0][0])  # worker 1 dies
    assert sorted(pool.workers) == [2]
    clock.advance(reuseport.RESTART_DELAY)
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
    clock.advance(reuseport.STOP_GRACE)
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


# -- the twistd roles with --workers ----------------------------------------------------------------------------


def parseRole(argv: List[str]) -> Any:
    from twisted_sipnat.tap import Options, buildService

    options = Options()
    options.parseOptions(argv)
    return buildService(options, ProcessClock())


@pytest.mark.parametrize("role", ["stun", "edge"])
def test_one_worker_is_the_role_itself_and_more_add_a_pool(role: str) -> None:
    from twisted_sipnat.roles import EdgeRole, STUNRole

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
    repo = Path(__file__).resolve().parents[1]
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
    assert "Traceback" not in output, output


def test_a_worker_asked_to_stop_twice_stops_once() -> None:
    """SIGTERM from the pool and from a supervisor signalling the process group: one reactor.stop()."""

    class Reactor:
        running = True
        stops = 0

        def stop(self) -> None:
            self.stops += 1

    reactor = Reactor()
    stop = reuseport._stopper(reactor)
    stop()
    stop()
    assert reactor.stops == 1
    idle = Reactor()
    idle.running = False
    reuseport._stopper(idle)()
    assert idle.stops == 0
