"""
The negative cache of failed resolutions, per domain (``NATSettings.stunFailureCacheTime``), sans-IO.

When a resolution has failed on every server, asking again at once only repeats the 39.5 s of retransmissions
per server toward servers that just proved unreachable (or refused us); an application that retries on every
incoming call would keep the socket busy with them.  With a cache time ``T > 0`` the failure is remembered for
``T`` seconds: a resolution for the same domain within that time fails at once with a copy of the same error
(the same type and fields), sending nothing.

The key is the domain with the server list the resolution started with: with no ``stunServers`` the server is
the next hop, and a failure toward one next hop says nothing about another.  A resolution without a domain
(``resolvePublicAddress(None, ...)`` with one NATSettings for all) is keyed by ``None`` and its servers.

Next hops come from the application (and from DNS), so the number of keys is not the network's to choose, but
an application may use many: the table is bounded (``maxEntries``, :data:`DEFAULT_MAX_FAILURES`); when it is
full, the oldest entry goes (an expired one is also dropped when its key is asked for again).
"""

from __future__ import annotations

from typing import Dict, Hashable, Optional, Tuple

from ..errors import NATTraversalError

#: The default bound of the table (``Engine.failures.maxEntries``).
DEFAULT_MAX_FAILURES = 4096


class FailureCache:
    """``key -> (error, expiry)``, bounded, insertion-ordered (the oldest is evicted first)."""

    __slots__ = ("maxEntries", "_entries", "hits", "evictions")

    def __init__(self, maxEntries: int = DEFAULT_MAX_FAILURES) -> None:
        if maxEntries < 1:
            raise ValueError("maxEntries must be >= 1")
        self.maxEntries = maxEntries
        self._entries: Dict[Hashable, Tuple[NATTraversalError, float]] = {}
        self.hits = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, key: Hashable, error: NATTraversalError, lifetime: float, now: float) -> None:
        """A resolution for ``key`` failed on every server at ``now``: keep ``error`` for ``lifetime`` s."""
        if lifetime <= 0:
            return
        entries = self._entries
        entries.pop(key, None)
        while len(entries) >= self.maxEntries:
            # The oldest first (insertion order: with one cache time, also expiry order); counted as an
            # eviction only if it was still valid.  O(1) per entry, so a flood of failures costs no scan.
            oldest = next(iter(entries))
            if entries.pop(oldest)[1] > now:
                self.evictions += 1
        entries[key] = (error, now + lifetime)

    def recall(self, key: Hashable, now: float) -> Optional[NATTraversalError]:
        """A fresh copy of the error remembered for ``key`` while it is valid, else ``None``."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        error, expiry = entry
        if now >= expiry:
            del self._entries[key]
            return None
        self.hits += 1
        # A new exception object of the same type and fields: no traceback shared between Deferreds.  Built
        # without calling ``__init__`` (whose arguments are not the message it stored in ``args``).
        clone = type(error).__new__(type(error))
        clone.__dict__.update(error.__dict__)
        clone.args = error.args
        return clone
