"""
Lab driver: twisted_sipnat's client side, run inside a network namespace (normally ``lan``, behind the NAT).

Started as ``python natclient.py --bind HOST:PORT --settings JSON``; reads JSON commands on stdin, one a line,
and writes JSON events on stdout, one a line, each with ``"t"`` = ``time.monotonic()`` (the same clock as the
test process).  Commands:

- ``{"cmd": "resolve", "nextHop": [h, p], "domain": "lab"}`` → ``resolved`` (``host``, ``port``, ``rtt``) or
  ``resolveError`` (``type``, ``message``);
- ``{"cmd": "keepalive", "nextHop": [h, p], "flowTimer": x|null, "transport": "udp"|"tcp"}`` → ``keepalive``
  (``started``: what ``refreshNATBinding`` returned);
- ``{"cmd": "connect", "host": h, "port": p}`` → ``connected`` (``local``: the TCP source address): one TCP
  connection through ``SharedStreamFactory``, used by ``keepalive`` with ``"transport": "tcp"``;
- ``{"cmd": "updateNextHop", "nextHop": [h, p], "transport": "udp"|"tcp"}`` → ``nextHopUpdated``;
- ``{"cmd": "sipSend", "text": "..."}``: the SIP side writes a message on the TCP connection (replies come
  back as ``sipData`` events; ``sipConnectionLost`` when the connection goes);
- ``{"cmd": "free"}`` → ``freed`` (``freeResources()``: keepalives stop);
- ``{"cmd": "stats"}`` → ``stats``: datagrams/bytes written and received, per peer, pings and pongs on TCP;
- ``{"cmd": "quit"}`` → ``bye`` and exit.

Flow failures arrive unasked as ``flowFailure`` events (``type``, ``message``, and ``old``/``new`` for
``MappedAddressChanged``).  The counters wrap the port's ``write`` and the protocol's receive method on the
instance, so they see exactly what crossed the socket, without reaching into the library.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from typing import Any, Dict, Optional, Tuple

from driverkit import CommandLines, emit
from twisted.internet import reactor as _reactor
from twisted.internet import stdio
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_sipnat import NATSettings, NATTraversalController, SharedDatagramProtocol, SharedStreamFactory
from twisted_sipnat.interfaces import IBindingObserver

reactor: Any = _reactor




def addressPair(address: Any) -> Optional[list]:
    if address is None:
        return None
    return [address.host, address.port]


@implementer(IBindingObserver)
class Observer:
    """Reports each flow failure as an event (the SIP stack would re-register here)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def flowFailure(self, reason: Failure) -> None:
        error = reason.value
        emit(
            "flowFailure",
            flow=self.name,
            type=type(error).__name__,
            message=str(error),
            old=addressPair(getattr(error, "old", None)),
            new=addressPair(getattr(error, "new", None)),
        )


class SIPSide(Protocol):
    """Stands in for a SIP stack's TCP protocol: reports what reaches it (only SIP bytes should)."""

    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        emit("sipData", text=data.decode("utf-8", "replace"))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        emit("sipConnectionLost", reason=reason.getErrorMessage() if reason is not None else None)


class Client:
    def __init__(self, settings: NATSettings, bind: Tuple[str, int]) -> None:
        self.controller = NATTraversalController(settings, reactor=reactor)
        self.shared = SharedDatagramProtocol(controller=self.controller)
        self.port = reactor.listenUDP(bind[1], self.shared, interface=bind[0])
        self.counts: Counter[str] = Counter()
        self.udpObserver = Observer("udp")
        self.tcpObserver = Observer("tcp")
        self.stream: Any = None
        self._countUDP()

    def _countUDP(self) -> None:
        """
        Count every datagram sent: the controller's go through ``writeKeepalive`` (which writes with the
        socket's ``sendto`` once the port has accepted a destination), the SIP stack's through the port.
        """
        write = self.port.write
        writeKeepalive = self.shared.writeKeepalive
        receive = self.shared.datagramReceived
        inKeepalive = [False]

        def count(addr: Any) -> None:
            self.counts["udpTx"] += 1
            if addr is not None:
                self.counts[f"udpTx:{addr[0]}:{addr[1]}"] += 1

        def countingWrite(data: bytes, addr: Any = None) -> Any:
            if not inKeepalive[0]:
                count(addr)
            return write(data, addr)

        def countingWriteKeepalive(data: bytes, addr: Any) -> None:
            count(addr)
            inKeepalive[0] = True
            try:
                writeKeepalive(data, addr)
            finally:
                inKeepalive[0] = False

        def countingReceive(data: bytes, addr: Any) -> None:
            self.counts["udpRx"] += 1
            self.counts[f"udpRx:{addr[0]}:{addr[1]}"] += 1
            receive(data, addr)

        self.port.write = countingWrite  # type: ignore[method-assign]
        self.shared.writeKeepalive = countingWriteKeepalive  # type: ignore[method-assign]
        self.shared.datagramReceived = countingReceive  # type: ignore[method-assign]

    def local(self) -> list:
        host = self.port.getHost()
        return [host.host, host.port]

    def resolve(self, command: Dict[str, Any]) -> None:
        nextHop = tuple(command["nextHop"])
        started = time.monotonic()
        d = self.controller.resolvePublicAddress(command.get("domain", "lab"), self.shared, nextHop)

        def done(address: Any) -> None:
            emit("resolved", host=address.host, port=address.port, rtt=time.monotonic() - started, local=self.local())

        def failed(reason: Failure) -> None:
            emit("resolveError", type=type(reason.value).__name__, message=str(reason.value), local=self.local())

        d.addCallbacks(done, failed)

    def keepalive(self, command: Dict[str, Any]) -> None:
        nextHop = tuple(command["nextHop"]) if command.get("nextHop") else None
        flowTimer = command.get("flowTimer")
        if command.get("transport", "udp") == "tcp":
            if self.stream is None:
                emit("error", message="keepalive over tcp before connect")
                return
            started = self.controller.refreshNATBinding(self.stream, self.tcpObserver, nextHop, flowTimer)
        else:
            started = self.controller.refreshNATBinding(self.shared, self.udpObserver, nextHop, flowTimer)
        emit("keepalive", started=bool(started), transport=command.get("transport", "udp"))

    def connect(self, command: Dict[str, Any]) -> None:
        factory = SharedStreamFactory(ClientFactory.forProtocol(SIPSide), controller=self.controller)
        endpoint = TCP4ClientEndpoint(reactor, command["host"], command["port"], timeout=5)

        def connected(protocol: Any) -> None:
            self.stream = protocol
            self._countTCP(protocol)
            local = protocol.transport.getHost()
            emit("connected", local=[local.host, local.port])

        def failed(reason: Failure) -> None:
            emit("error", message=f"connect failed: {reason.getErrorMessage()}")

        endpoint.connect(factory).addCallbacks(connected, failed)

    def _countTCP(self, protocol: Any) -> None:
        transport = protocol.transport
        write = transport.write
        receive = protocol.dataReceived

        def countingWrite(data: bytes) -> Any:
            self.counts["tcpTxBytes"] += len(data)
            self.counts["tcpPings"] += data.count(b"\r\n\r\n") if data.strip(b"\r\n") == b"" else 0
            return write(data)

        def countingReceive(data: bytes) -> Any:
            self.counts["tcpRxBytes"] += len(data)
            if data.strip(b"\r\n") == b"":
                self.counts["tcpPongs"] += data.count(b"\r\n")
            return receive(data)

        transport.write = countingWrite
        protocol.dataReceived = countingReceive

    def updateNextHop(self, command: Dict[str, Any]) -> None:
        observer = self.tcpObserver if command.get("transport", "udp") == "tcp" else self.udpObserver
        self.controller.updateNextHop(tuple(command["nextHop"]), observer)
        emit("nextHopUpdated", nextHop=command["nextHop"])

    def sipSend(self, command: Dict[str, Any]) -> None:
        if self.stream is None:
            emit("error", message="sipSend before connect")
            return
        self.stream.wrappedProtocol.transport.write(command["text"].encode("utf-8"))
        emit("sipSent")

    def free(self) -> None:
        self.controller.freeResources()
        emit("freed")

    def stats(self) -> None:
        emit("stats", counts=dict(self.counts), local=self.local())


class Commands(CommandLines):
    def __init__(self, client: Client) -> None:
        super().__init__({
            "resolve": client.resolve,
            "keepalive": client.keepalive,
            "connect": client.connect,
            "updateNextHop": client.updateNextHop,
            "sipSend": client.sipSend,
            "free": lambda command: client.free(),
            "stats": lambda command: client.stats(),
        })


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", default="0.0.0.0:0")
    parser.add_argument("--settings", default="{}", help="NATSettings keyword arguments as JSON")
    args = parser.parse_args()
    host, _, port = args.bind.rpartition(":")
    client = Client(NATSettings(**json.loads(args.settings)), (host, int(port)))
    stdio.StandardIO(Commands(client))
    emit("ready", local=client.local())
    reactor.run()


if __name__ == "__main__":
    main()
