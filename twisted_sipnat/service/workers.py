"""
Past one core: several worker processes answering on one UDP port (``SO_REUSEPORT``).

A Python process answers STUN or keeps flows alive on one core.  A server that needs more binds the *same* port
in N processes (:class:`~twisted_sipnat.service.listeners.UDPListener` with ``reusePort``); the kernel keeps each
flow on one of them.  The twistd process itself is worker 0 and runs the N-1 others as child processes:

- :class:`WorkerPool`: Twisted's ``twisted.runner.procmon.ProcessMonitor`` running the other workers: one that
  exits is started again, stopping the service sends SIGTERM and, after :data:`STOP_GRACE` seconds, SIGKILL;
  its stop waits for them all.  Each line a worker writes is logged by the parent tagged ``[worker N]``.
- :func:`withWorkers`: a role alone for one worker, else the role plus a pool started with its options.
- :func:`stopOnce` and :func:`watchParent`: a worker's own life cycle (it stops once, and when its parent goes).

The workers run ``python -m twisted_sipnat.service.worker ROLE [OPTIONS]`` (named here as a string: nothing
imports the entry point).  Workers share no memory: in the ``edge`` role each worker has its own in-memory
registrar, which suits the role's purpose (answering keepalives and STUN on the SIP port) but means a
registration is known only to the worker its flow hashes to.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.runner.procmon import LoggingProtocol, ProcessMonitor

__all__ = [
    "PARENT_CHECK_INTERVAL",
    "RESTART_DELAY",
    "STOP_GRACE",
    "WORKER_MODULE",
    "WorkerOutputLogger",
    "WorkerPool",
    "stopOnce",
    "tagLogEvents",
    "watchParent",
    "withWorkers",
    "workerArguments",
]

log = Logger(namespace="twisted_sipnat.workers")

#: A worker that exits within its first second is started again after this many seconds, doubling for each such
#: quick death up to :data:`MAX_RESTART_DELAY` (a worker that cannot start must not spin); one that ran longer is
#: started again at once.  ``ProcessMonitor``'s rule.
RESTART_DELAY = 1
MAX_RESTART_DELAY = 60
#: Seconds a worker gets after SIGTERM before the pool sends SIGKILL.
STOP_GRACE = 5
#: How often a worker checks that its parent is still there (a parent killed with SIGKILL cannot stop it).
PARENT_CHECK_INTERVAL = 1.0
#: What a worker runs, ``python -m WORKER_MODULE ROLE [OPTIONS]``.
WORKER_MODULE = "twisted_sipnat.service.worker"
#: The environment variable that tells a worker its index (1 .. N-1).
WORKER_ENV = "TWISTED_SIPNAT_WORKER"


def workerArguments(options: Any, overrides: Optional[Mapping[str, Optional[str]]] = None) -> List[str]:
    """
    The command-line arguments that reproduce a parsed ``twisted.python.usage.Options``: ``--name=value`` for
    every parameter that has a value, ``--name`` for every flag that is set.  ``overrides`` replaces values by
    name (``None`` leaves the parameter out).  Workers get the options their parent was started with this way.
    """
    overrides = dict(overrides or {})
    argv: List[str] = []
    for entry in getattr(options, "optParameters", []):
        name = entry[0]
        value = overrides.pop(name, options.get(name))
        if value is not None:
            argv.append(f"--{name}={value}")
    for name, value in overrides.items():
        if value is not None:
            argv.append(f"--{name}={value}")
    for entry in getattr(options, "optFlags", []):
        if options.get(entry[0]):
            argv.append(f"--{entry[0]}")
    return argv


class WorkerOutputLogger(Logger):
    """
    The logger ``ProcessMonitor`` re-logs each worker's output lines with (``"[{tag}] {line}"``, ``tag`` the
    worker's name): every event gets ``sipnat_event="worker.output"`` and ``sipnat_worker``, the worker's index,
    so a worker's lines can be told apart by key as well as by the ``[worker N]`` text.
    """

    def emit(self, level: LogLevel, format: Optional[str] = None, **kwargs: Any) -> None:
        """A worker's relayed line, with the event key and the worker's index (from its ``tag``) added."""
        kwargs.setdefault("sipnat_event", "worker.output")
        tag = kwargs.get("tag")
        if isinstance(tag, str) and tag.startswith("worker ") and tag[7:].isdigit():
            kwargs.setdefault("sipnat_worker", int(tag[7:]))
        Logger.emit(self, level, format, **kwargs)


def tagLogEvents(index: int, prefix: bool = True, publisher: Any = None) -> Callable[[], None]:
    """
    Give every log event of this process the key ``sipnat_worker=index`` and, with ``prefix``, the text
    ``[worker index] `` in front, so that with ``--workers N`` the twistd process's own lines (worker 0) carry
    its id as the other workers' lines do (their parent tags those).  Returns the call that stops it.

    It must see each event before the observers that write it, so it goes first among ``publisher``'s
    (default: the global publisher's) observers; a publisher without that list gets it last (the key is then
    only seen by observers added later).
    """
    from twisted.logger import globalLogPublisher

    target: Any = globalLogPublisher if publisher is None else publisher
    tagText = f"[worker {index}] "

    def tag(event: Dict[str, Any]) -> None:
        if "sipnat_worker" in event:
            return
        event["sipnat_worker"] = index
        text = event.get("log_format")
        if prefix and isinstance(text, str):
            event["log_format"] = tagText + text

    observers = getattr(target, "_observers", None)
    if isinstance(observers, list):
        observers.insert(0, tag)
    else:
        target.addObserver(tag)
    return lambda: target.removeObserver(tag)


class _WorkerProtocol(LoggingProtocol):
    """``ProcessMonitor``'s protocol (each output line logged with the worker's name), telling the pool of an exit."""

    pool: WorkerPool

    def processEnded(self, reason: Failure) -> None:
        LoggingProtocol.processEnded(self, reason)  # the monitor's own bookkeeping and restart
        self.pool._workerEnded(self.name, reason)


class WorkerPool(ProcessMonitor):
    """
    Runs ``count - 1`` worker processes beside this one (worker 0), each started with ``argvFor()`` (evaluated
    when the pool starts, so it can name the port the first worker bound) and ``TWISTED_SIPNAT_WORKER=N`` in its
    environment.  ``reactor`` provides ``IReactorProcess`` and ``IReactorTime``.  ``workers`` maps each running
    worker's index to its process protocol; ``restarts`` counts the workers started again.
    """

    killTime = STOP_GRACE
    minRestartDelay = RESTART_DELAY
    maxRestartDelay = MAX_RESTART_DELAY

    def __init__(
        self,
        reactor: Any,
        count: int,
        argvFor: Callable[[], Sequence[str]],
        env: Optional[Dict[str, str]] = None,
        executable: str = sys.executable,
    ) -> None:
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError(f"count must be an integer >= 1, not {count!r}")
        ProcessMonitor.__init__(self, reactor=reactor)
        # What the workers write is logged here (an instance attribute: a Logger on the class takes the class's
        # name as its namespace), each line with the event key and the worker's index.
        self.log = WorkerOutputLogger(namespace=log.namespace)
        self.reactor = reactor
        self.count = count
        self.argvFor = argvFor
        self.env = env
        self.executable = executable
        self.restarts = 0
        self._index: Dict[str, int] = {f"worker {index}": index for index in range(1, count)}
        self._commands: Dict[str, List[str]] = {}
        self._environments: Dict[str, Dict[str, str]] = {}
        self._stopped: List[defer.Deferred[None]] = []

    @property
    def workers(self) -> Dict[int, Any]:
        """The running workers by index (1 .. count-1): their process protocols."""
        return {self._index[name]: proto for name, proto in self.protocols.items()}

    def startService(self) -> None:
        argv = [self.executable] + list(self.argvFor())
        for name, index in self._index.items():
            if name in self._commands:
                continue
            env = dict(os.environ) if self.env is None else dict(self.env)
            env[WORKER_ENV] = str(index)
            self._commands[name], self._environments[name] = argv, env
            self.addProcess(name, argv, env=env)
        ProcessMonitor.startService(self)

    def startProcess(self, name: str) -> None:
        # ProcessMonitor.startProcess, with a protocol that reports the exit to the pool as well.
        if name in self.protocols:
            return
        proto = _WorkerProtocol()
        proto.service = self
        proto.pool = self
        proto.name = name
        self.protocols[name] = proto
        self.timeStarted[name] = self.reactor.seconds()
        try:
            self.reactor.spawnProcess(proto, self.executable, self._commands[name], env=self._environments[name])
        except OSError as e:
            del self.protocols[name]
            delay = self.delay[name]
            self.delay[name] = min(delay * 2, self.maxRestartDelay)
            log.error("cannot start {name}: {why}; trying again in {delay} s", name=name, why=e, delay=delay,
                      sipnat_event="worker.start.failed")
            if self.running:
                self.restart[name] = self.reactor.callLater(delay, self.startProcess, name)
            return
        log.info("worker {index} of {count} started", index=self._index[name], count=self.count,
                 sipnat_event="worker.started")

    def _workerEnded(self, name: str, reason: Failure) -> None:
        if self.running:
            self.restarts += 1
            log.warn("{name} ended ({why}); starting it again", name=name, why=reason.getErrorMessage(),
                     sipnat_event="worker.ended")
        elif not self.protocols:
            stopped, self._stopped = self._stopped, []
            for d in stopped:
                d.callback(None)

    def stopService(self) -> defer.Deferred[None]:  # type: ignore[override]  # IService allows a Deferred
        """SIGTERM to every worker (SIGKILL after :data:`STOP_GRACE` s); fires once they have all ended."""
        ProcessMonitor.stopService(self)
        d: defer.Deferred[None] = defer.Deferred()
        if self.protocols:
            self._stopped.append(d)
        else:
            d.callback(None)
        return d


def withWorkers(
    reactor: Any,
    role: service.IService,
    listener: Any,
    roleName: str,
    options: Any,
    workers: int,
    overrides: Optional[Mapping[str, Optional[str]]] = None,
) -> service.IService:
    """
    ``role`` alone for one worker; else a service that starts ``role`` (its UDP sockets bound with
    ``SO_REUSEPORT``) and then a :class:`WorkerPool` of ``workers - 1`` more processes running ``python -m
    twisted_sipnat.service.worker roleName`` with the same ``options``, on the port ``listener`` (a
    :class:`~twisted_sipnat.service.listeners.UDPListener`) actually bound -- so ``udp:0`` works too.
    ``overrides`` changes options for the workers (the ``edge`` role keeps TCP in the first process:
    ``{"tcp": "none"}``).
    """
    if workers == 1:
        return role
    top = _WorkerZero()
    role.setServiceParent(top)

    def argvFor() -> List[str]:
        port = listener.port.getHost().port
        udp = f"udp:{port}:interface={listener.interface}" if listener.interface else f"udp:{port}"
        changes: Dict[str, Optional[str]] = {"udp": udp, "workers": "1", **(overrides or {})}
        argv = ["-m", WORKER_MODULE, roleName] + workerArguments(options, changes)
        if "--reuse-port" not in argv:
            argv.append("--reuse-port")
        return argv

    pool = WorkerPool(reactor, workers, argvFor)
    pool.setServiceParent(top)  # after the role: the port is bound before the first worker starts
    top.role = role  # type: ignore[attr-defined]
    top.workers = pool  # type: ignore[attr-defined]
    return top


class _WorkerZero(service.MultiService):
    """The role and its pool: while running, this process's log lines carry ``[worker 0]`` (:func:`tagLogEvents`)."""

    _untag: Optional[Callable[[], None]] = None

    def privilegedStartService(self) -> None:
        if self._untag is None:
            self._untag = tagLogEvents(0)
        service.MultiService.privilegedStartService(self)

    def startService(self) -> None:
        if self._untag is None:
            self._untag = tagLogEvents(0)
        service.MultiService.startService(self)

    def stopService(self) -> Any:
        d = service.MultiService.stopService(self)
        untag, self._untag = self._untag, None
        if untag is not None:
            d.addBoth(lambda result: (untag(), result)[1])
        return d


def stopOnce(reactor: Any) -> Callable[[], None]:
    """
    A stop that may be asked for more than once: a worker gets SIGTERM from its pool *and*, when a supervisor
    signals the whole process group, from the supervisor; ``reactor.stop()`` twice logs a traceback.
    """
    stopping: List[bool] = []

    def stop() -> None:
        if not stopping and reactor.running:
            stopping.append(True)
            reactor.stop()

    return stop


def watchParent(reactor: Any, parent: int, stop: Callable[[], None]) -> Any:
    """Stop (``stop()``) once the parent process ``parent`` is gone (the worker is re-parented)."""
    from twisted.internet import task

    def check() -> None:
        if os.getppid() != parent:
            log.warn("parent process {pid} is gone: stopping", pid=parent, sipnat_event="worker.orphaned")
            stop()

    loop = task.LoopingCall(check)
    loop.clock = reactor
    loop.start(PARENT_CHECK_INTERVAL, now=False)
    return loop
