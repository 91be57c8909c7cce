"""
Lab driver with no library code at all: one UDP socket sending hand-built STUN Binding requests (peerkit), so
the lab's NAT behaviour (mapping, expiry, filtering) is established independently of twisted_sipnat.

``python rawstun.py --bind HOST:PORT``; commands on stdin, JSON lines:
``{"cmd": "binding", "server": [h, p], "timeout": s}`` → ``answer`` (``mapped``, ``software``, ``fingerprint``…)
or ``silence``; ``{"cmd": "listen", "timeout": s}`` → ``datagram`` (``from``) or ``silence`` (to see whether
unsolicited packets get through the NAT); ``{"cmd": "quit"}``.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from typing import Any

import peerkit


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.monotonic(), **fields}) + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", default="0.0.0.0:0")
    args = parser.parse_args()
    host, _, port = args.bind.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, int(port)))
    emit("ready", local=list(sock.getsockname()))
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        if command["cmd"] == "binding":
            server = (command["server"][0], int(command["server"][1]))
            try:
                answer, local = peerkit.stunUDP(server, sock=sock, timeout=float(command.get("timeout", 1.0)))
            except peerkit.PeerError as e:
                emit("silence", error=str(e))
            else:
                emit("answer", local=list(local), **answer.asDict())
        elif command["cmd"] == "listen":
            sock.settimeout(float(command.get("timeout", 1.0)))
            try:
                data, source = sock.recvfrom(2048)
            except TimeoutError:
                emit("silence")
            else:
                emit("datagram", **{"from": list(source), "size": len(data)})
        elif command["cmd"] == "quit":
            emit("bye")
            return
        else:
            emit("error", message=f"unknown command {command['cmd']!r}")


if __name__ == "__main__":
    main()
