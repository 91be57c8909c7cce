"""
Codec throughput: twisted_sipnat.core.stun against aioice.stun and a raw ``struct`` floor, in the same run.

The message is a signed (MESSAGE-INTEGRITY), fingerprinted Binding success response carrying
XOR-MAPPED-ADDRESS and SOFTWARE -- what a client decodes for every keepalive answer and a server encodes for
every request.  Like is compared with like:

- decode: aioice's ``parse_message`` parses every attribute and checks FINGERPRINT but not the HMAC, so ours
  is ``decode()`` + ``verifyFingerprint()``;
- decode+verify: both of the above plus the HMAC check (aioice: ``check_message_integrity``);
- encode: build the message object from its parts and serialise it with integrity and fingerprint (aioice:
  ``Message(...)``, ``add_message_integrity``, ``bytes()``); the template fast path
  (``encodeBindingRequest``) is reported on its own, for a Binding request, with no aioice counterpart;
- raw: a hand-written ``struct`` parse of the same bytes (header, attribute walk, XOR address, CRC) -- the
  floor no general codec beats.

Usage: ``python benchmarks/codec.py [--size N] [--repeat R]`` (defaults finish well under a minute).
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import time
import zlib
from pathlib import Path
from typing import Callable, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twisted_sipnat import stun  # noqa: E402

try:
    from aioice import stun as aiostun
except ImportError:  # pragma: no cover - the benchmark says so instead of failing
    aiostun = None  # type: ignore[assignment]

KEY = b"VOkJxbRl1RmTxUk/WvJxBt"
TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
HOST, PORT = "192.0.2.1", 32853
SOFTWARE = "twisted_sipnat/0.1.0"


def ours() -> stun.Message:
    return stun.Message(
        stun.BINDING, stun.SUCCESS, TID, [stun.XorMappedAddress(HOST, PORT), stun.Software(SOFTWARE)]
    )


DATA = ours().encode(KEY)


def rawParse(data: bytes) -> tuple[str, int]:
    """The floor: header, attribute walk, XOR-MAPPED-ADDRESS and the CRC, nothing general."""
    msgType, length, cookie, tid = struct.unpack_from("!HHI12s", data)
    if cookie != 0x2112A442 or length + 20 != len(data):
        raise ValueError("not STUN")
    pos, n = 20, len(data)
    host, port = "", 0
    while pos < n:
        atype, alen = struct.unpack_from("!HH", data, pos)
        if atype == 0x0020:
            port, addr = struct.unpack_from("!2xHI", data, pos + 4)
            host = socket.inet_ntoa(struct.pack("!I", addr ^ 0x2112A442))
            port ^= 0x2112
        elif atype == 0x8028:
            if zlib.crc32(data[:pos]) ^ 0x5354554E != struct.unpack_from("!I", data, pos + 4)[0]:
                raise ValueError("bad fingerprint")
        pos += 4 + alen + (-alen & 3)
    return host, port


def measure(functions: Dict[str, Callable[[], object]], size: int, repeat: int) -> Dict[str, float]:
    """
    Best-of-``repeat`` rate (operations per second) of each function.  The functions take turns within each
    round, so a noisy neighbour on a shared machine slows every contender alike rather than one of them.
    """
    best = dict.fromkeys(functions, float("inf"))
    for _ in range(repeat):
        for name, fn in functions.items():
            start = time.perf_counter()
            for _ in range(size):
                fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: size / elapsed for name, elapsed in best.items()}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=50_000, help="operations per timing run (default 50000)")
    parser.add_argument("--repeat", type=int, default=5, help="timing runs, best one counts (default 5)")
    args = parser.parse_args(argv)
    size, repeat = args.size, args.repeat

    # Sanity: every codec reads the same thing from the same bytes.
    m = stun.decode(DATA)
    assert m.mappedAddress == (HOST, PORT) and m.verifyIntegrity(KEY) and m.verifyFingerprint()
    assert rawParse(DATA) == (HOST, PORT)

    def decodeOurs() -> object:
        msg = stun.decode(DATA)
        if not msg.verifyFingerprint():
            raise AssertionError
        return msg.mappedAddress

    def decodeVerifyOurs() -> object:
        msg = stun.decode(DATA)
        if not (msg.verifyFingerprint() and msg.verifyIntegrity(KEY)):
            raise AssertionError
        return msg.mappedAddress

    def encodeOurs() -> bytes:
        return ours().encode(KEY)

    def encodeFast() -> bytes:
        return stun.encodeBindingRequest(TID, SOFTWARE, None, KEY, True)

    functions: Dict[str, Callable[[], object]] = {
        "ours decode": decodeOurs,
        "ours decode+verify": decodeVerifyOurs,
        "ours encode": encodeOurs,
        "raw": lambda: rawParse(DATA),
        "fast request": encodeFast,
    }
    if aiostun is not None:
        aio = aiostun.parse_message(DATA)
        assert aio.attributes["XOR-MAPPED-ADDRESS"] == (HOST, PORT) and aio.check_message_integrity(KEY)

        def decodeAio() -> object:
            return aiostun.parse_message(DATA).attributes["XOR-MAPPED-ADDRESS"]

        def decodeVerifyAio() -> object:
            msg = aiostun.parse_message(DATA)
            if not msg.check_message_integrity(KEY):
                raise AssertionError
            return msg.attributes["XOR-MAPPED-ADDRESS"]

        def encodeAio() -> bytes:
            msg = aiostun.Message(
                aiostun.Method.BINDING,
                aiostun.Class.RESPONSE,
                TID,
                {"XOR-MAPPED-ADDRESS": (HOST, PORT), "SOFTWARE": SOFTWARE},
            )
            msg.add_message_integrity(KEY)
            return bytes(msg)

        functions.update(
            {"aioice decode": decodeAio, "aioice decode+verify": decodeVerifyAio, "aioice encode": encodeAio}
        )
    else:
        print("aioice is not installed: no comparison (pip install aioice)")

    print(f"message: {len(DATA)} bytes; {size} operations x best of {repeat}; Python {sys.version.split()[0]}")
    rates = measure(functions, size, repeat)
    print(f"{'operation':<16}{'twisted_sipnat':>16}{'aioice':>12}{'ratio':>8}")
    for name in ("decode", "decode+verify", "encode"):
        rate, other = rates[f"ours {name}"], rates.get(f"aioice {name}")
        if other:
            print(f"{name:<16}{rate:>14,.0f}/s{other:>10,.0f}/s{rate / other:>7.2f}x")
        else:
            print(f"{name:<16}{rate:>14,.0f}/s")
    raw, fast = rates["raw"], rates["fast request"]
    print(f"{'raw struct':<16}{raw:>14,.0f}/s  (floor; our decode runs at {rates['ours decode'] / raw:.2f}x of it)")
    print(f"{'fast request':<16}{fast:>14,.0f}/s  (encodeBindingRequest: signed, fingerprinted, from a template)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
