"""
Past one core: several worker processes answering on one UDP port (``SO_REUSEPORT``).

A Python process answers STUN or keeps flows alive on one core.  A server that needs more binds the *same* port
in N processes, each with ``SO_REUSEPORT`` set: Linux (3.9+) then hashes every datagram's 4-tuple (source and
destination address and port) to one of the sockets, so all datagrams of one client flow land on the same worker
(RFC 5626 flow state is per flow: nothing needs to be shared) while different flows spread over the workers.

- :func:`reusePortSocket` / :func:`listenUDPReusePort`: bind such a socket and hand it to the reactor with
  ``adoptDatagramPort``, for any ``DatagramProtocol``.
- :class:`WorkerPool`: a service that runs the N-1 other workers as child processes (the twistd process itself
  is worker 0), restarts one that dies and stops them all with the service.
- ``python -m twisted_sipnat.reuseport ROLE [OPTIONS]``: what a worker runs: the ``twistd sipnat`` role ``ROLE``
  (``edge`` or ``stun``) with its options, in the foreground, until it is told to stop or its parent goes away.

``twistd sipnat stun --workers 2`` and ``twistd sipnat edge --workers 2`` use all three.  Workers share no
memory: in the ``edge`` role each worker has its own in-memory registrar, which suits the role's purpose
(answering keepalives and STUN on the SIP port) but means a registration is known only to the worker its flow
hashes to.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["WorkerPool", "listenUDPReusePort", "main", "reusePortSocket", "withWorkers", "workerArguments"]

log = Logger(namespace="twisted_sipnat.reuseport")

#: A worker that dies is started again after this many seconds (not at once: a worker that cannot start would
#: otherwise spin).
RESTART_DELAY = 1.0
#: How often a worker checks that its parent is still there (a parent killed with SIGKILL cannot stop it).
PARENT_CHECK_INTERVAL = 1.0


def reusePortSocket(port: int, interface: str = "") -> socket.socket:
    """
    A non-blocking UDP socket bound to ``(interface, port)`` with ``SO_REUSEPORT``, so other processes (of the
    same user) can bind the same port and the kernel spreads flows over them.  IPv6 when ``interface`` is an
    IPv6 literal.  Raises ``OSError`` where the platform has no ``SO_REUSEPORT`` or the bind fails.
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        raise OSError("SO_REUSEPORT is not available on this platform")
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((interface, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def listenUDPReusePort(
    reactor: Any, port: int, proto: protocol.AbstractDatagramProtocol, interface: str = "",
    maxPacketSize: int = 8192,
) -> Any:
    """
    Like ``reactor.listenUDP`` but with ``SO_REUSEPORT`` set before binding; returns the ``IListeningPort``.
    The reactor adopts a duplicate of the descriptor, so the socket made here is closed at once.
    """
    sock = reusePortSocket(port, interface)
    try:
        return reactor.adoptDatagramPort(sock.fileno(), sock.family, proto, maxPacketSize)
    finally:
        sock.close()


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
    twisted_sipnat.reuseport roleName`` with the same ``options``, on the port ``listener`` (a
    :class:`~twisted_sipnat.roles.UDPListener`) actually bound -- so ``udp:0`` works too.  ``overrides``
    changes options for the workers (the ``edge`` role keeps TCP in the first process: ``{"tcp": "none"}``).
    """
    if workers == 1:
        return role
    top = service.MultiService()
    role.setServiceParent(top)

    def argvFor() -> List[str]:
        port = listener.port.getHost().port
        udp = f"udp:{port}:interface={listener.interface}" if listener.interface else f"udp:{port}"
        changes: Dict[str, Optional[str]] = {"udp": udp, "workers": "1", **(overrides or {})}
        argv = ["-m", "twisted_sipnat.reuseport", roleName] + workerArguments(options, changes)
        if "--reuse-port" not in argv:
            argv.append("--reuse-port")
        return argv

    pool = WorkerPool(reactor, workers, argvFor)
    pool.setServiceParent(top)  # after the role: the port is bound before the first worker starts
    top.role = role  # type: ignore[attr-defined]
    top.workers = pool  # type: ignore[attr-defined]
    return top


class _WorkerProcess(protocol.ProcessProtocol):
    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.ended: defer.Deferred[None] = defer.Deferred()

    def processEnded(self, reason: Failure) -> None:
        self.pool._ended(self, reason)
        self.ended.callback(None)


class WorkerPool(service.Service):
    """
    Runs ``count - 1`` worker processes beside this one (worker 0), each started with ``argvFor()`` (evaluated
    when it starts, so it can name the port the first worker bound).  A worker that exits while the service runs
    is started again after :data:`RESTART_DELAY`; stopping the service sends every worker SIGTERM and waits for
    them to end.  ``reactor`` provides ``IReactorProcess`` and ``IReactorTime``.
    """

    def __init__(
        self,
        reactor: Any,
        count: int,
        argvFor: Callable[[], Sequence[str]],
        env: Optional[Dict[str, str]] = None,
        executable: str = sys.executable,
    ) -> None:
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be an integer >= 1, not {count!r}")
        self.reactor = reactor
        self.count = count
        self.argvFor = argvFor
        self.env = env
        self.executable = executable
        #: The running workers by index (1 .. count-1): their process protocols.
        self.workers: Dict[int, _WorkerProcess] = {}
        self.restarts = 0
        self._pendingRestarts: Dict[int, Any] = {}

    def startService(self) -> None:
        service.Service.startService(self)
        for index in range(1, self.count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        self._pendingRestarts.pop(index, None)
        argv = [self.executable] + list(self.argvFor())
        env = dict(os.environ) if self.env is None else dict(self.env)
        env["TWISTED_SIPNAT_WORKER"] = str(index)
        worker = _WorkerProcess(self, index)
        # The worker writes its log to our stdout/stderr, where twistd's own log goes in the foreground.
        self.reactor.spawnProcess(worker, self.executable, argv, env=env, childFDs={0: "w", 1: 1, 2: 2})
        self.workers[index] = worker
        log.info("worker {index} of {count} started", index=index, count=self.count)

    def _ended(self, worker: _WorkerProcess, reason: Failure) -> None:
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        if not self.running:
            return
        log.warn("worker {index} ended ({why}); starting it again in {delay} s", index=worker.index,
                 why=reason.getErrorMessage(), delay=RESTART_DELAY)
        self.restarts += 1
        self._pendingRestarts[worker.index] = self.reactor.callLater(RESTART_DELAY, self._spawn, worker.index)

    def stopService(self) -> defer.Deferred[Any]:
        service.Service.stopService(self)
        for call in self._pendingRestarts.values():
            if call.active():
                call.cancel()
        self._pendingRestarts.clear()
        ended = []
        workers = list(self.workers.values())
        for worker in workers:
            ended.append(worker.ended)
            try:
                worker.transport.signalProcess("TERM")  # type: ignore[union-attr]
            except Exception:  # already gone: processEnded is on its way
                pass
        allEnded: defer.Deferred[Any] = defer.DeferredList(ended)
        if not workers:
            return allEnded

        def kill() -> None:
            # A worker stuck past the grace period must not hang twistd's shutdown.
            for worker in workers:
                if not worker.ended.called:
                    log.warn("worker {pid} did not stop within {grace} s: killing it", pid=getattr(worker.transport, "pid", None),
                             grace=STOP_GRACE)
                    try:
                        worker.transport.signalProcess("KILL")  # type: ignore[union-attr]
                    except Exception:
                        pass

        killer = self.reactor.callLater(STOP_GRACE, kill)
        allEnded.addBoth(lambda result: (killer.cancel() if killer.active() else None, result)[1])
        return allEnded


#: Seconds a worker gets after SIGTERM before the pool sends SIGKILL.
STOP_GRACE = 5.0


def _stopper(reactor: Any) -> Callable[[], None]:
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


def _watchParent(reactor: Any, parent: int, stop: Callable[[], None]) -> Any:
    """Stop the reactor once the parent process is gone (the worker is re-parented)."""
    from twisted.internet import task

    def check() -> None:
        if os.getppid() != parent:
            log.warn("parent process {pid} is gone: stopping", pid=parent)
            stop()

    loop = task.LoopingCall(check)
    loop.clock = reactor
    loop.start(PARENT_CHECK_INTERVAL, now=False)
    return loop


def main(argv: Optional[Sequence[str]] = None, reactor: Any = None) -> int:
    """
    ``python -m twisted_sipnat.reuseport ROLE [OPTIONS]``: run one worker of the ``twistd sipnat`` role ``ROLE``
    with the same options (its UDP sockets bound with ``SO_REUSEPORT``), logging to stdout, until SIGTERM or
    until the parent process goes away.
    """
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from .tap import Options, buildService

    args = list(sys.argv[1:] if argv is None else argv)
    options = Options()
    try:
        options.parseOptions(args)
    except Exception as e:
        print(f"python -m twisted_sipnat.reuseport: {e}", file=sys.stderr)
        return 2
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = globalReactor
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    top = service.IService(buildService(options, reactor))
    parent = os.getppid()
    stop = _stopper(reactor)
    reactor.callWhenRunning(top.startService)
    reactor.callWhenRunning(_watchParent, reactor, parent, stop)
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: reactor.callFromThread(stop))
    reactor.run(installSignalHandlers=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
