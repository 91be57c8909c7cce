"""
Name look-ups for the controller, through the reactor (the engine asks with
:class:`~twisted_sipnat.core.events.LookupNeeded`; it does no I/O).

- SRV ``_stun._udp.NAME`` (RFC 8489 §8.1) through a ``twisted.names`` resolver on the system's name servers:
  the records come back as ``(priority, weight, port, target)`` and the engine orders them (RFC 2782);
- A/AAAA through the reactor's ``nameResolver`` (``IReactorPluggableNameResolver``), the family of the socket,
  or ``IReactorCore.resolve`` on reactors without one.
"""

from __future__ import annotations

from typing import Any, Callable, List, Tuple

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IReactorPluggableNameResolver, IResolutionReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from .core.addresses import isIPLiteral, normalHost
from .errors import NATTraversalError

HostPort = Tuple[str, int]
SRVRecord = Tuple[int, int, int, str]


def nameServers(path: str = "/etc/resolv.conf") -> List[HostPort]:
    """The ``nameserver`` lines of resolv.conf (read once; twisted.names' own reader re-arms a 60 s timer)."""
    servers: List[HostPort] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver" and isIPLiteral(parts[1]):
                    servers.append((parts[1], 53))
    except OSError:
        pass
    return servers or [("127.0.0.1", 53)]


class NameLookups:
    """The controller's look-ups; ``dnsResolver`` (an ``IResolver``) is made on first SRV use if not given."""

    def __init__(self, reactor: Any, dnsResolver: Any = None) -> None:
        self.reactor = reactor
        self.dnsResolver = dnsResolver

    def answer(self, event: Any, wantIPv6: bool, engine: Any, now: Callable[[], float],
               then: Callable[[], None]) -> defer.Deferred[Any]:
        """
        Look up what a :class:`~twisted_sipnat.core.events.LookupNeeded` asks for and hand the result to the
        engine (``handle.done`` / ``handle.failed``), then call ``then`` (the controller's flush).  A cancelled
        look-up reports nothing.
        """
        handle = event.handle
        if event.port is None:
            d: defer.Deferred[Any] = self.lookupSRV(event.host)
        else:
            d = self.lookupHost(event.host, event.port, wantIPv6)

        def done(result: Any) -> None:
            handle.done(engine, result, now())
            then()

        def failed(reason: Failure) -> None:
            if reason.check(defer.CancelledError):
                return
            handle.failed(engine, reason.getErrorMessage(), now())
            then()

        d.addCallbacks(done, failed)
        return d

    def lookupSRV(self, host: str) -> defer.Deferred[List[SRVRecord]]:
        from twisted.names import client, dns

        if self.dnsResolver is None:
            self.dnsResolver = client.Resolver(servers=nameServers(), reactor=self.reactor)

        def records(result: Any) -> List[SRVRecord]:
            answers, _, _ = result
            return [(a.payload.priority, a.payload.weight, a.payload.port, str(a.payload.target))
                    for a in answers if a.type == dns.SRV]

        d: defer.Deferred[List[SRVRecord]] = self.dnsResolver.lookupService(f"_stun._udp.{host}")
        return d.addCallback(records)

    def lookupHost(self, host: str, port: int, wantIPv6: bool) -> defer.Deferred[HostPort]:
        if isIPLiteral(host):
            return defer.succeed((normalHost(host), port))
        if IReactorPluggableNameResolver.providedBy(self.reactor):
            return self._withNameResolver(host, port, wantIPv6)
        resolve = getattr(self.reactor, "resolve", None)
        if resolve is None:
            return defer.fail(NATTraversalError(f"cannot resolve {host!r}: the reactor has no name resolver"))
        d: defer.Deferred[str] = resolve(host)
        return d.addCallback(lambda ip: (ip, port))

    def _withNameResolver(self, host: str, port: int, wantIPv6: bool) -> defer.Deferred[HostPort]:
        result: defer.Deferred[HostPort] = defer.Deferred()
        found: List[HostPort] = []

        @implementer(IResolutionReceiver)
        class Receiver:
            def resolutionBegan(self, resolutionInProgress: Any) -> None:
                pass

            def addressResolved(self, address: Any) -> None:
                found.append((normalHost(address.host), port))

            def resolutionComplete(self) -> None:
                if result.called:
                    return
                if found:
                    result.callback(found[0])
                else:
                    result.errback(NATTraversalError(f"{host!r} has no {'IPv6' if wantIPv6 else 'IPv4'} address"))

        family = IPv6Address if wantIPv6 else IPv4Address
        self.reactor.nameResolver.resolveHostName(Receiver(), host, port, addressTypes=[family],
                                                  transportSemantics="UDP")
        return result
