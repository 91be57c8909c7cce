"""
The exceptions of twisted_sipnat.

Errors are part of the API: each carries the facts a SIP stack needs to act on it (the server that answered,
the error code, the old and new public address), so callers never parse messages.  Every exception raised on
purpose by the library is a :class:`NATTraversalError`; the failures delivered to
:meth:`twisted_sipnat.interfaces.IBindingObserver.flowFailure` are :class:`FlowFailure`\\ s.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

HostPort = Tuple[str, int]


class NATTraversalError(Exception):
    """Base class of every error twisted_sipnat raises or errbacks with on purpose."""


class UnknownDomainError(NATTraversalError, LookupError):
    """A domain has no :class:`~twisted_sipnat.settings.NATSettings` in the controller's mapping."""

    def __init__(self, domain: str) -> None:
        super().__init__(f"no NAT settings for domain {domain!r}")
        self.domain = domain


class InvalidSettingsError(NATTraversalError, ValueError):
    """A setting is out of range or of the wrong kind; ``key`` names it."""

    def __init__(self, key: str, value: Any, why: str) -> None:
        super().__init__(f"invalid {key}={value!r}: {why}")
        self.key = key
        self.value = value
        self.why = why


class ResourceLimitError(NATTraversalError):
    """A configured bound (pending transactions, contexts, held bytes) would be exceeded."""

    def __init__(self, what: str, limit: int) -> None:
        super().__init__(f"too many {what}: the limit is {limit}")
        self.what = what
        self.limit = limit


class STUNErrorResponse(NATTraversalError):
    """
    A STUN server answered a Binding request with an error response (RFC 8489 §6.3.4).

    ``code`` is the ERROR-CODE number (e.g. 401, 420, 438), ``reason`` its reason phrase and ``server`` the
    ``(host, port)`` that answered.
    """

    def __init__(self, code: int, reason: str, server: Optional[HostPort] = None) -> None:
        where = f" from {server[0]}:{server[1]}" if server else ""
        super().__init__(f"STUN error {code} {reason}{where}")
        self.code = code
        self.reason = reason
        self.server = server


class FlowFailure(NATTraversalError):
    """
    A flow (RFC 5626 §3.5.1) is no longer usable: the observer must re-register and call
    ``refreshNATBinding`` again.
    """


class STUNTimeout(FlowFailure):
    """
    A STUN transaction got no answer within RFC 8489's budget (39.5 s with the default RTO), from the one
    server (``servers`` has one entry) or from every server tried during resolution.
    """

    def __init__(self, servers: Tuple[HostPort, ...] = (), elapsed: Optional[float] = None) -> None:
        names = ", ".join(f"{h}:{p}" for h, p in servers) or "the STUN server"
        after = f" after {elapsed:.1f} s" if elapsed is not None else ""
        super().__init__(f"no STUN answer from {names}{after}")
        self.servers = servers
        self.elapsed = elapsed


class UnusableSTUNAnswer(STUNTimeout):
    """
    Every server was tried, none answered usably, and at least one *did* answer: with a response the client
    must discard (RFC 8489 §6.3.3: unknown comprehension-required attributes).  A :class:`STUNTimeout` (the
    contract's errback when no server gave an error response), whose message says what came instead of "no
    answer".  ``answers`` holds ``((host, port), why)`` for each unusable answer.
    """

    def __init__(self, servers: Tuple[HostPort, ...], elapsed: Optional[float],
                 answers: Tuple[Tuple[HostPort, str], ...]) -> None:
        super().__init__(servers, elapsed)
        what = "; ".join(f"{h}:{p} sent a {why}" for (h, p), why in answers)
        others = [s for s in servers if s not in {a[0] for a in answers}]
        rest = f"; no STUN answer from {', '.join(f'{h}:{p}' for h, p in others)}" if others else ""
        after = f" after {elapsed:.1f} s" if elapsed is not None else ""
        Exception.__init__(self, f"no usable STUN answer: {what}{rest}{after}")
        self.answers = answers


class MappedAddressChanged(FlowFailure):
    """
    The next hop reports a different XOR-MAPPED-ADDRESS than before: the NAT rebound the flow (RFC 5626 §4.4.2).
    ``old`` and ``new`` are :class:`twisted.internet.address.IPv4Address` / ``IPv6Address``.
    """

    def __init__(self, old: Any, new: Any) -> None:
        super().__init__(f"public address changed from {old.host}:{old.port} to {new.host}:{new.port}")
        self.old = old
        self.new = new


class PongTimeout(FlowFailure):
    """No CRLF pong arrived within ``pongTimeout`` after a CRLFCRLF ping (RFC 5626 §4.4.1)."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"no CRLF pong within {timeout:g} s")
        self.timeout = timeout


class FlowConnectionLost(FlowFailure):
    """The TCP/TLS connection that carried the flow was closed or reset."""

    def __init__(self, why: str = "connection lost") -> None:
        super().__init__(why)
        self.why = why


class RegistrationError(NATTraversalError):
    """
    The client role's REGISTER (RFC 3261 §10.2) got a final error response (``code``, ``phrase``) or no answer
    before Timer F (``code`` is ``None``).
    """

    def __init__(self, code: Optional[int], phrase: str) -> None:
        super().__init__(f"REGISTER failed: {code} {phrase}" if code is not None else f"REGISTER failed: {phrase}")
        self.code = code
        self.phrase = phrase
