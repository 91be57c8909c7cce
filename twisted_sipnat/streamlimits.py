"""
The Twisted side of :mod:`twisted_sipnat.core.connections`: one listener's connection table, its one timer,
and the closing of what the table says to close.

A stream factory with limits (:class:`~twisted_sipnat.protocols.SharedStreamFactory`, the stun role's
:class:`~twisted_sipnat.service.stunstream.STUNStreamFactory`) owns a :class:`StreamLimiter`.  Its
``buildProtocol`` asks :meth:`StreamLimiter.admit`; a refused connection gets a :class:`RefusedConnection`,
which aborts it as soon as it is made (not ``None``: a TLS wrapper around the factory would wrap ``None``); its
protocol reports what each read completed and buffered
(:meth:`StreamLimiter.observe`) and its loss (:meth:`StreamLimiter.lost`).  Whatever the table closes is
aborted, not closed politely: a slowloris does not read, and ``loseConnection`` would wait on it for ever with
the descriptor held.

Closures are logged as one summary line per interval (:class:`~twisted_sipnat.core.ratelimit.DropTally`), so a
flood cannot flood the log too; the counts by reason are the ``sipnat_connections_refused_total`` metric.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from .core.connections import REASONS, Closure, ConnectionLimits, ConnectionTable
from .core.ratelimit import DropTally
from .wakeup import Wakeup

__all__ = ["RefusedConnection", "StreamLimiter", "limiterFor", "sourceOf"]

_log = Logger(namespace="twisted_sipnat.connections")


def sourceOf(address: Any) -> str:
    """The source IP a connection is counted under (the whole address when it has no ``host``: a UNIX socket)."""
    host = getattr(address, "host", None)
    return str(host) if host is not None else str(address)


class RefusedConnection(Protocol):
    """The protocol of a connection the table refused: aborted the moment it is made, nothing read."""

    noisy = False

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.connected = 1
        transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        pass


class StreamLimiter:
    """
    One listener's :class:`~twisted_sipnat.core.connections.ConnectionTable` on a clock, with one timer for
    every connection's idle and first-message deadlines.  ``transport`` is the metric label (``tcp``, ``tls``).
    """

    def __init__(self, limits: ConnectionLimits, clock: Any = None, transport: str = "tcp") -> None:
        self.table: ConnectionTable[Any] = ConnectionTable(limits)
        self.transport = transport
        self._clock = clock
        self._wakeup = Wakeup(clock, self._expire)
        self._tally = DropTally(f"{transport.upper()} connections")

    @property
    def limits(self) -> ConnectionLimits:
        return self.table.limits

    def _now(self) -> float:
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = reactor
        return float(self._clock.seconds())

    # -- what the factory and the protocols say ---------------------------------------------------------------

    def admit(self, protocol: Any, address: Any) -> bool:
        """May the connection from ``address`` that ``protocol`` would serve stay?  Evicts to make room."""
        now = self._now()
        source = sourceOf(address)
        admission = self.table.admit(protocol, source, now)
        self._carryOut(admission.close, now)
        if not admission.admitted:
            self._said(source, now)
        self._schedule()
        return admission.admitted

    def observe(self, protocol: Any, completed: int, keepalive: bool, buffered: int) -> None:
        """
        After a read: ``protocol`` completed ``completed`` messages, received a keepalive (``keepalive``), and
        holds ``buffered`` bytes of a partial message.
        """
        now = self._now()
        if completed:
            self.table.completed(protocol, now)
        elif keepalive:
            self.table.active(protocol, now)
        self._carryOut(self.table.buffered(protocol, buffered), now)

    def count(self, reason: str) -> None:
        """A closure the protocol made itself for a bound of its own (e.g. ``message_too_large``)."""
        self.table.refused[reason] += 1

    def lost(self, protocol: Any) -> None:
        """``protocol``'s connection is gone."""
        self.table.remove(protocol)
        if not len(self.table):
            self._schedule()  # nothing left to time out: no timer either

    def stop(self) -> None:
        """The listener stopped: no timer is left behind (the connections close on their own)."""
        self._wakeup.cancel()
        line = self._tally.flush(self._now())
        if line is not None:
            _log.info("{line} (connection limits)", line=line, sipnat_event="connections.closed")

    # -- closing and the timer --------------------------------------------------------------------------------

    def _carryOut(self, closures: Iterable[Closure[Any]], now: float) -> None:
        for closure in closures:
            protocol = closure.key
            transport = getattr(protocol, "transport", None)
            self._said(sourceOf(transport.getPeer()) if transport is not None else "?", now)
            close = getattr(protocol, "closeForLimit", None)
            if close is not None:
                close(closure.reason)
            elif transport is not None:
                transport.abortConnection()

    def _said(self, source: str, now: float) -> None:
        line = self._tally.drop(source, now)
        if line is not None:
            _log.info("{line} (connection limits)", line=line, sipnat_event="connections.closed")

    def _schedule(self) -> None:
        self._wakeup.at(self.table.nextWakeup(), self._now())

    def _expire(self, scheduledFor: float) -> None:
        now = self._now()
        self._carryOut(self.table.expire(now), now)
        self._schedule()

    # -- figures ----------------------------------------------------------------------------------------------

    def reportFigures(self, figures: Any) -> None:
        """``sipnat_connections{transport}`` and ``sipnat_connections_refused_total{reason}``."""
        figures.gauge("sipnat_connections", len(self.table), transport=self.transport)
        refused = self.table.refused
        for reason in sorted(set(REASONS) | set(refused)):
            figures.count("sipnat_connections_refused_total", refused.get(reason, 0), reason=reason)


def limiterFor(limits: Optional[ConnectionLimits], clock: Any, transport: str) -> Optional[StreamLimiter]:
    """A :class:`StreamLimiter` for ``limits``, or ``None`` (no limits: a library user's or client's factory)."""
    return StreamLimiter(limits, clock, transport) if limits is not None else None
