"""
Lab driver: twisted_sipnat's own STUN responder role (``SharedDatagramProtocol(stunResponder=True)``), run in
the ``pub`` namespace as the server our client resolves against through the NAT.

``python responder.py --listen HOST:PORT``; prints ``{"event": "ready", "local": [h, p]}`` once bound, then one
``{"event": "request", "from": [h, p]}`` per datagram received (so the test sees the NAT's mapping from the
server's side too), and runs until the test stops it.
"""

from __future__ import annotations

import argparse
from typing import Any

from driverkit import emit
from twisted.internet import reactor as _reactor

from twisted_sipnat import SharedDatagramProtocol

reactor: Any = _reactor




def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    shared = SharedDatagramProtocol(stunResponder=True)
    receive = shared.datagramReceived

    def watching(data: bytes, addr: Any) -> None:
        emit("request", **{"from": [addr[0], addr[1]], "size": len(data)})
        receive(data, addr)

    shared.datagramReceived = watching  # type: ignore[method-assign]
    listening = reactor.listenUDP(int(port), shared, interface=host)
    local = listening.getHost()
    emit("ready", local=[local.host, local.port])
    reactor.run()


if __name__ == "__main__":
    main()
