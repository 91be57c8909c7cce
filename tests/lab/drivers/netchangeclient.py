"""
Lab driver: drivers/natclient.py's client, plus what the network-change proofs need (``networkChanged`` and the
host-address watcher).  Started like natclient (``--bind HOST:PORT --settings JSON``); every natclient command
works (``resolve`` names the UDP flow's observer, so its result is the flow's baseline), and:

- ``{"cmd": "networkChanged"}`` → ``networkChanged``: ``controller.networkChanged()`` was called (its ``t`` is
  the instant just before the call, ``clock`` the controller's reactor time then);
- ``{"cmd": "watch", "interval": s}`` → ``watching``: a :class:`~twisted_sipnat.service.netwatch.NetworkWatcher`
  on this namespace's ``/proc/net`` whose callback emits ``hostNetworkChanged`` and then calls
  ``controller.networkChanged()`` (what the client role will do).

Log events of the library that carry one of :data:`REPORTED` as ``sipnat_event`` come out as ``log`` events
(``sipnat_event``, ``text``), so the test can count the "auto" fallback's one log line.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Dict, Optional

import natclient
from driverkit import emit
from natclient import Client, Commands
from twisted.internet import stdio
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from twisted_sipnat import NATSettings
from twisted_sipnat.service.netwatch import NetworkWatcher

REPORTED = frozenset({"keepalive.fallback", "sipnat.netwatch.changed", "flow.failure"})


def reportLogs(event: Dict[str, Any]) -> None:
    if event.get("sipnat_event") in REPORTED:
        emit("log", sipnat_event=event["sipnat_event"], text=formatEvent(event))


class NetChangeClient(Client):
    watcher: Optional[NetworkWatcher] = None

    def resolve(self, command: Dict[str, Any]) -> None:
        """
        natclient's ``resolve``, but for the UDP flow's observer: its result is the baseline the flow's
        keepalives are judged against from the first one (what a user agent that resolves, then registers, gets).
        """
        nextHop = tuple(command["nextHop"])
        started = time.monotonic()
        d = self.controller.resolvePublicAddress(command.get("domain", "lab"), self.shared, nextHop,
                                                 observer=self.udpObserver)

        def done(address: Any) -> None:
            emit("resolved", host=address.host, port=address.port, rtt=time.monotonic() - started, local=self.local())

        def failed(reason: Failure) -> None:
            emit("resolveError", type=type(reason.value).__name__, message=str(reason.value), local=self.local())

        d.addCallbacks(done, failed)

    def networkChanged(self) -> None:
        clock = natclient.reactor.seconds()
        emit("networkChanged", clock=clock)
        self.controller.networkChanged()

    def watch(self, command: Dict[str, Any]) -> None:
        def changed() -> None:
            emit("hostNetworkChanged")
            self.controller.networkChanged()

        self.watcher = NetworkWatcher(natclient.reactor, changed, interval=float(command["interval"]))
        self.watcher.startService()
        emit("watching", interval=self.watcher.interval)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", default="0.0.0.0:0")
    parser.add_argument("--settings", default="{}", help="NATSettings keyword arguments as JSON")
    args = parser.parse_args()
    host, _, port = args.bind.rpartition(":")
    globalLogPublisher.addObserver(reportLogs)
    client = NetChangeClient(NATSettings(**json.loads(args.settings)), (host, int(port)))
    commands = Commands(client)
    commands.commands["networkChanged"] = lambda command: client.networkChanged()
    commands.commands["watch"] = client.watch
    stdio.StandardIO(commands)
    emit("ready", local=client.local())
    natclient.reactor.run()


if __name__ == "__main__":
    main()
