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
import time
from collections import Counter
from typing import Any, Dict, List, Optional, Tuple

from driverkit import CommandLines, emit
from twisted.internet import reactor as _reactor
from twisted.internet import stdio
from twisted.python.failure import Failure

from twisted_sipnat import NATSettings, NATTraversalController, SharedDatagramProtocol

reactor: Any = _reactor




def pair(address: Any) -> Optional[List[Any]]:
    return None if address is None else [address[0], address[1]]


class Discoverer(CommandLines):
    def __init__(self, settings: NATSettings, bind: Tuple[str, int]) -> None:
        super().__init__({
            "discover": self.discover,
            "received": lambda command: emit("received", sources=dict(self.sources)),
        })
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
