"""
``--keepalive options``: one flow's OPTIONS pings, the shell of :mod:`twisted_sipnat.core.sip.ping`.

Every keepalive interval (a fresh 80-100 % of it, RFC 5626 §4.4.1, so that a crowd of UAs spreads out) one
OPTIONS goes to the next hop as an RFC 3261 §17.1.2 non-INVITE transaction (Timers E and F,
:class:`~twisted_sipnat.core.sip.clienttransaction.NonInviteClientTransaction`).  Any final response answers
it; Timer F without one is a flow failure, handed to ``failed`` (the flow then recovers with the §4.5
backoff).  One delayed call at a time (:class:`~twisted_sipnat.wakeup.Wakeup`): the next ping, or the
transaction's next timer.
"""

from __future__ import annotations

import random as _random
import secrets
from collections import Counter
from typing import Any, Callable, Optional, Tuple

from twisted.logger import Logger

from ..core.sip.clienttransaction import T1, T2, TIMER_F, NonInviteClientTransaction, Retransmit, TimedOut
from ..core.sip.message import Response
from ..core.sip.ping import buildOptions
from ..core.sip.uri import SIPURI
from ..wakeup import Wakeup

__all__ = ["OptionsPinger"]

HostPort = Tuple[str, int]

log = Logger(namespace="twisted_sipnat.client")


class OptionsPinger:
    """
    OPTIONS pings toward ``hop`` every ``interval`` seconds, written with ``write(data, hop)``; ``sentBy`` gives
    the top Via's address; ``failed(why)`` is called once when a ping goes unanswered (then the pinger stops).
    ``stats`` counts ``options.sent``, ``options.answered`` and ``options.timeout`` (the flow's, kept across
    its pingers).
    """

    T1 = T1
    T2 = T2
    TIMER_F = TIMER_F

    def __init__(self, reactor: Any, aor: SIPURI, hop: HostPort, interval: float,
                 write: Callable[[bytes, HostPort], None], sentBy: Callable[[], HostPort],
                 failed: Callable[[str], None], random: Optional[Callable[[], float]] = None,
                 stats: Optional[Counter[str]] = None) -> None:
        self.reactor = reactor
        self.aor = aor
        self.hop = hop
        self.interval = interval
        self._write = write
        self._sentBy = sentBy
        self._failed = failed
        self._random = random if random is not None else _random.random
        self.callId = secrets.token_hex(8)
        self.fromTag = secrets.token_hex(4)
        self.cseq = 0
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self._txn: Optional[NonInviteClientTransaction] = None
        self._nextPing: Optional[float] = None
        self._wakeup = Wakeup(reactor, self._wake)

    def _now(self) -> float:
        return float(self.reactor.seconds())

    def start(self) -> None:
        """Ping after a fresh 80-100 % of the interval."""
        self._schedule()

    def stop(self) -> None:
        self._txn = None
        self._nextPing = None
        self._wakeup.cancel()

    @property
    def running(self) -> bool:
        return self._txn is not None or self._nextPing is not None

    def _schedule(self) -> None:
        self._txn = None
        self._nextPing = self._now() + self.interval * (0.8 + 0.2 * self._random())
        self._wakeup.at(self._nextPing, self._now())

    def _ping(self) -> None:
        self._nextPing = None
        self.cseq = self.cseq + 1 if self.cseq < 2**31 - 1 else 1
        request = buildOptions(self.aor, self.hop, self._sentBy(), callId=self.callId, cseq=self.cseq,
                               branch=secrets.token_hex(8), fromTag=self.fromTag)
        self._txn = NonInviteClientTransaction(request, self._now(), t1=self.T1, t2=self.T2, timerF=self.TIMER_F)
        self.stats["options.sent"] += 1
        self._write(self._txn.data, self.hop)
        self._wakeup.at(self._txn.nextWake(), self._now())

    def _wake(self, scheduledFor: float) -> None:
        now = self._now()
        if self._nextPing is not None:
            self._ping()
            return
        txn = self._txn
        if txn is None:
            return
        outcome = txn.timerDue(now)
        if isinstance(outcome, Retransmit):
            self._write(outcome.data, self.hop)
        elif isinstance(outcome, TimedOut):
            self.stats["options.timeout"] += 1
            self.stop()
            self._failed(f"no answer to OPTIONS within {outcome.after:g} s (RFC 3261 Timer F)")
            return
        self._wakeup.at(txn.nextWake(), now)

    def responseReceived(self, response: Response) -> bool:
        """``True`` if ``response`` is this pinger's (consumed); a final one schedules the next ping."""
        txn = self._txn
        if txn is None or not txn.matches(response):
            return False
        final = txn.responseReceived(response)
        if final is not None:
            self.stats["options.answered"] += 1
            self._schedule()
        else:
            self._wakeup.at(txn.nextWake(), self._now())
        return True
