"""
Where one ``resolvePublicAddress`` stands among its STUN servers (sans-IO): failover, RFC 8489 §10 redirects
(300 ALTERNATE-SERVER), the final error, and the RFC 2782 order of SRV targets.

Rules:

- the servers are tried in order; a timeout, an error response or an unusable answer moves on to the next one
  at once (contract "failover");
- a 300 with ALTERNATE-SERVER inserts the alternate right after the server that redirected, once per server
  and never back to a server already redirected from or to (no ping-pong between two, §10);
- after the last server: the last :class:`~twisted_sipnat.errors.STUNErrorResponse` if a server answered with
  an error, else a :class:`~twisted_sipnat.errors.STUNTimeout` -- whose message names the answers that came
  but could not be used (unknown comprehension-required attributes, §6.3.3), so an error never says "no
  answer" when one came;
- SRV targets (:func:`orderSRV`): by priority, and within a priority by RFC 2782's weighted random choice.
"""

from __future__ import annotations

import random
from typing import Any, List, Optional, Sequence, Set, Tuple

from ..errors import NATTraversalError, STUNErrorResponse, STUNTimeout, UnusableSTUNAnswer
from .addresses import normalHost

HostPort = Tuple[str, int]
ServerSpec = Tuple[str, Optional[int]]

#: RFC 8489 §10 (ALTERNATE-SERVER): the error code of a redirect.
TRY_ALTERNATE = 300


class Resolution:
    """One ``resolvePublicAddress``: its server list, where it stands, what it has learned so far."""

    __slots__ = (
        "sock",
        "settings",
        "servers",
        "index",
        "tried",
        "redirected",
        "lastError",
        "unusable",
        "txn",
        "observer",
        "nextHop",
        "domain",
        "lookup",
        "startedAt",
        "done",
        "failureKey",
    )

    def __init__(self, sock: Any, settings: Any, servers: Sequence[ServerSpec], observer: Any, nextHop: HostPort,
                 domain: Optional[str], now: float) -> None:
        self.sock = sock
        self.settings = settings
        self.servers: List[ServerSpec] = list(servers)
        self.index = 0
        self.tried: List[HostPort] = []
        self.redirected: Set[HostPort] = set()
        self.lastError: Optional[STUNErrorResponse] = None
        #: ``(server, why)`` of each answer that came but could not be used.
        self.unusable: List[Tuple[HostPort, str]] = []
        self.txn: Any = None
        self.observer = observer
        self.nextHop = nextHop
        self.domain = domain
        #: The pending name look-up (a key of the engine's look-up table), if any.
        self.lookup: Any = None
        self.startedAt = now
        self.done = False
        #: Its key in the engine's failure cache (NATSettings.stunFailureCacheTime): the domain and the servers
        #: it was started with (with no ``stunServers``, the next hop), so two next hops never share a failure.
        self.failureKey: Tuple[Optional[str], Tuple[ServerSpec, ...]] = (domain, tuple(servers))

    def nextServer(self) -> Optional[ServerSpec]:
        """The next server to try, or ``None`` when every one was tried."""
        if self.index >= len(self.servers):
            return None
        spec = self.servers[self.index]
        self.index += 1
        return spec

    def redirect(self, server: HostPort, alternate: Optional[HostPort]) -> Optional[HostPort]:
        """A 300 from ``server``: the alternate to try next, or ``None`` when the redirect is not followed."""
        if alternate is None or server in self.redirected:
            return None
        target = (normalHost(alternate[0]), alternate[1])
        self.redirected.add(server)
        self.redirected.add(target)  # one redirect per server: no ping-pong between two
        self.servers.insert(self.index, target)
        return target

    def finalError(self, now: float) -> NATTraversalError:
        """The error after the last server (contract: the last error response, else a timeout)."""
        if self.lastError is not None:
            return self.lastError
        if self.unusable:
            return UnusableSTUNAnswer(tuple(self.tried), now - self.startedAt, tuple(self.unusable))
        return STUNTimeout(tuple(self.tried), now - self.startedAt)


def orderSRV(records: Sequence[Tuple[int, int, Any]], rng: random.Random) -> List[Any]:
    """
    RFC 2782 target order: ascending priority; within one priority, repeatedly a weighted random choice among
    the records left (a record of weight 0 has a small chance, and only those of weight 0 are in a random
    order among themselves).  ``records`` are ``(priority, weight, target)``; returns the targets.
    """
    ordered: List[Any] = []
    for priority in sorted({r[0] for r in records}):
        # RFC 2782: records of weight 0 first, so that they are chosen only when nothing else is left with weight.
        left = sorted((r for r in records if r[0] == priority), key=lambda r: r[1] != 0)
        while left:
            total = sum(r[1] for r in left)
            pick = rng.randint(0, total) if total else 0
            running = 0
            for index, record in enumerate(left):
                running += record[1]
                if running >= pick:
                    ordered.append(record[2])
                    del left[index]
                    break
    return ordered
