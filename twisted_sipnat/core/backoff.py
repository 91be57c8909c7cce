"""
RFC 5626 §4.5: how long a UA waits before it tries to register a failed flow again.

    "the UA waits a random amount of time between 50 % and 100 % of ``min(max-time, base-time * 2^n)``"
    where ``n`` is the number of consecutive failures, max-time is 1800 s and base-time is 30 s when every flow
    has failed and 90 s when at least one still works.

``n`` counts the failure that just happened (the RFC's example: three failures, base 30 s, give 240 s).  So a lone
UA whose only flow dies retries after 30-60 s, then 60-120 s, 120-240 s, ... up to 15-30 minutes; the
randomness spreads a crowd of UAs that lost the same edge proxy at the same moment.  Pure and sans-IO: the
random source is injected, so tests and the twistd roles give exact, reproducible delays.
"""

from __future__ import annotations

import random as _random
from typing import Callable, Optional

from twisted_sipnat.errors import InvalidSettingsError

__all__ = [
    "ALL_FAILED_BASE",
    "MAX_TIME",
    "SOME_OK_BASE",
    "Backoff",
    "reRegistrationDelay",
]

#: RFC 5626 §4.5 max-time, seconds.
MAX_TIME = 1800.0
#: base-time when all of the UA's flows have failed, seconds.
ALL_FAILED_BASE = 30.0
#: base-time when some flow still works, seconds.
SOME_OK_BASE = 90.0


def reRegistrationDelay(
    failures: int,
    allFlowsFailed: bool = True,
    random: Optional[Callable[[], float]] = None,
    maxTime: float = MAX_TIME,
    baseTime: Optional[float] = None,
) -> float:
    """
    The delay, in seconds, before the next registration attempt after ``failures`` consecutive failures.

    ``failures`` is RFC 5626's consecutive-failures: 1 after the first failure (``2**1``), and so on.  ``random`` returns a
    float in ``[0, 1)`` (default :func:`random.random`) and picks the point between 50 % and 100 %.
    ``baseTime`` replaces the RFC's base-time (30 s / 90 s), e.g. for a lab that cannot wait.
    """
    if isinstance(failures, bool) or not isinstance(failures, int) or failures < 0:
        raise InvalidSettingsError("failures", failures, "must be an int >= 0")
    if baseTime is not None and (isinstance(baseTime, bool) or not isinstance(baseTime, (int, float))
                                 or not 0 < baseTime <= maxTime):
        raise InvalidSettingsError("baseTime", baseTime, f"must be a number of seconds in (0, {maxTime:g}]")
    base = baseTime if baseTime is not None else (ALL_FAILED_BASE if allFlowsFailed else SOME_OK_BASE)
    # Cap the exponent before computing it: 2**n for a huge n is a needless big integer.
    ceiling = maxTime if failures >= 64 else min(maxTime, base * (2**failures))
    draw = (random or _random.random)()
    return ceiling * (0.5 + 0.5 * draw)


class Backoff:
    """
    The failure count of one registration, for callers that prefer state to arithmetic.

    :meth:`nextDelay` records a failure and returns the delay to wait; :meth:`succeeded` resets the count
    after a 2xx to REGISTER, as RFC 5626 §4.5 resets it once a flow works again.
    """

    __slots__ = ("failures", "_random", "baseTime")

    def __init__(self, random: Optional[Callable[[], float]] = None, baseTime: Optional[float] = None) -> None:
        self.failures = 0
        self._random = random
        if baseTime is not None:
            reRegistrationDelay(0, baseTime=baseTime)  # refuse a bad value now, not at the first failure
        self.baseTime = baseTime

    def nextDelay(self, allFlowsFailed: bool = True) -> float:
        """The delay before the next attempt; counts one more consecutive failure."""
        self.failures += 1  # the failure being reported counts (RFC 5626 §4.5)
        return reRegistrationDelay(self.failures, allFlowsFailed, self._random, baseTime=self.baseTime)

    def succeeded(self) -> None:
        """A registration worked: the next failure starts from the base again."""
        self.failures = 0
