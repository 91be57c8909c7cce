"""
Connection floods against a role running in its own process under a given open-file limit, over real loopback
sockets: what ``tests/security/test_stream_floods.py`` and ``benchmarks/edge_floods.py`` share.

The role runs as ``python -m twisted_sipnat.service.worker ROLE ...`` (the role in the foreground, as a worker
of ``--workers`` does), after ``resource.setrlimit(RLIMIT_NOFILE, (soft, hard))`` in the child.  Every child is
stopped by its process id.  Plain blocking sockets play the clients, so the flood costs the server what it
would cost from the network.
"""

from __future__ import annotations

import os
import resource
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from typing import IO, List, Optional, Sequence

LOOPBACK = "127.0.0.1"

_BOOT = """
import resource, sys
soft, hard = int(sys.argv[1]), int(sys.argv[2])
if hard < 0:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
from twisted_sipnat.service.worker import main
sys.exit(main(sys.argv[3:]))
"""


def raiseOwnFileLimit(needed: int) -> None:
    """The flooding process needs a descriptor per connection too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, needed) if hard != resource.RLIM_INFINITY else needed,
                                                    hard))


def freeTCPPort() -> int:
    probe = socket.socket()
    try:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])
    finally:
        probe.close()


class Role:
    """A role in a child process: ``pid``, its log file, :meth:`rssKiB`, :meth:`stop`."""

    def __init__(self, argv: Sequence[str], soft: int = 1024, hard: Optional[int] = None,
                 checkout: Optional[str] = None) -> None:
        self.log: IO[bytes] = tempfile.TemporaryFile()
        env = dict(os.environ, PYTHONPATH=checkout) if checkout else None  # another checkout's code (a baseline)
        self.process = subprocess.Popen(
            [sys.executable, "-c", _BOOT, str(soft), str(-1 if hard is None else hard), *argv],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=checkout,
        )
        self.pid = self.process.pid

    def rssKiB(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait(10)
        self.log.close()


def edge(port: int, soft: int = 1024, hard: Optional[int] = None, extra: Sequence[str] = (),
         checkout: Optional[str] = None) -> Role:
    return Role(["edge", "--udp", "udp:0:interface=127.0.0.1", "--tcp", f"tcp:{port}:interface=127.0.0.1",
                 "--domain", "example.com", *extra], soft, hard, checkout)


def stun(port: int, soft: int = 1024, hard: Optional[int] = None, extra: Sequence[str] = (),
         checkout: Optional[str] = None) -> Role:
    return Role(["stun", "--udp", "udp:0:interface=127.0.0.1", "--tcp", f"tcp:{port}:interface=127.0.0.1", *extra],
                soft, hard, checkout)


def bindingAnswered(port: int, timeout: float = 5.0) -> bool:
    """Connect, send a Binding request over TCP, and whether a success response came back in time."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
            sock.sendall(bindingRequest())
            return sock.recv(2048)[:2] == b"\x01\x01"
    except OSError:
        return False


def registerRequest(index: int) -> bytes:
    """A REGISTER for the domain the flood's edge serves (RFC 3261 §10.2), Content-Length 0."""
    user = f"user{index}"
    return (
        f"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK{index:08d}{os.getpid()}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:{user}@example.com>;tag={index}\r\nTo: <sip:{user}@example.com>\r\n"
        f"Call-ID: {index}-{os.getpid()}@127.0.0.1\r\nCSeq: 1 REGISTER\r\n"
        f"Contact: <sip:{user}@127.0.0.1:5999;transport=tcp>\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def registerAnswered(port: int, index: int, timeout: float = 5.0) -> bool:
    """Connect, REGISTER, and whether a 200 came back within ``timeout`` (whatever its headers)."""
    sock = socket.socket()
    sock.settimeout(timeout)
    end = time.monotonic() + timeout
    try:
        sock.connect((LOOPBACK, port))
        sock.sendall(registerRequest(index))
        data = b""
        while b"\r\n\r\n" not in data and time.monotonic() < end:
            sock.settimeout(max(0.01, end - time.monotonic()))
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.startswith(b"SIP/2.0 200")
    except OSError:
        return False
    finally:
        sock.close()


def waitForEdge(port: int, role: Role, deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if role.process.poll() is not None:
            raise RuntimeError(f"the role exited: {role.output()}")
        if registerAnswered(port, 999999, timeout=1.0):
            return
        time.sleep(0.1)
    raise RuntimeError(f"the edge never answered: {role.output()}")


def bindingRequest(length: int = 0) -> bytes:
    return struct.pack("!HHI", 0x0001, length, 0x2112A442) + os.urandom(12)


def waitForSTUN(port: int, role: Role, deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if role.process.poll() is not None:
            raise RuntimeError(f"the role exited: {role.output()}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1.0) as sock:
                sock.sendall(bindingRequest())
                if sock.recv(2048)[:2] == b"\x01\x01":
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the STUN server never answered: {role.output()}")


def openConnections(port: int, count: int, payload: bytes = b"", timeout: float = 5.0,
                    batch: int = 40) -> List[socket.socket]:
    """
    ``count`` connections, each sending ``payload`` (then nothing more).  They are opened ``batch`` at a time
    with non-blocking connects, so that the listen backlog (Twisted's is 50) does not overflow into SYN
    retransmissions; a connect that fails is tried again, up to three times, then skipped.
    """
    socks: List[socket.socket] = []
    for _attempt in range(3):
        wanted = count - len(socks)
        for start in range(0, wanted, batch):
            group = []
            for _ in range(min(batch, wanted - start)):
                sock = socket.socket()
                sock.setblocking(False)
                sock.connect_ex((LOOPBACK, port))
                group.append(sock)
            selector = selectors.DefaultSelector()
            for sock in group:
                selector.register(sock, selectors.EVENT_WRITE)
            pending, end = len(group), time.monotonic() + timeout
            while pending and time.monotonic() < end:
                for key, _ in selector.select(0.2):
                    selector.unregister(key.fileobj)
                    pending -= 1
            selector.close()
            for sock in group:
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0 or not _connected(sock):
                    sock.close()
                    continue
                sock.settimeout(timeout)
                try:
                    if payload:
                        sock.sendall(payload)
                except OSError:
                    sock.close()
                    continue
                socks.append(sock)
            time.sleep(0.005)
        if len(socks) >= count:
            break
    return socks


def _connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


def stillOpen(socks: Sequence[socket.socket]) -> int:
    """How many of ``socks`` the server has not closed (no EOF, no reset)."""
    alive = 0
    for sock in socks:
        sock.setblocking(False)  # a timeout would make recv wait for data first
        try:
            data = sock.recv(65536, socket.MSG_PEEK)
        except BlockingIOError:
            alive += 1
            continue
        except OSError:
            continue
        if data:
            alive += 1
    return alive


def closeAll(socks: Sequence[socket.socket]) -> None:
    for sock in socks:
        sock.close()


def slowlorisHeader(size: int = 61 * 1024) -> bytes:
    """A REGISTER whose header block stops after ``size`` bytes, never to be finished."""
    start = b"REGISTER sip:example.com SIP/2.0\r\nX-Pad: "
    return start + b"a" * (size - len(start))
