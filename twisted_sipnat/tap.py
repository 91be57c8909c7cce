"""
``twistd sipnat``: the plugin's ``Options`` and :func:`makeService`.

::

    twistd -n sipnat                          # the embedded default: a STUN server on loopback + a client of it
    twistd -n sipnat client --next-hop 192.0.2.1:5060 --stun stun.example.com
    twistd -n sipnat edge --udp udp:5060 --tcp tcp:5060 --domain example.com --flow-timer 30
    twistd -n sipnat stun --udp udp:3478:interface=192.0.2.7 --alternate 192.0.2.8:3479
    twistd -n sipnat stun --udp udp:3478 --workers 4     # four processes on one port (SO_REUSEPORT)
    twistd -n sipnat --config sipnat.ini client --domain example.com --next-hop 192.0.2.1:5060
    twistd -n sipnat edge --metrics tcp:9460:interface=127.0.0.1 --stats-interval 60   # operator figures

The options and the checking of their values are :mod:`twisted_sipnat.service.options`; the roles are the other
modules of :mod:`twisted_sipnat.service`.  Parsing never touches the network and never imports the reactor: the
plugin file names this module as a string, and the role modules (the worker pool needs
``twisted.runner.procmon``, which imports the reactor when it loads) load inside :func:`buildService`, once
twistd has installed the reactor.  Every value is checked before anything is bound; a bad one ends the program with one line naming the option or configuration key (``SystemExit``), not a
traceback.  A port that cannot be bound fails later, when twistd starts the service, and is one line too: each
listener calls :func:`twisted_sipnat.service.listeners.listenFailed`, which logs it naming the option and raises
:class:`twisted_sipnat.errors.ListenError` (a ``SystemExit`` with status 1).
"""

from __future__ import annotations

from typing import Any

from .errors import InvalidSettingsError
from .service.options import (
    Options,
    checkConfigUse,
    checkFiguresUse,
    clientArguments,
    edgeArguments,
    embeddedSettings,
    parseMetrics,
    parseStatsInterval,
    parseWorkers,
    stunArguments,
)

__all__ = ["Options", "buildService", "makeService", "withFigures"]


def buildService(options: Options, reactor: Any, worker: int = 0) -> Any:
    """
    The service for parsed ``options`` on ``reactor``.  Raises :class:`InvalidSettingsError` naming the option
    or ``[section] key`` of the first bad value; nothing is bound until the service starts.  ``worker`` is the
    index of this process among ``--workers N`` (its ``--metrics`` port is ``PORT + worker``).
    """
    sub: Any = getattr(options, "subOptions", None)
    checkConfigUse(options)
    checkFiguresUse(options)
    _raiseOpenFileLimit()
    if options.subCommand == "client":
        from .service.client import ClientRole

        client = ClientRole(reactor, **clientArguments(options, sub))
        return withFigures(reactor, client, client, sub, worker)
    if options.subCommand == "edge":
        from .service.edge import EdgeRole
        from .service.workers import withWorkers

        workers = parseWorkers(sub)
        edge = EdgeRole(reactor, **edgeArguments(sub, workers))
        top = withWorkers(reactor, edge, edge.udp, "edge", sub, workers, {"tcp": "none"})
        return withFigures(reactor, top, edge, sub, worker, workers)
    if options.subCommand == "stun":
        from .service.stunserver import STUNRole
        from .service.workers import withWorkers

        workers = parseWorkers(sub)
        stun = STUNRole(reactor, **stunArguments(sub, workers))
        top = withWorkers(reactor, stun, stun.listener, "stun", sub, workers, {"tcp": None})
        return withFigures(reactor, top, stun, sub, worker, workers)
    from .service.embedded import EmbeddedDefault

    embedded = EmbeddedDefault(reactor, embeddedSettings(options))
    return withFigures(reactor, embedded, embedded, options, worker)


def withFigures(reactor: Any, top: Any, role: Any, options: Any, worker: int = 0, workers: int = 1) -> Any:
    """
    ``top`` with the operator's views of ``role``'s figures added as its children: ``--metrics`` (a
    :class:`~twisted_sipnat.service.metrics.MetricsServer`) and ``--stats-interval`` (a
    :class:`~twisted_sipnat.service.statslog.StatsLog`); ``top`` unchanged when neither option is given.
    ``worker`` is this process's index among ``workers``; the last worker's port is checked here, up front.
    """
    parseMetrics(options["metrics"], workers - 1)
    description = parseMetrics(options["metrics"], worker)
    interval = parseStatsInterval(options["stats-interval"])
    if description is None and interval is None:
        return top
    if description is not None:
        from .service.metrics import MetricsServer

        MetricsServer(reactor, description, role).setServiceParent(top)
    if interval is not None:
        from .service.statslog import StatsLog

        StatsLog(reactor, interval, role).setServiceParent(top)
    return top


def _raiseOpenFileLimit() -> None:
    """Every role: the soft open-file limit up to the hard one, logged once (:mod:`.service.limits` says why)."""
    from .service.limits import raiseOpenFileLimit

    raiseOpenFileLimit()


def makeService(options: Options) -> Any:
    """``IServiceMaker.makeService``: :func:`buildService` on the global reactor, bad values as one line."""
    from twisted.internet import reactor

    untag = _tagWorkerZero(options)
    try:
        return buildService(options, reactor)
    except InvalidSettingsError as e:
        untag()
        raise SystemExit(f"twistd sipnat: {e}") from None


def _tagWorkerZero(options: Options) -> Any:
    """
    With ``--workers N`` (N > 1), tag this process's log lines ``[worker 0]`` from now on, before building the
    role logs its first line (the open-file limit); returns the call that stops it.  Only twistd's path: a
    test that builds a service in-process keeps its log as it is.
    """
    sub: Any = getattr(options, "subOptions", None)
    try:
        workers = parseWorkers(sub) if options.subCommand in ("edge", "stun") else 1
    except InvalidSettingsError:
        workers = 1  # buildService says what is wrong with it
    if workers <= 1:
        return lambda: None
    from .service.workers import tagLogEvents

    return tagLogEvents(0)
