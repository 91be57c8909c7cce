"""
What the lab drivers share: JSON-line events on stdout for the test to read, JSON-line commands on stdin.

A driver runs inside a network namespace as its own process; the test side (``netlab.Driver``) reads the events
with deadlines and writes the commands.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from typing import Any, Callable, Dict, Optional

from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

Command = Dict[str, Any]


def emit(event: str, **fields: Any) -> None:
    """One event line: ``{"event": ..., "t": monotonic seconds, ...fields}``."""
    sys.stdout.write(json.dumps({"event": event, "t": time.monotonic(), **fields}) + "\n")
    sys.stdout.flush()


def stopReactor() -> None:
    from twisted.internet import reactor

    if reactor.running:  # type: ignore[attr-defined]
        reactor.stop()  # type: ignore[attr-defined]


class CommandLines(LineReceiver):
    """
    Commands on stdin, one JSON object a line: ``{"cmd": NAME, ...}`` calls ``commands[NAME](command)``;
    ``quit`` says ``bye`` and stops the reactor, and so does the end of stdin.  A driver reports its own bugs as
    ``error`` events rather than dying silently.
    """

    delimiter = b"\n"

    def __init__(self, commands: Dict[str, Callable[[Command], Any]]) -> None:
        self.commands = commands

    def lineReceived(self, line: bytes) -> None:
        try:
            command = json.loads(line)
            name = command["cmd"]
            if name == "quit":
                emit("bye")
                stopReactor()
                return
            handler = self.commands.get(name)
            if handler is None:
                emit("error", message=f"unknown command {name!r}")
            else:
                handler(command)
        except Exception as e:
            emit("error", message=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        stopReactor()
