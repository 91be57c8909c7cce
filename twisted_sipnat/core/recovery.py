"""
RFC 5626 §4.5 across several flows: when each failed flow of a user agent tries again.

    "the UA waits a random amount of time between 50 % and 100 % of ``min(max-time, base-time * 2^n)``"

where ``n`` is the flow's consecutive failures, max-time 1800 s, and base-time 30 s when *all* of the UA's
flows have failed and 90 s when at least one still works (the others keep the UA reachable, so a failed one
need not hurry, and a crowd of UAs that lost one edge does not come back to it at once).
:func:`twisted_sipnat.core.backoff.reRegistrationDelay` is the formula for one flow; :class:`FlowRecovery`
holds what it needs for several: which flows are up, and each one's count of consecutive failures, by reg-id
(RFC 5626 §4.2: each flow has its own).

Sans-IO: the random draw is injected, the caller (the client role) arms its own timer with the delay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional

from twisted_sipnat.errors import InvalidSettingsError

from .backoff import ALL_FAILED_BASE, MAX_TIME, SOME_OK_BASE, reRegistrationDelay

__all__ = ["FlowRecovery", "RecoveryPolicy"]

#: A flow's states: registering (first attempt or a retry in progress), up (registered and kept alive), down
#: (failed, waiting for its backoff).
REGISTERING, UP, DOWN = "registering", "up", "down"
STATES = (REGISTERING, UP, DOWN)


def _seconds(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise InvalidSettingsError(key, value, "must be a positive number of seconds")
    return float(value)


@dataclass(frozen=True)
class RecoveryPolicy:
    """The three figures of RFC 5626 §4.5 (the RFC's values by default); each base at most ``maxTime``."""

    baseAllFailed: float = ALL_FAILED_BASE
    baseSomeUp: float = SOME_OK_BASE
    maxTime: float = MAX_TIME

    def __post_init__(self) -> None:
        maxTime = _seconds("backoff-max", self.maxTime)
        for key, value in (("backoff-base-all-failed", self.baseAllFailed), ("backoff-base-some-up", self.baseSomeUp)):
            if _seconds(key, value) > maxTime:
                raise InvalidSettingsError(key, value, f"must not exceed --backoff-max ({maxTime:g} s)")

    def delay(self, failures: int, allFailed: bool, draw: float) -> float:
        """The wait after ``failures`` consecutive failures (>= 1); ``draw`` in ``[0, 1)`` picks 50-100 %."""
        base = self.baseAllFailed if allFailed else self.baseSomeUp
        return reRegistrationDelay(failures, allFailed, lambda: draw, maxTime=self.maxTime, baseTime=base)


class FlowRecovery:
    """
    The states and consecutive failures of a user agent's flows, by reg-id (module docstring).

    :meth:`up` after a flow's registration succeeded and its keepalives started (its count starts again, as
    §4.5 says once a flow works); :meth:`failed` when it failed, returning how long to wait before trying it
    again; :meth:`registering` when that attempt starts.
    """

    def __init__(self, regIds: Iterable[int], policy: Optional[RecoveryPolicy] = None,
                 random: Optional[Callable[[], float]] = None) -> None:
        import random as _random

        self.policy = policy if policy is not None else RecoveryPolicy()
        self._random = random if random is not None else _random.random
        self.states: Dict[int, str] = {}
        self.failures: Dict[int, int] = {}
        for regId in regIds:
            self.add(regId)

    def add(self, regId: int) -> None:
        """One more flow, registering."""
        self.states[regId] = REGISTERING
        self.failures[regId] = 0

    def registering(self, regId: int) -> None:
        self.states[regId] = REGISTERING

    def up(self, regId: int) -> None:
        self.states[regId] = UP
        self.failures[regId] = 0

    def failed(self, regId: int) -> float:
        """Flow ``regId`` failed: the seconds to wait before its next attempt (RFC 5626 §4.5)."""
        self.states[regId] = DOWN
        self.failures[regId] += 1
        allFailed = not any(state == UP for state in self.states.values())
        return self.policy.delay(self.failures[regId], allFailed, self.draw())

    def draw(self) -> float:
        """One draw of the injected random source, in ``[0, 1)``."""
        return float(self._random())

    @property
    def allFailed(self) -> bool:
        """No flow is up: the user agent is unreachable."""
        return not any(state == UP for state in self.states.values())

    def count(self, state: str) -> int:
        """How many flows are in ``state`` (one of :data:`STATES`)."""
        return sum(1 for s in self.states.values() if s == state)
