"""
Per-source rate limiting, and the tally of what it dropped, sans-IO: both take ``now`` from the caller.

Why both here: a server that answers spoofable requests (STUN Binding, SIP over UDP) must bound how much it
sends to any one address, or it becomes a reflector (RFC 8489 §16.1.1, RFC 3261 §26.1.5); and an operator must
see that it is doing so without a log line per dropped request, which would turn a flood into a disk flood.

Clock steps: ``now`` is whatever clock the shell has (the reactor's, which is wall time).  A clock that steps
back must neither freeze the buckets until it catches up (an hour's step once cost a client 61 of 100 answers)
nor hand out free tokens: a negative elapsed time counts as zero and the bucket's time is moved back to
``now``, so refilling resumes at once.  A forward step refills at most ``burst``, as a long silence would.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Set, Tuple

from twisted_sipnat.errors import InvalidSettingsError

__all__ = ["DEFAULT_RATE_LIMIT_SOURCES", "DropTally", "RateLimit"]

#: Source addresses one rate limit tracks at most (about 100 bytes each): a spoofed flood from more addresses
#: only makes the least recently seen ones start again with a full bucket.
DEFAULT_RATE_LIMIT_SOURCES = 65536


class RateLimit:
    """
    A token bucket per source IP: ``burst`` requests at once, refilled at ``perSourceRate`` per second.

    Memory is bounded: at most ``maxSources`` buckets are kept; the least recently seen source is forgotten
    first (it comes back with a full bucket, which is the worst an attacker spraying spoofed sources can get).
    """

    __slots__ = ("perSourceRate", "burst", "maxSources", "_buckets")

    def __init__(
        self, perSourceRate: float = 20.0, burst: int = 40, maxSources: int = DEFAULT_RATE_LIMIT_SOURCES
    ) -> None:
        if not perSourceRate > 0:
            raise InvalidSettingsError("perSourceRate", perSourceRate, "must be > 0")
        if not isinstance(burst, int) or burst < 1:
            raise InvalidSettingsError("burst", burst, "must be an integer >= 1")
        if not isinstance(maxSources, int) or maxSources < 1:
            raise InvalidSettingsError("maxSources", maxSources, "must be an integer >= 1")
        self.perSourceRate = float(perSourceRate)
        self.burst = burst
        self.maxSources = maxSources
        # host -> (tokens, time of last refill), oldest first.  An OrderedDict, not a dict: forgetting the
        # oldest of a dict (next(iter(d))) scans the slots of every key deleted before it, so under a spoofed
        # flood, which evicts once per request, each request cost time in proportion to maxSources.
        self._buckets: OrderedDict[str, Tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        """How many sources are tracked."""
        return len(self._buckets)

    def allow(self, sourceHost: str, now: float) -> bool:
        """Take a token for ``sourceHost`` at time ``now`` (seconds); ``False`` if its bucket is empty."""
        buckets = self._buckets
        state = buckets.get(sourceHost)
        if state is None:
            tokens = float(self.burst)
            if len(buckets) >= self.maxSources:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(sourceHost)
            tokens, last = state
            if now > last:
                tokens = min(float(self.burst), tokens + (now - last) * self.perSourceRate)
            # now < last: the clock stepped back; nothing is refilled and the bucket's time follows the clock
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        buckets[sourceHost] = (tokens, now)
        return allowed


class DropTally:
    """
    Counts what a server dropped (rate-limited, malformed) and, at most once per ``interval`` seconds, says
    so in one line: ``"dropped 1,234 requests from 17 sources in the last 10 s"``.

    :meth:`drop` returns that line when it is due (the caller logs it), else ``None``; :meth:`flush` returns
    what is pending whatever the time (for a timer or at shutdown).  Sources are counted up to
    ``maxSources`` distinct ones per interval (beyond that the line says "at least"), so memory stays
    bounded under a spoofed flood.  :attr:`total` counts every drop since the start, for the metrics.
    """

    __slots__ = ("what", "interval", "maxSources", "total", "_count", "_sources", "_since", "_said", "_crowded")

    def __init__(self, what: str = "requests", interval: float = 10.0, maxSources: int = 10000) -> None:
        if not interval > 0:
            raise InvalidSettingsError("interval", interval, "must be > 0")
        self.what = what
        self.interval = float(interval)
        self.maxSources = maxSources
        self.total = 0
        self._count = 0
        self._sources: Set[str] = set()
        self._since: Optional[float] = None  # when the drops not yet reported began to be counted
        self._said: Optional[float] = None  # when the last line was due
        self._crowded = False

    @property
    def pending(self) -> int:
        """Drops counted that no line has reported yet (a caller flushes them when the interval is over)."""
        return self._count

    @property
    def dueAt(self) -> Optional[float]:
        """When the drops not reported yet are due to be said (:meth:`flush`), or ``None`` when there are none."""
        if not self._count or self._said is None:
            return None
        return self._said + self.interval

    def drop(self, sourceHost: str, now: float) -> Optional[str]:
        """Count one drop from ``sourceHost`` at ``now``; the summary line when one is due, else ``None``."""
        self.total += 1
        if self._said is not None and now < self._said:  # the clock stepped back: start the interval again
            self._said = self._since = now
        if self._since is None:
            self._since = now
        self._count += 1
        if len(self._sources) < self.maxSources:
            self._sources.add(sourceHost)
        elif sourceHost not in self._sources:
            self._crowded = True
        if self._said is None or now - self._said >= self.interval:
            return self.flush(now)
        return None

    def flush(self, now: float) -> Optional[str]:
        """The summary of the drops not yet reported (``None`` when there are none); starts a new interval."""
        if not self._count:
            return None
        elapsed = max(0.0, now - (self._since if self._since is not None else now))
        sources = len(self._sources)
        line = (
            f"dropped {self._count:,} {self.what if self._count != 1 else self.what.rstrip('s')} from {'at least ' if self._crowded else ''}{sources:,} "
            f"source{'s' if sources != 1 else ''} in the last {max(elapsed, 0.0):.0f} s"
        )
        self._count = 0
        self._sources = set()
        self._crowded = False
        self._since = self._said = now
        return line
