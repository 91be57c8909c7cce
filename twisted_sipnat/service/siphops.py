"""
The client role's next hops from the domain's SIP SRV records, when no ``--next-hop`` is given (RFC 3263 §4.2,
RFC 5626 §4.2: one flow per edge the domain lists).

``_sip._udp.DOMAIN`` (``_sips._tcp`` for TLS, ``_sip._tcp`` for TCP), the targets in RFC 2782 order
(:func:`twisted_sipnat.core.resolution.orderSRV`: by priority, then a weighted random choice), a target of
``.`` meaning the service is not offered there, each target's address looked up, and at most ``maxFlows`` of
them kept (``--max-flows``: RFC 5626 §4.2 has a UA keep more than one flow, but a flow per record of a big
domain would load every edge with keepalives for nothing).  The resolver is a ``twisted.names`` ``IResolver``
(a fake one in tests), made on the system's name servers when not given.
"""

from __future__ import annotations

import random as _random
from typing import Any, Generator, List, Optional, Tuple

from twisted.internet import defer
from twisted.internet.error import DNSLookupError
from twisted.names.error import DNSNameError, DNSQueryTimeoutError, DNSServerError, DomainError

from ..core.addresses import isIPLiteral, normalHost
from ..core.resolution import orderSRV
from ..errors import NATTraversalError

__all__ = ["DEFAULT_MAX_FLOWS", "SRV_SERVICES", "SIPHops"]

#: What a target's address look-up may fail with.
LOOKUP_ERRORS = (DNSLookupError, DNSNameError, DNSQueryTimeoutError, DNSServerError, DomainError,
                 defer.TimeoutError)

HostPort = Tuple[str, int]

#: ``--max-flows``: two edges, as RFC 5626's examples have, keep a UA reachable while one is down.
DEFAULT_MAX_FLOWS = 2
#: The SRV service name by transport (RFC 3263 §4.1).
SRV_SERVICES = {"udp": "_sip._udp", "tcp": "_sip._tcp", "tls": "_sips._tcp"}


class SIPHops:
    """``lookup()`` fires with up to ``maxFlows`` ``(IP, port)`` next hops of ``domain``, best first."""

    def __init__(self, reactor: Any, domain: str, maxFlows: int = DEFAULT_MAX_FLOWS, transport: str = "udp",
                 resolver: Any = None, rng: Optional[_random.Random] = None) -> None:
        self.reactor = reactor
        self.domain = domain
        self.maxFlows = maxFlows
        self.service = SRV_SERVICES[transport]
        self.resolver = resolver
        self.rng = rng if rng is not None else _random.Random()

    def _resolver(self) -> Any:
        if self.resolver is None:
            from twisted.names import client

            from ..names import nameServers

            self.resolver = client.Resolver(servers=nameServers(), reactor=self.reactor)
        return self.resolver

    @defer.inlineCallbacks
    def lookup(self) -> Generator[Any, Any, List[HostPort]]:
        from twisted.names import dns

        name = f"{self.service}.{self.domain}"
        answers, _, _ = yield self._resolver().lookupService(name)
        records = [(a.payload.priority, a.payload.weight, (str(a.payload.target), a.payload.port))
                   for a in answers if a.type == dns.SRV]
        targets = [t for t in orderSRV(records, self.rng) if t[0] not in ("", ".")]
        hops: List[HostPort] = []
        for target, port in targets:
            if len(hops) >= self.maxFlows:
                break
            try:
                host = target if isIPLiteral(target) else (yield self._resolver().getHostByName(target))
            except LOOKUP_ERRORS:  # one target without an address: the next one may have one
                continue
            hop = (normalHost(str(host)), int(port))
            if hop not in hops:
                hops.append(hop)
        if not hops:
            raise NATTraversalError(f"no usable SIP SRV record for {name}")
        return hops
