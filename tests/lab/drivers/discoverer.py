"""
Lab driver: RFC 5780 NAT behaviour discovery (``NATTraversalController.discoverNATBehaviour``) from one SIP
socket (a ``SharedDatagramProtocol`` on a real UDP port), run in a namespace — normally ``lan``, behind the NAT.

``python discoverer.py --bind HOST:PORT --settings JSON`` (``NATSettings`` keyword arguments, e.g. a short
``rto``); JSON lines on stdin, JSON events on stdout, each with ``"t"`` = ``time.monotonic()``:

- ``{"cmd": "discover", "server": [h, p], "retransmissions": n}`` → ``discovered`` (``mapping``, ``filtering``,
  ``mappedAddress``, ``otherAddress``, ``localAddress``, ``natPresent``, ``duration``) or ``discoverError``
  (``type``, ``message``);
- ``{"cmd": "received"}`` → ``received`` (``sources``: datagrams received per ``"host:port"`` so far — which of
  the server's addresses actually got an answer through the NAT);
- ``{"cmd": "quit"}`` → ``bye``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections import Counter
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet import reactor as _reactor
from twisted.internet import stdio
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from twisted_sipnat import NATSettings, NATTraversalController, SharedDatagramProtocol

reactor: Any = _reactor


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.monotonic(), **fields}) + "\n")
    sys.stdout.flush()


def pair(address: Any) -> Optional[List[Any]]:
    return None if address is None else [address[0], address[1]]


class Discoverer(LineReceiver):
    delimiter = b"\n"

    def __init__(self, settings: NATSettings, bind: Tuple[str, int]) -> None:
        self.controller = NATTraversalController(settings, reactor=reactor)
        self.shared = SharedDatagramProtocol(controller=self.controller)
        self.port = reactor.listenUDP(bind[1], self.shared, interface=bind[0])
        self.sources: Counter[str] = Counter()
        receive = self.shared.datagramReceived

        def counting(data: bytes, addr: Any) -> None:
            self.sources[f"{addr[0]}:{addr[1]}"] += 1
            receive(data, addr)

        self.shared.datagramReceived = counting  # type: ignore[method-assign,assignment]

    def local(self) -> List[Any]:
        host = self.port.getHost()
        return [host.host, host.port]

    def discover(self, command: Dict[str, Any]) -> None:
        server = (command["server"][0], int(command["server"][1]))
        started = time.monotonic()
        d = self.controller.discoverNATBehaviour(
            self.shared, server, retransmissions=int(command.get("retransmissions", 3))
        )

        def done(behaviour: Any) -> None:
            emit(
                "discovered",
                mapping=behaviour.mapping,
                filtering=behaviour.filtering,
                mappedAddress=pair(behaviour.mappedAddress),
                otherAddress=pair(behaviour.otherAddress),
                localAddress=pair(behaviour.localAddress),
                natPresent=behaviour.natPresent,
                duration=time.monotonic() - started,
            )

        def failed(reason: Failure) -> None:
            emit("discoverError", type=type(reason.value).__name__, message=str(reason.value),
                 duration=time.monotonic() - started)

        d.addCallbacks(done, failed)

    def lineReceived(self, line: bytes) -> None:
        try:
            command = json.loads(line)
            name = command["cmd"]
            if name == "discover":
                self.discover(command)
            elif name == "received":
                emit("received", sources=dict(self.sources))
            elif name == "quit":
                emit("bye")
                reactor.stop()
            else:
                emit("error", message=f"unknown command {name!r}")
        except Exception as e:  # a driver reports its own bugs as events rather than dying silently
            emit("error", message=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        if reactor.running:
            reactor.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", default="0.0.0.0:0")
    parser.add_argument("--settings", default="{}", help="NATSettings keyword arguments as JSON")
    args = parser.parse_args()
    host, _, port = args.bind.rpartition(":")
    discoverer = Discoverer(NATSettings(**json.loads(args.settings)), (host, int(port)))
    stdio.StandardIO(discoverer)
    emit("ready", local=discoverer.local())
    reactor.run()


if __name__ == "__main__":
    main()
