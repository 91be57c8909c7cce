"""
Lab driver with no library code: a UDP socket that answers nothing (a next hop without STUN, as a registrar
without RFC 5626 outbound support is for keepalives), run in ``pub``.

``python udpsink.py --listen HOST:PORT``; prints ``ready``, then one ``datagram`` event per datagram received:
``from`` (the NAT's public address and port for it) and ``kind``: ``"stun"`` (a STUN message, RFC 7983 first
byte 0-3 and the magic cookie), ``"crlf"`` (exactly CRLFCRLF, an RFC 5626 §4.4.1 keepalive) or ``"other"``.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from typing import Any

MAGIC_COOKIE = b"\x21\x12\xa4\x42"


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.monotonic(), **fields}) + "\n")
    sys.stdout.flush()


def kindOf(data: bytes) -> str:
    if data == b"\r\n\r\n":
        return "crlf"
    if len(data) >= 20 and data[0] < 4 and data[4:8] == MAGIC_COOKIE:
        return "stun"
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, int(port)))
    emit("ready", local=list(sock.getsockname()))
    while True:
        data, source = sock.recvfrom(65535)
        emit("datagram", **{"from": list(source), "kind": kindOf(data), "size": len(data)})


if __name__ == "__main__":
    main()
