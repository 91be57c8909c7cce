"""
``python -m twisted_sipnat resolve [HOST[:PORT]] [--count N] [--interval SECONDS]``: the main job.

Learns the public address of a fresh UDP socket from a STUN server (RFC 8489), prints it with the server used
and the round-trip time, then keeps that NAT binding alive toward the server as the next hop (RFC 5626
keepalives, every 80-100 % of ``--interval``), printing each keepalive and its answer, until interrupted or
until ``--count`` keepalives were answered.  With no server it starts an embedded STUN responder on 127.0.0.1
and works with no network at all.  Failure exits non-zero with one line on stderr; Ctrl-C (SIGINT) exits 130
(128 + SIGINT, the shell's convention) with one line, never a traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any, List, Optional, Sequence, TextIO, cast

from twisted.internet import defer
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from .core.addresses import isIPLiteral
from .errors import InvalidSettingsError, NATTraversalError
from .interfaces import IBindingObserver
from .settings import DEFAULT_STUN_PORT, parseServer

__all__ = ["main", "parseArguments", "resolveCommand"]


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0: {text!r}")
    return value


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1: {text!r}")
    return int(text)


def parseArguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m twisted_sipnat", description=__doc__.split("\n\n")[1])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    resolve = commands.add_parser("resolve", help="print the public address, then keep the binding alive",
                                  description="Print the public address of a UDP socket, then keep its NAT binding alive.")
    resolve.add_argument("server", nargs="?", default=None,
                         help="STUN server HOST[:PORT] or stun:HOST[:PORT] (default: an embedded one on 127.0.0.1)")
    resolve.add_argument("--count", type=_count, default=None,
                         help="exit 0 after this many answered keepalives (default: run until interrupted)")
    resolve.add_argument("--interval", type=_positive, default=25.0,
                         help="keepalive interval in seconds; each goes out after 80-100%% of it (default 25)")
    return parser.parse_args(list(argv))


@implementer(IBindingObserver)
class _Observer:
    """The one flow of this command; a flow failure ends it with an error."""

    def __init__(self) -> None:
        self.failed: defer.Deferred[None] = defer.Deferred()

    def flowFailure(self, reason: object) -> None:
        if not self.failed.called:
            self.failed.errback(reason if isinstance(reason, Failure) else Failure(NATTraversalError(str(reason))))


async def _serverAddress(reactor: Any, text: Optional[str]) -> Any:
    """``(host IP, port, label)`` of the server to use; a name is resolved once (UDP writes need an IP)."""
    if text is None:
        return None
    entry = text if text.lower().startswith(("stun:", "stuns:")) else "stun:" + text
    host, port = parseServer(entry, key="server")
    port = DEFAULT_STUN_PORT if port is None else port
    if isIPLiteral(host):
        return host, port, f"{host}:{port}"
    address = await reactor.resolve(host)
    return address, port, f"{host} ({address}:{port})"


async def resolveCommand(reactor: Any, args: argparse.Namespace, out: TextIO) -> int:
    """Run ``resolve``; returns the exit code, raises :class:`NATTraversalError` (or ``OSError``) on failure."""
    from . import NATSettings, NATTraversalController, SharedDatagramProtocol
    from .service.stunserver import STUNRole

    embedded: Optional[STUNRole] = None
    server = await _serverAddress(reactor, args.server)
    if server is None:
        embedded = STUNRole(reactor, udp=(0, "127.0.0.1"), rateLimit=None)
        embedded.startService()
        host, port = embedded.address()
        server = (host, port, f"{host}:{port} (embedded responder)")
    nextHop = (server[0], server[1])
    controller = NATTraversalController(NATSettings(udpKeepaliveInterval=args.interval), reactor=reactor)
    shared = SharedDatagramProtocol(controller=controller)
    interface = "::" if ":" in nextHop[0] else ("127.0.0.1" if embedded is not None else "")
    port = reactor.listenUDP(0, shared, interface=interface)
    observer = _Observer()
    answered: List[Any] = []
    done: defer.Deferred[None] = defer.Deferred()

    def onEvent(event: Any) -> None:
        # The controller logs each keepalive as a structured event (namespace twisted_sipnat, field
        # sipnat_event); count and print the ones for our flow.
        if event.get("log_namespace") != "twisted_sipnat" or event.get("observer") is not observer:
            return
        what = event.get("sipnat_event")
        if what == "keepalive.sent":
            print(f"keepalive {len(answered) + 1} sent to {nextHop[0]}:{nextHop[1]}", file=out, flush=True)
        elif what in ("keepalive.answered", "keepalive.error"):
            answered.append(event)
            detail = (f"public address {event.get('host')}:{event.get('port')}, "
                      f"{1000 * float(event.get('rtt') or 0):.1f} ms" if what == "keepalive.answered"
                      else f"STUN error {event.get('code')} {event.get('reason')}")
            print(f"keepalive {len(answered)} answered: {detail}", file=out, flush=True)
            if args.count is not None and len(answered) >= args.count and not done.called:
                done.callback(None)

    watch = cast(ILogObserver, onEvent)

    def cleanUp() -> None:
        globalLogPublisher.removeObserver(watch)
        controller.freeResources()

    shutdown = reactor.addSystemEventTrigger("before", "shutdown", cleanUp)
    globalLogPublisher.addObserver(watch)
    try:
        started = reactor.seconds()
        address = await controller.resolvePublicAddress(None, shared, nextHop, observer=observer)
        rtt = reactor.seconds() - started
        print(f"public address: {address.host}:{address.port}", file=out)
        print(f"STUN server:    {server[2]}", file=out)
        print(f"round trip:     {1000 * rtt:.1f} ms", file=out, flush=True)
        if not controller.refreshNATBinding(shared, observer, nextHop=nextHop):
            raise NATTraversalError("keepalives are disabled for this socket")
        print(f"keeping the binding alive toward {nextHop[0]}:{nextHop[1]} every 80-100% of {args.interval:g} s",
              file=out, flush=True)
        first = await defer.DeferredList([done, observer.failed], fireOnOneCallback=True, fireOnOneErrback=True,
                                         consumeErrors=True)
        del first
        return 0
    except defer.FirstError as e:
        e.subFailure.raiseException()
        raise  # unreachable: raiseException always raises
    finally:
        reactor.removeSystemEventTrigger(shutdown)
        cleanUp()
        await port.stopListening()
        if embedded is not None:
            await embedded.stopService()


#: The exit status after Ctrl-C: 128 + SIGINT, as a shell reports a process a signal ended.
INTERRUPTED = 128 + signal.SIGINT


def _watchInterrupt(interrupted: List[bool]) -> None:
    """
    Note a SIGINT in ``interrupted`` and pass it on to the handler the reactor installed (which stops the
    reactor).  A SIGINT that is ignored, or left to Python's default, is left alone.
    """
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous) or previous is signal.default_int_handler:
        return

    def onInterrupt(signum: int, frame: Any) -> None:
        interrupted.append(True)
        previous(signum, frame)  # type: ignore[operator]

    signal.signal(signal.SIGINT, onInterrupt)


def main(argv: Optional[Sequence[str]] = None, reactor: Any = None, out: TextIO = sys.stdout,
         err: TextIO = sys.stderr) -> None:
    """Entry point: parse ``argv`` and run under ``task.react`` (which exits the process)."""
    from twisted.internet import task

    args = parseArguments(sys.argv[1:] if argv is None else argv)
    interrupted: List[bool] = []

    async def run(reactor: Any) -> None:
        try:
            code = await resolveCommand(reactor, args, out)
        except Exception as e:  # noqa: BLE001 - one line, not a traceback, for the command line
            if interrupted:  # what Ctrl-C cancelled: the one line is said below
                raise SystemExit(INTERRUPTED) from None
            detail = str(e) if isinstance(e, (NATTraversalError, InvalidSettingsError, OSError)) else (
                f"{type(e).__name__}: {e}")
            print(f"python -m twisted_sipnat resolve: {detail}", file=err, flush=True)
            raise SystemExit(1) from None
        if code:
            raise SystemExit(code)

    def start(reactor: Any) -> defer.Deferred[None]:
        # react calls this before the reactor runs, and the reactor installs its SIGINT handler as it starts:
        # begin once it runs, so that a Ctrl-C at any moment of the work is seen.
        finished: defer.Deferred[None] = defer.Deferred()

        def begin() -> None:
            _watchInterrupt(interrupted)
            defer.ensureDeferred(run(reactor)).chainDeferred(finished)

        reactor.callWhenRunning(begin)
        return finished

    try:
        task.react(start, (), _reactor=reactor)
    except (SystemExit, KeyboardInterrupt) as e:
        # Ctrl-C stops the reactor (react then exits 0, or 1 if it cancelled a step), or, before the reactor
        # runs, raises KeyboardInterrupt: either way, one line and 130.
        if interrupted or isinstance(e, KeyboardInterrupt):
            print("python -m twisted_sipnat resolve: interrupted", file=err, flush=True)
            raise SystemExit(INTERRUPTED) from None
        raise


if __name__ == "__main__":
    main()
