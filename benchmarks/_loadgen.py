"""
A STUN load generator, run as its own process: pre-built Binding requests from many UDP sockets (so a server
with ``SO_REUSEPORT`` workers sees many flows), each socket keeping ``--window`` requests outstanding.  Prints one
JSON line: answers received in the measured window, its length, and the CPU the server's processes (``--pids``,
with their children) used in it, read from /proc at the window's edges.

    python benchmarks/_loadgen.py HOST PORT [--sockets 32] [--window 8] [--warmup 1] [--duration 5] [--pids P,..]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

from twisted_sipnat import stun  # noqa: E402


def serverCPU(pids: List[int]) -> Dict[int, float]:
    """CPU seconds so far of each server process (the given ones and their children), by pid."""
    found: Dict[int, float] = {}
    for pid in pids:
        for each in [pid] + _common._childPids(pid):
            found[each] = _common._procCPU(each)
    return found


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--sockets", type=int, default=32)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--pids", default="")
    args = parser.parse_args(argv)
    pids = [int(p) for p in args.pids.split(",") if p]

    # What a keepalive looks like on the wire: header + FINGERPRINT (the server checks the CRC and answers with one).
    requests = [stun.encodeBindingRequest(os.urandom(12)) for _ in range(256)]
    socks: Dict[int, socket.socket] = {}
    received: Dict[int, int] = {}
    poller = select.epoll()
    for _ in range(args.sockets):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.connect((args.host, args.port))
        s.setblocking(False)
        socks[s.fileno()] = s
        received[s.fileno()] = 0
        poller.register(s.fileno(), select.EPOLLIN)

    def send(s: socket.socket, n: int) -> None:
        for i in range(n):
            try:
                s.send(requests[i & 255])
            except (BlockingIOError, ConnectionRefusedError):
                return

    for s in socks.values():
        send(s, args.window)
    start = time.monotonic()
    measureFrom = start + args.warmup
    measureTo = measureFrom + args.duration
    counted = 0
    cpu0: Optional[Dict[int, float]] = None
    t0 = start
    lastTopUp = start
    seenAtTopUp = dict(received)
    while True:
        now = time.monotonic()
        if cpu0 is None and now >= measureFrom:
            cpu0, counted, t0 = serverCPU(pids), 0, now
        if now >= measureTo:
            break
        for fd, _ in poller.poll(0.05):
            s = socks[fd]
            n = 0
            while True:
                try:
                    s.recv(2048)
                except (BlockingIOError, ConnectionRefusedError):
                    break
                n += 1
            received[fd] += n
            counted += n
            send(s, n)
        if now - lastTopUp > 0.1:  # a request the server dropped shrinks the window: refill quiet sockets
            for fd, s in socks.items():
                if received[fd] == seenAtTopUp[fd]:
                    send(s, args.window)
            seenAtTopUp = dict(received)
            lastTopUp = now
    elapsed = time.monotonic() - t0
    cpu1 = serverCPU(pids)
    perProcess = [cpu1[pid] - (cpu0 or {}).get(pid, 0.0) for pid in sorted(cpu1)]
    print(json.dumps({"answers": counted, "seconds": elapsed, "serverCPU": sum(perProcess),
                      "perProcessCPU": perProcess}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
