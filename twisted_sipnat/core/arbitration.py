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

States (:class:`State`) are the pair (*owner*, *position*):

- owner ``IDLE`` (the stack said ``sipIdle(True)``, the initial state) or ``BUSY`` (``sipIdle(False)``);
- position ``BOUNDARY`` (nothing partial written), ``MID`` (a SIP message partly written; streams only) or
  ``DEAD`` (the stack's output could not be framed, so no boundary can be trusted again; terminal: the owner
  still follows ``sipIdle`` so that :attr:`Arbiter.sipBusy` keeps telling what the stack last said).

``canWrite`` is ``IDLE_BOUNDARY``.  Invariant: keepalives are held only while not ``canWrite``.

Inputs (:class:`Input`) are the calls, with ``sipWrite`` told apart by what the framer saw at the end of the
written bytes (on UDP every write is whole).  The single table :data:`TABLE` maps ``(state, input)`` to
``(effect, next state)``; the four methods look their input up in it and do the :class:`Effect` it names,
nothing else.  A pair missing from the table raises :class:`ArbitrationError` (h11's rule: what the table does
not allow is a bug, never a guess).  The table, as the code holds it (``renderTable()`` prints it; a test keeps
this copy equal to it):

=============  =========================  =================================================  =============
state          input                      effect                                             next state
=============  =========================  =================================================  =============
IDLE_BOUNDARY  ``offer``                  True: the caller writes the keepalive now          IDLE_BOUNDARY
IDLE_MID       ``offer``                  held (False)                                       IDLE_MID
BUSY_BOUNDARY  ``offer``                  held (False)                                       BUSY_BOUNDARY
BUSY_MID       ``offer``                  held (False)                                       BUSY_MID
IDLE_DEAD      ``offer``                  ``SIPFramingError``                                IDLE_DEAD
BUSY_DEAD      ``offer``                  ``SIPFramingError``                                BUSY_DEAD
IDLE_BOUNDARY  ``sipWrite`` ends whole    SIP bytes                                          IDLE_BOUNDARY
IDLE_MID       ``sipWrite`` ends whole    SIP bytes; the held ones after the first boundary  IDLE_BOUNDARY
BUSY_BOUNDARY  ``sipWrite`` ends whole    SIP bytes                                          BUSY_BOUNDARY
BUSY_MID       ``sipWrite`` ends whole    SIP bytes                                          BUSY_BOUNDARY
IDLE_BOUNDARY  ``sipWrite`` ends partial  SIP bytes                                          IDLE_MID
IDLE_MID       ``sipWrite`` ends partial  SIP bytes; the held ones after the first boundary  IDLE_MID
BUSY_BOUNDARY  ``sipWrite`` ends partial  SIP bytes                                          BUSY_MID
BUSY_MID       ``sipWrite`` ends partial  SIP bytes                                          BUSY_MID
IDLE_BOUNDARY  ``sipWrite`` unframeable   ``SIPFramingError``, held dropped                  IDLE_DEAD
IDLE_MID       ``sipWrite`` unframeable   ``SIPFramingError``, held dropped                  IDLE_DEAD
BUSY_BOUNDARY  ``sipWrite`` unframeable   ``SIPFramingError``, held dropped                  BUSY_DEAD
BUSY_MID       ``sipWrite`` unframeable   ``SIPFramingError``, held dropped                  BUSY_DEAD
IDLE_DEAD      ``sipWrite`` unframeable   ``SIPFramingError``                                IDLE_DEAD
BUSY_DEAD      ``sipWrite`` unframeable   ``SIPFramingError``                                BUSY_DEAD
IDLE_BOUNDARY  ``sipIdle(True)``          nothing                                            IDLE_BOUNDARY
IDLE_MID       ``sipIdle(True)``          nothing                                            IDLE_MID
BUSY_BOUNDARY  ``sipIdle(True)``          every held keepalive, in order                     IDLE_BOUNDARY
BUSY_MID       ``sipIdle(True)``          nothing                                            IDLE_MID
IDLE_DEAD      ``sipIdle(True)``          nothing                                            IDLE_DEAD
BUSY_DEAD      ``sipIdle(True)``          nothing                                            IDLE_DEAD
IDLE_BOUNDARY  ``sipIdle(False)``         nothing                                            BUSY_BOUNDARY
IDLE_MID       ``sipIdle(False)``         nothing                                            BUSY_MID
BUSY_BOUNDARY  ``sipIdle(False)``         nothing                                            BUSY_BOUNDARY
BUSY_MID       ``sipIdle(False)``         nothing                                            BUSY_MID
IDLE_DEAD      ``sipIdle(False)``         nothing                                            BUSY_DEAD
BUSY_DEAD      ``sipIdle(False)``         nothing                                            BUSY_DEAD
IDLE_BOUNDARY  ``withdraw``               the key's held keepalive dropped                   IDLE_BOUNDARY
IDLE_MID       ``withdraw``               the key's held keepalive dropped                   IDLE_MID
BUSY_BOUNDARY  ``withdraw``               the key's held keepalive dropped                   BUSY_BOUNDARY
BUSY_MID       ``withdraw``               the key's held keepalive dropped                   BUSY_MID
IDLE_DEAD      ``withdraw``               nothing                                            IDLE_DEAD
BUSY_DEAD      ``withdraw``               nothing                                            BUSY_DEAD
=============  =========================  =================================================  =============

Not in the table (:class:`ArbitrationError`): WRITE_WHOLE in IDLE_DEAD, WRITE_WHOLE in BUSY_DEAD,
WRITE_PARTIAL in IDLE_DEAD, WRITE_PARTIAL in BUSY_DEAD.

(A dead framer frames nothing, so every write there is unframeable.)  The effects in words: "held" means the
keepalive is queued, and an ``offer`` of a new key when ``maxHeld`` keepalives are already held raises
:class:`~twisted_sipnat.errors.ResourceLimitError` and changes nothing.  "The held ones after the first
boundary" puts the held keepalives (if any) right after the first message (or stack CRLF) that ends inside the
written bytes (if one does), then the rest of the bytes.  Dropping on an unframeable write is why nothing is
ever held in a DEAD state; cleanup (``sipIdle``, ``withdraw``) never fails there.  An empty ``sipWrite``
returns no chunk.

Out of scope: the arbiter writes nothing itself and knows nothing of time or of what a keepalive means; the
Twisted shell (``protocols.py``) writes what it returns, and the engine (:mod:`twisted_sipnat.core.flows`) decides
when a keepalive is due.

What is returned: ``sipWrite`` returns a list of chunks to write in order, each either :class:`SIPBytes`
(the stack's bytes) or :class:`Keepalive` (a released keepalive, with the ``key`` it was offered under); both
have ``.data``, the bytes to write.  ``sipIdle`` returns :class:`Keepalive`\\ s, which are ``(key, data)``
tuples.
"""

from __future__ import annotations

import enum
import textwrap
from types import MappingProxyType
from typing import Dict, FrozenSet, Hashable, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

from twisted_sipnat.core.sipframing import DEFAULT_MAX_MESSAGE_SIZE, OutgoingTracker, SIPFramingError
from twisted_sipnat.errors import ArbitrationError, ResourceLimitError

__all__ = [
    "Arbiter",
    "SIPBytes",
    "Keepalive",
    "Chunk",
    "DEFAULT_MAX_HELD",
    "State",
    "Input",
    "Effect",
    "TABLE",
    "INPUT_EFFECTS",
    "ArbitrationError",
    "transition",
    "renderTable",
]

DEFAULT_MAX_HELD = 10_000


class SIPBytes(NamedTuple):
    """Bytes the SIP stack wrote, to be written as they are."""

    data: bytes


class Keepalive(NamedTuple):
    """A held keepalive released for writing now; ``key`` is the context it was offered for."""

    key: Hashable
    data: bytes


Chunk = Union[SIPBytes, Keepalive]

# What SIPBytes(data) calls, without the Python frame of the NamedTuple's generated __new__: the chunk of every
# SIP write is made with it (about 100 ns of a 300 ns datagram write, more than the table lookup costs).
_tupleNew = tuple.__new__


# IntEnum rather than Enum: the table is a dict keyed by (State, Input) tuples, and int's C-level hash keeps
# that lookup as cheap as the attribute tests it replaced (Enum.__hash__ is a Python function).
class State(enum.IntEnum):
    """The arbiter's state: owner (``IDLE`` / ``BUSY``) and position (``BOUNDARY`` / ``MID`` / ``DEAD``)."""

    IDLE_BOUNDARY = 0
    IDLE_MID = 1
    BUSY_BOUNDARY = 2
    BUSY_MID = 3
    IDLE_DEAD = 4
    BUSY_DEAD = 5


class Input(enum.IntEnum):
    """What happens to the arbiter: one of its four calls, ``sipWrite`` told apart by what the framer saw."""

    OFFER = 0
    WRITE_WHOLE = 1
    WRITE_PARTIAL = 2
    WRITE_UNFRAMEABLE = 3
    STACK_IDLE = 4
    STACK_BUSY = 5
    WITHDRAW = 6


class Effect(enum.Enum):
    """What the arbiter does for one input; the value says it in words (the docstring table uses it)."""

    WRITE_NOW = "True: the caller writes the keepalive now"
    HOLD = "held (False)"
    SIP = "SIP bytes"
    SIP_RELEASING = "SIP bytes; the held ones after the first boundary"
    RELEASE = "every held keepalive, in order"
    DROP = "the key's held keepalive dropped"
    NOTHING = "nothing"
    KILL = "``SIPFramingError``, held dropped"
    REFUSE = "``SIPFramingError``"


_IB, _IM, _BB, _BM, _ID, _BD = State
_OFFER, _WRITE_WHOLE, _WRITE_PARTIAL, _WRITE_UNFRAMEABLE, _STACK_IDLE, _STACK_BUSY, _WITHDRAW = Input
_WRITE_NOW, _HOLD, _SIP, _SIP_RELEASING, _RELEASE, _DROP, _NOTHING, _KILL, _REFUSE = Effect

_TABLE: Dict[Tuple[State, Input], Tuple[Effect, State]] = {
    # offer: write now only on a free socket; a dead stream refuses.
    (_IB, _OFFER): (_WRITE_NOW, _IB),
    (_IM, _OFFER): (_HOLD, _IM),
    (_BB, _OFFER): (_HOLD, _BB),
    (_BM, _OFFER): (_HOLD, _BM),
    (_ID, _OFFER): (_REFUSE, _ID),
    (_BD, _OFFER): (_REFUSE, _BD),
    # sipWrite ending at a boundary: held keepalives follow the first message it completes, if the stack is idle.
    (_IB, _WRITE_WHOLE): (_SIP, _IB),
    (_IM, _WRITE_WHOLE): (_SIP_RELEASING, _IB),
    (_BB, _WRITE_WHOLE): (_SIP, _BB),
    (_BM, _WRITE_WHOLE): (_SIP, _BB),
    # sipWrite ending inside a message (streams only).
    (_IB, _WRITE_PARTIAL): (_SIP, _IM),
    (_IM, _WRITE_PARTIAL): (_SIP_RELEASING, _IM),
    (_BB, _WRITE_PARTIAL): (_SIP, _BM),
    (_BM, _WRITE_PARTIAL): (_SIP, _BM),
    # sipWrite the framer rejects (streams only): terminal.
    (_IB, _WRITE_UNFRAMEABLE): (_KILL, _ID),
    (_IM, _WRITE_UNFRAMEABLE): (_KILL, _ID),
    (_BB, _WRITE_UNFRAMEABLE): (_KILL, _BD),
    (_BM, _WRITE_UNFRAMEABLE): (_KILL, _BD),
    (_ID, _WRITE_UNFRAMEABLE): (_REFUSE, _ID),
    (_BD, _WRITE_UNFRAMEABLE): (_REFUSE, _BD),
    # sipIdle(True): the held keepalives go out when the socket becomes free at a boundary.
    (_IB, _STACK_IDLE): (_NOTHING, _IB),
    (_IM, _STACK_IDLE): (_NOTHING, _IM),
    (_BB, _STACK_IDLE): (_RELEASE, _IB),
    (_BM, _STACK_IDLE): (_NOTHING, _IM),
    (_ID, _STACK_IDLE): (_NOTHING, _ID),
    (_BD, _STACK_IDLE): (_NOTHING, _ID),
    # sipIdle(False): the stack claims the socket, the position stays.
    (_IB, _STACK_BUSY): (_NOTHING, _BB),
    (_IM, _STACK_BUSY): (_NOTHING, _BM),
    (_BB, _STACK_BUSY): (_NOTHING, _BB),
    (_BM, _STACK_BUSY): (_NOTHING, _BM),
    (_ID, _STACK_BUSY): (_NOTHING, _BD),
    (_BD, _STACK_BUSY): (_NOTHING, _BD),
    # withdraw: cleanup, never fails.
    (_IB, _WITHDRAW): (_DROP, _IB),
    (_IM, _WITHDRAW): (_DROP, _IM),
    (_BB, _WITHDRAW): (_DROP, _BB),
    (_BM, _WITHDRAW): (_DROP, _BM),
    (_ID, _WITHDRAW): (_NOTHING, _ID),
    (_BD, _WITHDRAW): (_NOTHING, _BD),
}

TABLE: Mapping[Tuple[State, Input], Tuple[Effect, State]] = MappingProxyType(_TABLE)
"""``(state, input) -> (effect, next state)``: every transition the arbiter makes (read-only)."""

INPUT_EFFECTS: Mapping[Input, FrozenSet[Effect]] = MappingProxyType(
    {
        Input.OFFER: frozenset({Effect.WRITE_NOW, Effect.HOLD, Effect.REFUSE}),
        Input.WRITE_WHOLE: frozenset({Effect.SIP, Effect.SIP_RELEASING, Effect.REFUSE}),
        Input.WRITE_PARTIAL: frozenset({Effect.SIP, Effect.SIP_RELEASING, Effect.REFUSE}),
        Input.WRITE_UNFRAMEABLE: frozenset({Effect.KILL, Effect.REFUSE}),
        Input.STACK_IDLE: frozenset({Effect.NOTHING, Effect.RELEASE}),
        Input.STACK_BUSY: frozenset({Effect.NOTHING, Effect.RELEASE}),
        Input.WITHDRAW: frozenset({Effect.DROP, Effect.NOTHING}),
    }
)
"""The effects the method behind each input knows how to do: the table names no other (a test checks it)."""

# The table compiled for the methods: one row per state, indexed by the input's number, each entry the effect,
# the next state and the next state's row (a pair missing from the table has effect None and stays put).  A
# list index is a third of the cost of hashing a (state, input) tuple, and offer and sipWrite run for every
# keepalive and every datagram; the rows are made from _TABLE here and nowhere else, so they cannot disagree.
_Row = List[Tuple[Optional[Effect], State, "_Row"]]
_ROWS: Dict[State, _Row] = {state: [] for state in State}
for _state, _row in _ROWS.items():
    for _event in Input:
        _effect, _next = _TABLE.get((_state, _event), (None, _state))
        _row.append((_effect, _next, _ROWS[_next]))
del _state, _row, _event, _effect, _next
_OFFER_AT, _WHOLE_AT, _PARTIAL_AT, _UNFRAMEABLE_AT, _IDLE_AT, _BUSY_AT, _WITHDRAW_AT = (int(i) for i in Input)

_BUSY: FrozenSet[State] = frozenset({State.BUSY_BOUNDARY, State.BUSY_MID, State.BUSY_DEAD})
_AT_BOUNDARY: FrozenSet[State] = frozenset({State.IDLE_BOUNDARY, State.BUSY_BOUNDARY})
_DEAD: FrozenSet[State] = frozenset({State.IDLE_DEAD, State.BUSY_DEAD})

_INPUT_TEXT: Mapping[Input, str] = MappingProxyType(
    {
        Input.OFFER: "``offer``",
        Input.WRITE_WHOLE: "``sipWrite`` ends whole",
        Input.WRITE_PARTIAL: "``sipWrite`` ends partial",
        Input.WRITE_UNFRAMEABLE: "``sipWrite`` unframeable",
        Input.STACK_IDLE: "``sipIdle(True)``",
        Input.STACK_BUSY: "``sipIdle(False)``",
        Input.WITHDRAW: "``withdraw``",
    }
)





def transition(state: State, event: Input) -> Tuple[Effect, State]:
    """``(effect, next state)`` for ``event`` in ``state``; :class:`ArbitrationError` if the table has none."""
    try:
        return _TABLE[state, event]
    except KeyError:
        raise ArbitrationError(state, event) from None


def renderTable() -> str:
    """The transition table as the reStructuredText table the module docstring shows."""
    rows = [("state", "input", "effect", "next state")]
    for event in Input:
        for state in State:
            entry = _TABLE.get((state, event))
            if entry is not None:
                rows.append((state.name, _INPUT_TEXT[event], entry[0].value, entry[1].name))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    rule = "  ".join("=" * w for w in widths)

    def line(row: Tuple[str, str, str, str]) -> str:
        return "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()

    out = [rule, line(rows[0]), rule, *(line(r) for r in rows[1:]), rule]
    missing = [(s, i) for i in Input for s in State if (s, i) not in _TABLE]
    if missing:
        text = "Not in the table (:class:`ArbitrationError`): " + ", ".join(
            f"{i.name} in {s.name}" for s, i in missing
        )
        out += ["", *textwrap.wrap(text + ".", 110)]
    return "\n".join(out)


class Arbiter:
    """
    Arbitrate one shared socket between the SIP stack and the keepalives (see the module docstring).

    ``stream`` selects TCP/TLS framing (keepalives only between whole outgoing SIP messages); ``maxHeld``
    bounds the held keepalives (one per context key); ``maxMessageSize`` bounds one outgoing SIP message.

    Each public call is one input: it looks ``(state, input)`` up in :data:`TABLE` (compiled into one row per
    state), moves to the next state and does the effect; an effect the method does not know, or a pair the
    table lacks, raises :class:`ArbitrationError`.  The lookup is written out in each method (no shared
    helper) because ``offer`` and ``sipWrite`` run for every keepalive and every datagram.
    """

    __slots__ = ("stream", "maxHeld", "_tracker", "_state", "_row", "_held", "_deadReason")

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
        self._state = State.IDLE_BOUNDARY
        self._row = _ROWS[State.IDLE_BOUNDARY]
        self._held: Dict[Hashable, bytes] = {}
        self._deadReason = ""

    @property
    def state(self) -> State:
        """The current :class:`State`."""
        return self._state

    @property
    def canWrite(self) -> bool:
        """True when a keepalive may be written now: the SIP stack is idle and not inside a message."""
        return self._state is _IB

    @property
    def sipBusy(self) -> bool:
        """True between ``sipIdle(False)`` and ``sipIdle(True)``."""
        return self._state in _BUSY

    @property
    def midMessage(self) -> bool:
        """True on a stream while an outgoing SIP message is only partly written (or can no longer be framed)."""
        return self._state not in _AT_BOUNDARY

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
        return self._state in _DEAD

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
        effect, self._state, self._row = self._row[_OFFER_AT]
        if effect is _WRITE_NOW:
            return True
        if effect is _HOLD:
            held = self._held
            if key not in held and len(held) >= self.maxHeld:
                raise ResourceLimitError("held keepalives", self.maxHeld)
            held[key] = payload
            return False
        if effect is _REFUSE:
            raise SIPFramingError(self._deadReason)
        raise ArbitrationError(self._state, Input.OFFER)

    def withdraw(self, key: Hashable) -> bool:
        """Drop the keepalive held for ``key`` (its context was freed or moved); True if there was one."""
        effect, self._state, self._row = self._row[_WITHDRAW_AT]
        if effect is _DROP:
            return self._held.pop(key, None) is not None
        if effect is _NOTHING:
            return False
        raise ArbitrationError(self._state, Input.WITHDRAW)

    def sipIdle(self, idle: bool) -> List[Keepalive]:
        """
        The SIP stack releases (``True``) or claims (``False``) the socket.  On release, returns the held
        keepalives to write now, in order, unless a SIP message is still partly written on a stream (then the
        write that completes it releases them).
        """
        effect, self._state, self._row = self._row[_IDLE_AT if idle else _BUSY_AT]
        if effect is _NOTHING:
            return []
        if effect is _RELEASE:
            return self._release() if self._held else []
        raise ArbitrationError(self._state, Input.STACK_IDLE if idle else Input.STACK_BUSY)

    def sipWrite(self, data: bytes) -> List[Chunk]:
        """
        The SIP stack writes ``data``; return the chunks to write, in order: the SIP bytes, split at the first
        message boundary where held keepalives may go, with those keepalives between.

        Raises :class:`SIPFramingError` when the stack's output cannot be framed (a message over
        ``maxMessageSize`` or a malformed Content-Length); nothing of ``data`` is returned, held keepalives
        are dropped and the arbiter is dead: the shell must close the connection.
        """
        tracker = self._tracker
        if tracker is None:
            # A datagram is a whole message.  The common effect is done in place, the others by _writeEffect,
            # so that the write of every SIP datagram costs one row lookup more than a bare list of one chunk.
            effect, self._state, self._row = self._row[_WHOLE_AT]
            if effect is _SIP:
                return [_tupleNew(SIPBytes, (data,))] if data else []
            return self._writeEffect(effect, _WHOLE_AT, data, (), None)
        try:
            offsets = tracker.feed(data)
        except SIPFramingError as e:  # a dead tracker raises again: every write there is unframeable
            effect, self._state, self._row = self._row[_UNFRAMEABLE_AT]
            return self._writeEffect(effect, _UNFRAMEABLE_AT, data, (), e)
        event = _WHOLE_AT if tracker.atBoundary else _PARTIAL_AT
        effect, self._state, self._row = self._row[event]
        if effect is _SIP:
            return [_tupleNew(SIPBytes, (data,))] if data else []
        return self._writeEffect(effect, event, data, offsets, None)

    def _writeEffect(
        self,
        effect: Optional[Effect],
        event: int,
        data: bytes,
        offsets: Sequence[int],
        error: Optional[SIPFramingError],
    ) -> List[Chunk]:
        """Do the effect the table named for a ``sipWrite`` (``event``), after the state moved."""
        if effect is _SIP_RELEASING:
            if not (offsets and self._held):
                return [SIPBytes(data)] if data else []
            # From MID the first boundary is at least one byte in, so data[:cut] is never empty.
            cut = offsets[0]
            chunks: List[Chunk] = [SIPBytes(data[:cut])]
            chunks.extend(self._release())
            if cut < len(data):
                chunks.append(SIPBytes(data[cut:]))
            return chunks
        if effect is _KILL and error is not None:
            self._deadReason = error.reason
            self._held.clear()
            raise error
        if effect is _REFUSE:
            raise SIPFramingError(self._deadReason)
        if effect is _SIP:
            return [SIPBytes(data)] if data else []
        raise ArbitrationError(self._state, Input(event))
