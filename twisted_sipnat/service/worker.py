"""
``python -m twisted_sipnat.service.worker ROLE [OPTIONS]``: one worker of a ``twistd sipnat ROLE --workers N``.

It runs the role ``ROLE`` (``edge`` or ``stun``) with the options its parent was started with, its UDP sockets
bound with ``SO_REUSEPORT``, in the foreground, until SIGTERM or until its parent goes away.  It logs to stdout
without timestamps: the parent (:class:`~twisted_sipnat.service.workers.WorkerPool`) logs every line again,
stamped and tagged with the worker's index.

Nothing imports this module: it is only ever the ``-m`` of a worker process.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, Optional, Sequence

from twisted.application import service
from twisted.logger import FileLogObserver, formatEvent, globalLogBeginner

from ..tap import Options, buildService
from .workers import WORKER_ENV, stopOnce, watchParent


def _format(event: Any) -> str:
    """One line per event, ``[namespace#level] text``: the parent adds the time and the worker's index."""
    text = formatEvent(event).replace("\n", "\n\t")
    level = getattr(event.get("log_level"), "name", "-")
    failure = event.get("log_failure")
    if failure is not None:
        text += "\n\t" + failure.getTraceback().rstrip("\n").replace("\n", "\n\t")
    return f"[{event.get('log_namespace', '-')}#{level}] {text}\n"


def main(argv: Optional[Sequence[str]] = None, reactor: Any = None) -> int:
    """Parse ``argv`` as ``twistd sipnat`` would, run the service until told to stop; the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    options = Options()
    try:
        options.parseOptions(args)
    except Exception as e:  # noqa: BLE001 - usage.UsageError and the value errors of opt_ methods
        print(f"python -m twisted_sipnat.service.worker: {e}", file=sys.stderr)
        return 2
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = globalReactor
    globalLogBeginner.beginLoggingTo([FileLogObserver(sys.stdout, _format)], redirectStandardIO=False)
    top = service.IService(buildService(options, reactor, worker=int(os.environ.get(WORKER_ENV, "0") or 0)))
    parent = os.getppid()
    stop = stopOnce(reactor)
    status = [0]

    def start() -> None:
        try:
            top.startService()
        except SystemExit as e:  # a port that cannot be bound: its one line, and exit status 1
            print(e, file=sys.stderr)
            status[0] = 1
            stop()

    reactor.callWhenRunning(start)
    reactor.callWhenRunning(watchParent, reactor, parent, stop)
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: reactor.callFromThread(stop))
    reactor.run(installSignalHandlers=False)
    return status[0]


if __name__ == "__main__":
    raise SystemExit(main())
