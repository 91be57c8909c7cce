"""
Lab driver: a real ``twistd -n sipnat ROLE ...`` process (client, edge or stun), its log as JSON lines.

``python twistdrole.py ROLE [role options]`` runs exactly what an operator types,
``twistd -n --pidfile= --logger=twistdrole.observer sipnat ROLE [role options]``, in this process, so the roles
are exercised through the plugin, the option parsing and ``makeService``, not by constructing the classes.
The one addition is the log observer (``--logger``): instead of text lines, every log event is one JSON line on
stdout, the form the lab's :class:`netlab.Driver` reads:

``{"event": NAME, "t": monotonic, "level": ..., "namespace": ..., "text": formatted message, "fields": {...}}``

``NAME`` is the event's ``sipnat_event`` (the roles: ``sipnat.client.registered``, ``sipnat.edge.registered``,
``sipnat.client.flowFailure`` ...; the controller: ``keepalive.sent``, ``keepalive.answered``,
``public.address.changed``, ``flow.failure`` ...), else ``"log"``; ``fields`` holds the event's own keys
(``host``, ``port``, ``delay``, ``contact`` ...) made JSON-safe.  ``{"event": "ready"}`` is
printed once the reactor runs, i.e. after ``startService`` bound every socket.  SIGTERM stops it the way it
stops any twistd (services stopped, ports closed).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable, Dict

from twisted.logger import ILogObserver, formatEvent
from zope.interface import provider

_SCALARS = (str, int, float, bool, type(None))


def emit(record: Dict[str, Any]) -> None:
    # twistd replaces sys.stdout with a file that logs what is written to it; write to the real one.
    out = sys.__stdout__
    assert out is not None
    out.write(json.dumps(record) + "\n")
    out.flush()


def _plain(value: Any) -> Any:
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, _SCALARS) for v in value):
        return list(value)
    host, port = getattr(value, "host", None), getattr(value, "port", None)
    if isinstance(host, str) and isinstance(port, int):
        return [host, port]  # IPv4Address / IPv6Address
    return str(value)


def observer() -> Callable[[Dict[str, Any]], None]:
    """The ``--logger`` factory: an ``ILogObserver`` writing each event as one JSON line."""

    @provider(ILogObserver)
    def observe(event: Dict[str, Any]) -> None:
        level = event.get("log_level")
        record: Dict[str, Any] = {
            "event": event.get("sipnat_event") or "log",
            "t": time.monotonic(),
            "level": getattr(level, "name", str(level)),
            "namespace": event.get("log_namespace"),
            "text": formatEvent(event),
            "fields": {k: _plain(v) for k, v in event.items() if not k.startswith("log_") and k != "sipnat_event"},
        }
        failure = event.get("log_failure")
        if failure is not None:
            record["failure"] = failure.getTraceback()
        emit(record)

    return observe  # type: ignore[no-any-return]


def main() -> None:
    from twisted.internet import reactor

    role = sys.argv[1] if len(sys.argv) > 1 else None
    reactor.callWhenRunning(lambda: emit({"event": "ready", "t": time.monotonic(), "role": role}))
    sys.argv = ["twistd", "-n", "--pidfile=", "--logger=twistdrole.observer", "sipnat", *sys.argv[1:]]
    from twisted.scripts.twistd import run

    run()


if __name__ == "__main__":
    main()
