"""
``twistd sipnat``: the plugin's ``Options`` and :func:`makeService`.

::

    twistd -n sipnat                          # the embedded default: a STUN server on loopback + a client of it
    twistd -n sipnat client --next-hop 192.0.2.1:5060 --stun stun.example.com
    twistd -n sipnat edge --udp udp:5060 --tcp tcp:5060 --domain example.com --flow-timer 30
    twistd -n sipnat stun --udp udp:3478:interface=192.0.2.7 --alternate 192.0.2.8:3479
    twistd -n sipnat stun --udp udp:3478 --workers 4     # four processes on one port (SO_REUSEPORT)
    twistd -n sipnat --config sipnat.ini client --domain example.com --next-hop 192.0.2.1:5060

The options and the checking of their values are :mod:`twisted_sipnat.service.options`; the roles are the other
modules of :mod:`twisted_sipnat.service`.  Parsing never touches the network and never imports the reactor: the
plugin file names this module as a string, and the role modules (some need ``twisted.protocols.sip``, which
imports the reactor when it loads, and the worker pool needs ``twisted.runner.procmon``, which does too) load
inside :func:`buildService`, once twistd has installed the reactor.  Every value is checked before anything is
bound; a bad one ends the program with one line naming the option or configuration key (``SystemExit``), not a
traceback.
"""

from __future__ import annotations

from typing import Any

from .errors import InvalidSettingsError
from .service.options import (
    Options,
    checkConfigUse,
    clientArguments,
    edgeArguments,
    embeddedSettings,
    parseWorkers,
    stunArguments,
)

__all__ = ["Options", "buildService", "makeService"]


def buildService(options: Options, reactor: Any) -> Any:
    """
    The service for parsed ``options`` on ``reactor``.  Raises :class:`InvalidSettingsError` naming the option
    or ``[section] key`` of the first bad value; nothing is bound until the service starts.
    """
    sub: Any = getattr(options, "subOptions", None)
    checkConfigUse(options)
    _raiseOpenFileLimit()
    if options.subCommand == "client":
        from .service.client import ClientRole

        return ClientRole(reactor, **clientArguments(options, sub))
    if options.subCommand == "edge":
        from .service.edge import EdgeRole
        from .service.workers import withWorkers

        workers = parseWorkers(sub)
        edge = EdgeRole(reactor, **edgeArguments(sub, workers))
        return withWorkers(reactor, edge, edge.udp, "edge", sub, workers, {"tcp": "none"})
    if options.subCommand == "stun":
        from .service.stunserver import STUNRole
        from .service.workers import withWorkers

        workers = parseWorkers(sub)
        stun = STUNRole(reactor, **stunArguments(sub, workers))
        return withWorkers(reactor, stun, stun.listener, "stun", sub, workers, {"tcp": None})
    from .service.embedded import EmbeddedDefault

    return EmbeddedDefault(reactor, embeddedSettings(options))


def _raiseOpenFileLimit() -> None:
    """Every role: the soft open-file limit up to the hard one, logged once (:mod:`.service.limits` says why)."""
    from .service.limits import raiseOpenFileLimit

    raiseOpenFileLimit()


def makeService(options: Options) -> Any:
    """``IServiceMaker.makeService``: :func:`buildService` on the global reactor, bad values as one line."""
    from twisted.internet import reactor

    try:
        return buildService(options, reactor)
    except InvalidSettingsError as e:
        raise SystemExit(f"twistd sipnat: {e}") from None
