"""
What the engine (:mod:`twisted_sipnat.core.engine`) tells its shell, as data (the aioquic shape).

After every input the shell takes, in this order: the datagrams to send (``Engine.datagramsToSend``, tuples
``(socketKey, writeKey, data, destination)``), the instant to wake the engine (``Engine.getTimer``), then the
events (``Engine.nextEvent``) below, which it turns into Deferred results, observer calls and log lines.
Because events are handed out only after the engine has finished the input, a callback that calls back into
the shell always finds the engine's state complete.

Every event is a frozen, slotted dataclass; addresses are ``(host, port)`` tuples with the host in RFC 5952
normal form (the shell makes ``IPv4Address``/``IPv6Address`` of them).  ``handle`` is the object the engine
returned when the resolution or probe started; ``observer`` is the shell's key of a keepalive context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from ..errors import FlowFailure, NATTraversalError

HostPort = Tuple[str, int]

__all__ = [
    "Event",
    "FlowFailed",
    "LookupNeeded",
    "MappingChanged",
    "Note",
    "ProbeAnswered",
    "ProbeFailed",
    "Resolved",
    "ResolutionFailed",
]


@dataclass(frozen=True, slots=True)
class Resolved:
    """A resolution found the public address: XOR-MAPPED-ADDRESS (else MAPPED-ADDRESS) of ``server``'s answer."""

    handle: Any
    address: HostPort
    server: HostPort
    rtt: float


@dataclass(frozen=True, slots=True)
class ResolutionFailed:
    """
    A resolution ended without an address: every server was tried (``error`` is the last
    :class:`~twisted_sipnat.errors.STUNErrorResponse`, else a :class:`~twisted_sipnat.errors.STUNTimeout`), a
    resource limit was hit, or the socket was closed.
    """

    handle: Any
    error: NATTraversalError


@dataclass(frozen=True, slots=True)
class ProbeAnswered:
    """A single Binding transaction (``Engine.probe``) got a checked answer (success or error) from ``source``."""

    handle: Any
    message: Any
    source: Optional[HostPort]


@dataclass(frozen=True, slots=True)
class ProbeFailed:
    handle: Any
    error: NATTraversalError


@dataclass(frozen=True, slots=True)
class FlowFailed:
    """A keepalive context failed (its keepalives have stopped): STUN timeout, pong timeout, connection lost."""

    observer: Any
    error: FlowFailure


@dataclass(frozen=True, slots=True)
class MappingChanged:
    """RFC 5626 §4.4.2: the next hop reports another mapped address than the baseline; the flow has stopped."""

    observer: Any
    old: HostPort
    new: HostPort


@dataclass(frozen=True, slots=True)
class LookupNeeded:
    """
    The engine needs a name looked up (it does no I/O): ``srv`` asks for DNS SRV ``_stun._udp.host`` first
    (RFC 8489 §8.1), else an A/AAAA look-up of ``host``.  The shell answers by calling ``handle.done(engine, result,
    now)`` or ``handle.failed(engine, why, now)`` (see :class:`twisted_sipnat.names.NameLookups`).
    """

    handle: Any
    host: str
    port: Optional[int]
    socketKey: Any


@dataclass(frozen=True, slots=True)
class Note:
    """A log line: ``level`` is ``"debug"``, ``"info"`` or ``"warn"``; ``fields`` carry ``sipnat_event``."""

    level: str
    text: str
    fields: Dict[str, Any]


Event = Any  # one of the classes above
