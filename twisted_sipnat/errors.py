"""
The exceptions of twisted_sipnat.

Errors are part of the API: each carries the facts a SIP stack needs to act on it (the server that answered,
the error code, the old and new public address), so callers never parse messages.  Every exception raised on
purpose by the library is a :class:`NATTraversalError`; the failures delivered to
:meth:`twisted_sipnat.interfaces.IBindingObserver.flowFailure` are :class:`FlowFailure`\\ s.
"""

from __future__ import annotations

import enum
from typing import Any, List, Optional, Sequence, Tuple

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


class ListenError(NATTraversalError, SystemExit):
    """
    A port could not be bound at start-up: ``option`` names the option (``udp``, ``tcp``, ``listen``,
    ``metrics``), ``description`` its value (``udp:5060``), ``why`` the system's reason in words ("port already
    in use").  Its text is the one line the console shows.

    Also a ``SystemExit`` with status 1, because the failure happens when twistd starts the service, after
    option parsing and outside any handler of ours: raised out of ``startService`` it ends twistd with status 1
    and no traceback (the line is logged where it is raised: :func:`twisted_sipnat.service.listeners.listenFailed`),
    and code that catches ``Exception`` or ``NATTraversalError`` still catches it.
    """

    def __init__(self, option: str, description: str, why: str) -> None:
        NATTraversalError.__init__(self, f"--{option} {description}: {why}")
        self.code = 1
        self.option = option
        self.description = description
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


class FlowConnectError(RegistrationError):
    """
    A REGISTER over TCP or TLS could not be sent: the connection to the next hop was not made (refused,
    unreachable, not within the connect timeout).  ``code`` is ``None``.
    """

    def __init__(self, phrase: str) -> None:
        super().__init__(None, phrase)


class TLSVerificationError(FlowConnectError):
    """
    The next hop's TLS certificate was refused (RFC 5922 §7): not signed by a trusted CA, expired, or not naming
    the server identity the client expects.  Nothing was sent over the connection.
    """


class RegistrationConnectionLost(RegistrationError, FlowConnectionLost):
    """
    The TCP/TLS connection of a REGISTER in progress was closed or reset before its final response: both a
    failed registration (``code`` ``None``) and a lost flow.
    """

    def __init__(self, phrase: str) -> None:
        RegistrationError.__init__(self, None, phrase)
        self.why = phrase


# -- errors of the sans-IO core, raised on bad bytes or values (re-exported by the modules that raise them) --


class STUNDecodeError(NATTraversalError, ValueError):
    """
    The bytes are not a well-formed STUN message.  ``data`` is the input, ``reason`` says what is wrong.

    This is the only exception :func:`decode <twisted_sipnat.core.stun.decode>` raises, so a demultiplexer can
    drop bad input with one ``except`` and never lets a traceback out of a socket callback.
    """

    def __init__(self, reason: str, data: bytes = b"") -> None:
        super().__init__(reason)
        self.reason = reason
        self.data = data


class STUNMessageTooLarge(STUNDecodeError):
    """A STUN stream announced a message longer than the connection's bound (``StreamFramer.maxMessageSize``)."""


class STUNEncodeError(NATTraversalError, ValueError):
    """A message cannot be encoded: an attribute value is out of range (a port, an address, a length)."""


class SIPFramingError(NATTraversalError):
    """
    The byte stream cannot be framed into SIP messages (RFC 3261 §18.3): a message is too large or its
    Content-Length is malformed.  The connection has to be closed.

    ``reason`` says what was wrong, for the log.  ``events`` holds what the same ``feed`` call had found
    before the error (SIP bytes and keepalives that were still good), so the shell can deliver them before
    it closes the connection; ``unframed`` the bytes of that call from the message that could not be framed
    on (those of earlier calls were handed out as SIP bytes already), so that a server may still answer it
    with a 400 (RFC 3261 §21.4.1) before the connection closes.
    """

    def __init__(self, reason: str, events: Sequence[Any] = (), unframed: bytes = b"") -> None:
        super().__init__(f"SIP framing error: {reason}")
        self.reason = reason
        self.events: List[Any] = list(events)
        self.unframed = unframed


class InvalidHeaderError(NATTraversalError, ValueError):
    """
    A header value cannot be used: ``header`` names it, ``value`` is the text received, ``why`` says what is
    wrong.  Raised by the strict parsers only; the convenience readers turn it into ``None``.
    """

    def __init__(self, header: str, value: object, why: str) -> None:
        super().__init__(f"invalid {header} value {value!r}: {why}")
        self.header = header
        self.value = value
        self.why = why


class MissingViaError(NATTraversalError, ValueError):
    """:func:`addKeepToVia` was given a message with no Via header to add ``;keep`` to."""

    def __init__(self) -> None:
        super().__init__("the message has no Via header")


class ArbitrationError(NATTraversalError, RuntimeError):
    """
    The arbiter got an input its transition table has no entry for in its current state, or an entry whose
    effect the call cannot do: a bug in the arbiter or in the framer it relies on, never something the SIP
    stack or the network can cause (the tests walk every pair the public calls can produce).

    ``state`` and ``input`` name the missing pair.
    """

    def __init__(self, state: enum.Enum, input: enum.Enum) -> None:
        super().__init__(f"no arbitration transition for {input.name} in state {state.name}")
        self.state = state
        self.input = input
