"""
Who may write to a socket shared by the SIP stack and the NAT keepalives, now.

Theory of operation
===================

One :class:`Arbiter` stands in front of each shared socket: a UDP port (``stream=False``) or one TCP/TLS
connection (``stream=True``).  Two writers use the socket: the SIP stack, which always has priority, and the
keepalive machinery of every context on that socket (CRLFCRLF pings, STUN Binding requests and their
retransmissions).  The contract (``socketIdle``) lets the SIP stack claim the socket; on a stream the socket is
also taken for as long as an outgoing SIP message is only partly written, because a keepalive written there
would corrupt the message (RFC 5626 §4.4.1 sends pings only between messages; framing per RFC 3261 §18.3, by
:class:`~twisted_sipnat.core.sipframing.OutgoingTracker`).

A keepalive that may not be written when it is due is *held*: at most one per context key (a newer one for the
same key replaces the payload and keeps the older one's place in the queue, so the queue never grows beyond the
number of contexts), and released, in queue order, the moment the socket is free: inside ``sipIdle(True)``, or
inside the ``sipWrite`` that completes the SIP message on a stream.  Both happen synchronously, as the contract's
"held keepalives" point requires.

States are the pair (*owner*, *position*) plus a terminal state:

- owner ``IDLE`` (the stack said ``sipIdle(True)``, the initial state) or ``BUSY`` (``sipIdle(False)``);
- position ``BOUNDARY`` (nothing partial written) or ``MID`` (a SIP message partly written; streams only);
- ``DEAD``: the stack's output could not be framed, so no boundary can be trusted again.

``canWrite`` is ``IDLE and BOUNDARY``.  Invariant: keepalives are held only while not ``canWrite``.

==================  ==========================  =====================================================
state               input                       effect / next state
==================  ==========================  =====================================================
IDLE, BOUNDARY      ``offer``                   True: the caller writes it now / same
IDLE, BOUNDARY      ``sipWrite`` ends whole     SIP bytes / IDLE, BOUNDARY
IDLE, BOUNDARY      ``sipWrite`` ends partial   SIP bytes / IDLE, MID
IDLE, MID           ``offer``                   held (False) / same
IDLE, MID           ``sipWrite``                SIP bytes up to the first boundary, then every held
                                                keepalive, then the rest / IDLE, BOUNDARY or MID
BUSY, any           ``offer``                   held (False) / same
BUSY, any           ``sipWrite``                SIP bytes only / BUSY, BOUNDARY or MID
any                 ``sipIdle(False)``          nothing / BUSY, same position
BUSY, BOUNDARY      ``sipIdle(True)``           every held keepalive / IDLE, BOUNDARY
BUSY, MID           ``sipIdle(True)``           nothing / IDLE, MID
any but DEAD        ``withdraw``                the key's held keepalive dropped / same
any but DEAD        ``sipWrite`` unframeable    :class:`SIPFramingError`, held dropped / DEAD
DEAD                ``offer``, ``sipWrite``     :class:`SIPFramingError`
DEAD                ``sipIdle``, ``withdraw``   nothing (cleanup must not fail) / DEAD
==================  ==========================  =====================================================

An ``offer`` of a new key when ``maxHeld`` keepalives are already held raises
:class:`~twisted_sipnat.errors.ResourceLimitError`; nothing changes.

Out of scope: the arbiter writes nothing itself and knows nothing of time or of what a keepalive means; the
Twisted shell (``protocols.py``) writes what it returns, and the controller decides when a keepalive is due.

What is returned: ``sipWrite`` returns a list of chunks to write in order, each either :class:`SIPBytes`
(the stack's bytes) or :class:`Keepalive` (a released keepalive, with the ``key`` it was offered under); both
have ``.data``, the bytes to write.  ``sipIdle`` returns :class:`Keepalive`\\ s, which are ``(key, data)``
tuples.
"""

from __future__ import annotations

from typing import Dict, Hashable, List, NamedTuple, Optional, Tuple, Union

from twisted_sipnat.core.sipframing import DEFAULT_MAX_MESSAGE_SIZE, OutgoingTracker, SIPFramingError
from twisted_sipnat.errors import ResourceLimitError

__all__ = ["Arbiter", "SIPBytes", "Keepalive", "Chunk", "DEFAULT_MAX_HELD"]

DEFAULT_MAX_HELD = 10_000


class SIPBytes(NamedTuple):
    """Bytes the SIP stack wrote, to be written as they are."""

    data: bytes


class Keepalive(NamedTuple):
    """A held keepalive released for writing now; ``key`` is the context it was offered for."""

    key: Hashable
    data: bytes


Chunk = Union[SIPBytes, Keepalive]


class Arbiter:
    """
    Arbitrate one shared socket between the SIP stack and the keepalives (see the module docstring).

    ``stream`` selects TCP/TLS framing (keepalives only between whole outgoing SIP messages); ``maxHeld``
    bounds the held keepalives (one per context key); ``maxMessageSize`` bounds one outgoing SIP message.
    """

    __slots__ = ("stream", "maxHeld", "_tracker", "_sipBusy", "_held", "_deadReason")

    def __init__(
        self,
        stream: bool,
        maxHeld: int = DEFAULT_MAX_HELD,
        maxMessageSize: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        if maxHeld < 1:
            raise ValueError(f"maxHeld must be at least 1, not {maxHeld}")
        self.stream = stream
        self.maxHeld = maxHeld
        self._tracker: Optional[OutgoingTracker] = OutgoingTracker(maxMessageSize) if stream else None
        self._sipBusy = False
        self._held: Dict[Hashable, bytes] = {}
        self._deadReason: Optional[str] = None

    @property
    def canWrite(self) -> bool:
        """True when a keepalive may be written now: the SIP stack is idle and not inside a message."""
        tracker = self._tracker
        return (
            not self._sipBusy
            and self._deadReason is None
            and (tracker is None or tracker.atBoundary)
        )

    @property
    def sipBusy(self) -> bool:
        """True between ``sipIdle(False)`` and ``sipIdle(True)``."""
        return self._sipBusy

    @property
    def midMessage(self) -> bool:
        """True on a stream while an outgoing SIP message is only partly written."""
        return self._tracker is not None and not self._tracker.atBoundary

    @property
    def held(self) -> int:
        """How many keepalives are held (at most one per key)."""
        return len(self._held)

    @property
    def heldKeys(self) -> Tuple[Hashable, ...]:
        """The keys of the held keepalives, in the order they will be released."""
        return tuple(self._held)

    @property
    def dead(self) -> bool:
        """True once the SIP stack's output could not be framed (see :class:`SIPFramingError`)."""
        return self._deadReason is not None

    def _release(self) -> List[Keepalive]:
        released = [Keepalive(key, data) for key, data in self._held.items()]
        self._held.clear()
        return released

    def offer(self, key: Hashable, payload: bytes) -> bool:
        """
        A keepalive for context ``key`` is due: True means the caller writes ``payload`` now; False means it
        is held and will come back from ``sipIdle`` or ``sipWrite``.  Offering again for a held key replaces
        that key's payload (a STUN retransmission supersedes the earlier send) in its place in the queue.
        """
        if self._deadReason is not None:
            raise SIPFramingError(self._deadReason)
        held = self._held
        if not held and self.canWrite:
            return True
        if key not in held and len(held) >= self.maxHeld:
            raise ResourceLimitError("held keepalives", self.maxHeld)
        held[key] = payload
        return False

    def withdraw(self, key: Hashable) -> bool:
        """Drop the keepalive held for ``key`` (its context was freed or moved); True if there was one."""
        return self._held.pop(key, None) is not None

    def sipIdle(self, idle: bool) -> List[Keepalive]:
        """
        The SIP stack releases (``True``) or claims (``False``) the socket.  On release, returns the held
        keepalives to write now, in order, unless a SIP message is still partly written on a stream (then the
        write that completes it releases them).
        """
        self._sipBusy = not idle
        if idle and self._held and self.canWrite:
            return self._release()
        return []

    def sipWrite(self, data: bytes) -> List[Chunk]:
        """
        The SIP stack writes ``data``; return the chunks to write, in order: the SIP bytes, split at the first
        message boundary where held keepalives may go, with those keepalives between.

        Raises :class:`SIPFramingError` when the stack's output cannot be framed (a message over
        ``maxMessageSize`` or a malformed Content-Length); nothing of ``data`` is returned, held keepalives
        are dropped and the arbiter is dead: the shell must close the connection.
        """
        if self._deadReason is not None:
            raise SIPFramingError(self._deadReason)
        if not data:
            return []
        tracker = self._tracker
        if tracker is None:
            return [SIPBytes(data)]
        atStart = tracker.atBoundary
        try:
            offsets = tracker.feed(data)
        except SIPFramingError as e:
            self._deadReason = e.reason
            self._held.clear()
            raise
        if not self._held or self._sipBusy:
            return [SIPBytes(data)]
        if atStart:
            cut = 0
        elif offsets:
            cut = offsets[0]
        else:
            return [SIPBytes(data)]
        chunks: List[Chunk] = []
        if cut:
            chunks.append(SIPBytes(data[:cut]))
        chunks.extend(self._release())
        if cut < len(data):
            chunks.append(SIPBytes(data[cut:]))
        return chunks
