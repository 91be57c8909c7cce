"""
What the benchmarks share: peers started as child processes, readiness probes, percentiles, CPU and memory.

A peer (our STUN responder, coturn, the load generator) always runs in its own process, so the process being
measured pays only for its own work, and on a multi-core machine the two do not take turns on one core.  Every
child is started in its own session and stopped by its process id, never by name.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "tests" / "interop"):  # the library, and the peer helpers the interop tests use
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import peerkit  # noqa: E402

HostPort = Tuple[str, int]
LOOPBACK = "127.0.0.1"
MAGIC_COOKIE = 0x2112A442


def bindingRequest(transactionId: bytes) -> bytes:
    """The smallest Binding request: a 20-byte header (RFC 8489 §5), no attributes."""
    return struct.pack("!HHI", 0x0001, 0, MAGIC_COOKIE) + transactionId


def freeUDPPort(host: str = LOOPBACK) -> int:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
    finally:
        probe.close()


def waitForSTUN(server: HostPort, deadline: float = 10.0) -> None:
    """Poll ``server`` with a Binding request until a response with the same transaction ID comes back."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.2)
    end = time.monotonic() + deadline
    try:
        while time.monotonic() < end:
            tid = os.urandom(12)
            sock.sendto(bindingRequest(tid), server)
            try:
                data, _ = sock.recvfrom(2048)
            except (TimeoutError, ConnectionRefusedError):
                continue
            if data[8:20] == tid:
                return
    finally:
        sock.close()
    raise RuntimeError(f"no STUN server answered on {server[0]}:{server[1]} within {deadline} s")


class Child:
    """A child process in its own session, stopped by its pid (SIGTERM, then SIGKILL)."""

    def __init__(
        self, argv: Sequence[str], name: str, env: Optional[Dict[str, str]] = None, cpus: Optional[Sequence[int]] = None
    ) -> None:
        self.name = name
        self.argv = list(argv)
        affinity = set(cpus) if cpus is not None else None
        self.process = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, env=env,
            preexec_fn=(lambda: os.sched_setaffinity(0, affinity)) if affinity else None,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpuSeconds(self) -> float:
        """user + system CPU of the child and of the children it waited for (its workers), from /proc."""
        return _procCPU(self.pid) + sum(_procCPU(pid) for pid in _childPids(self.pid))

    def stop(self) -> str:
        """Stop the child and the workers it forked (its process group); returns what it printed."""
        peerkit.stopProcessGroup(self.process, grace=5.0)
        out = self.process.stdout.read() if self.process.stdout is not None else b""
        return out.decode("utf-8", "replace")


def _procCPU(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    # fields[11], fields[12]: utime, stime (the 14th and 15th of stat, counted after the command name)
    return (int(fields[11]) + int(fields[12])) / ticks


def _childPids(pid: int) -> List[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def startResponder(
    workers: int = 1, host: str = LOOPBACK, port: Optional[int] = None, cpus: Optional[Sequence[int]] = None
) -> Tuple[Child, HostPort]:
    """
    Our STUN server role (``twistd -n sipnat stun``, no rate limit) on ``host`` in child processes, with
    ``workers`` processes sharing the port through SO_REUSEPORT when ``workers > 1``; ``cpus`` pins them.
    """
    port = port or freeUDPPort(host)
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
            "sipnat", "stun", f"--udp=udp:{port}:interface={host}", "--no-rate-limit"]
    if workers != 1:
        argv.append(f"--workers={workers}")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = Child(argv, f"responder x{workers}", env=env, cpus=cpus)
    try:
        waitForSTUN((host, port))
    except BaseException:
        print(child.stop(), file=sys.stderr)
        raise
    return child, (host, port)


def percentile(sortedValues: Sequence[float], fraction: float) -> float:
    if not sortedValues:
        return float("nan")
    index = min(len(sortedValues) - 1, max(0, int(round(fraction * (len(sortedValues) - 1)))))
    return sortedValues[index]


def rssBytes() -> int:
    """The resident set size of this process, from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def cpuSeconds() -> float:
    """user + system CPU time of this process (all threads)."""
    return time.process_time()


def pinCPUs() -> Tuple[Optional[List[int]], Optional[List[int]]]:
    """
    On a machine with two or more CPUs: pin this process to the first and return ``([first], [the others])``
    for peers, so the measured process has a core of its own and no peer preempts it mid-``sendto``.
    """
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None, None
    os.sched_setaffinity(0, {available[0]})
    return [available[0]], available[1:]
