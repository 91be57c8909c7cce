"""
The arbiter (twisted_sipnat.core.arbitration) as the transition table it claims to be.

Two walks check the same thing from two sides:

- every reachable ``(state, input)`` pair, one by one, reached through the public calls only: the arbiter lands
  in the state :data:`TABLE` names and does the effect it names;
- hypothesis's rule-based machine: random runs of offers, withdraws, ``sipIdle``, SIP writes cut anywhere and
  unframeable SIP output, against a reference model written without the table (owner, position in the SIP
  stream, dead or not, the held queue).  After every step the arbiter's state and the table's prediction for
  the input the model saw must agree, and the invariants hold: keepalives held only while not ``canWrite``, at
  most one per key, released in the order first held; the SIP bytes come out unchanged (never reordered, never
  lost, never split inside a message on a stream); DEAD is terminal.
"""

from __future__ import annotations

from typing import Callable, Dict, Hashable, List, Optional, Sequence, Set, Tuple

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from twisted_sipnat.core import arbitration
from twisted_sipnat.core.arbitration import (
    INPUT_EFFECTS,
    TABLE,
    Arbiter,
    ArbitrationError,
    Chunk,
    Effect,
    Input,
    Keepalive,
    SIPBytes,
    State,
    renderTable,
    transition,
)
from twisted_sipnat.core.sipframing import SIPFramingError
from twisted_sipnat.errors import NATTraversalError, ResourceLimitError

PING = b"\r\n\r\n"
MSG = b"OPTIONS sip:example.com SIP/2.0\r\nCall-ID: 1\r\nContent-Length: 3\r\n\r\nv=0"
CUT = 10  # MSG[:CUT] ends inside the start line
# Unframeable: a malformed Content-Length, found when the header block's final CRLFCRLF is written.
BAD = b"BAD sip:example.com SIP/2.0\r\nContent-Length: zz\r\n\r\n"

_DEAD = {State.IDLE_DEAD, State.BUSY_DEAD}
_BUSY = {State.BUSY_BOUNDARY, State.BUSY_MID, State.BUSY_DEAD}
_MID = {State.IDLE_MID, State.BUSY_MID}


def _stateOf(busy: bool, mid: bool, dead: bool) -> State:
    """The state named by the reference model's three facts (the model knows nothing of the table)."""
    position = "DEAD" if dead else "MID" if mid else "BOUNDARY"
    return State[("BUSY_" if busy else "IDLE_") + position]


# -- the table itself -----------------------------------------------------------------------------------------


def test_docstringShowsTheCodesTable() -> None:
    """The module docstring's table is the one the code runs (regenerate it with renderTable())."""
    assert arbitration.__doc__ is not None
    assert renderTable() in arbitration.__doc__


def test_tableNamesOnlyEffectsItsMethodsDo() -> None:
    for (state, event_), (effect, following) in TABLE.items():
        assert effect in INPUT_EFFECTS[event_], (state, event_, effect)
        assert isinstance(following, State)


def test_missingPairRaises() -> None:
    missing = [(s, i) for s in State for i in Input if (s, i) not in TABLE]
    assert set(missing) == {
        (State.IDLE_DEAD, Input.WRITE_WHOLE),
        (State.BUSY_DEAD, Input.WRITE_WHOLE),
        (State.IDLE_DEAD, Input.WRITE_PARTIAL),
        (State.BUSY_DEAD, Input.WRITE_PARTIAL),
    }
    for state, event_ in missing:
        with pytest.raises(ArbitrationError) as caught:
            transition(state, event_)
        assert isinstance(caught.value, NATTraversalError)
        assert (caught.value.state, caught.value.input) == (state, event_)
        assert event_.name in str(caught.value)
    assert transition(State.BUSY_BOUNDARY, Input.STACK_IDLE) == (Effect.RELEASE, State.IDLE_BOUNDARY)


def test_tableRules() -> None:
    """The rules of the module docstring, checked on the table rather than restated in it."""
    for (state, event_), (effect, following) in TABLE.items():
        dead = state in _DEAD
        # DEAD is terminal, and nothing but an unframeable write enters it.
        assert (following in _DEAD) == (dead or event_ is Input.WRITE_UNFRAMEABLE)
        # The owner follows sipIdle and nothing else.
        if event_ is Input.STACK_IDLE:
            assert following not in _BUSY
        elif event_ is Input.STACK_BUSY:
            assert following in _BUSY
        else:
            assert (following in _BUSY) == (state in _BUSY)
        # Only writes move the position.
        if event_ in (Input.OFFER, Input.WITHDRAW, Input.STACK_IDLE, Input.STACK_BUSY) and not dead:
            assert (following in _MID) == (state in _MID)
        if event_ is Input.WRITE_WHOLE:
            assert following in (State.IDLE_BOUNDARY, State.BUSY_BOUNDARY)
        if event_ is Input.WRITE_PARTIAL:
            assert following in _MID
        # A keepalive is written at once only on a free socket; anything released leaves the socket free.
        assert (effect is Effect.WRITE_NOW) == (state is State.IDLE_BOUNDARY and event_ is Input.OFFER)
        if effect in (Effect.RELEASE, Effect.SIP_RELEASING):
            assert following not in _BUSY
        # Whatever refuses refuses for being dead.
        assert (effect is Effect.REFUSE) == (dead and event_ in (Input.OFFER, Input.WRITE_UNFRAMEABLE))


# -- every reachable (state, input) pair, through the public calls --------------------------------------------

def _unframeable(arbiter: Arbiter) -> None:
    with pytest.raises(SIPFramingError):
        arbiter.sipWrite(BAD)


def _reach(arbiter: Arbiter, state: State) -> None:
    """Bring a new ``arbiter`` to ``state`` with public calls only."""
    if state in _BUSY:
        arbiter.sipIdle(False)
    if state in _MID:
        arbiter.sipWrite(MSG[:CUT])
    if state in _DEAD:
        _unframeable(arbiter)


def _apply(arbiter: Arbiter, start: State, event_: Input) -> Tuple[str, object]:
    """Do ``event_`` on ``arbiter`` (in ``start``); return what came back: ("return", value) or ("raise", e)."""
    calls: Dict[Input, Callable[[], object]] = {
        Input.OFFER: lambda: arbiter.offer("k", PING),
        Input.WRITE_WHOLE: lambda: arbiter.sipWrite(MSG[CUT:] if start in _MID else MSG),
        # from inside a message: complete it and start the next one, so a boundary is crossed on the way
        Input.WRITE_PARTIAL: lambda: arbiter.sipWrite(MSG[CUT:] + MSG[:CUT] if start in _MID else MSG[:CUT]),
        Input.WRITE_UNFRAMEABLE: lambda: arbiter.sipWrite(BAD),
        Input.STACK_IDLE: lambda: arbiter.sipIdle(True),
        Input.STACK_BUSY: lambda: arbiter.sipIdle(False),
        Input.WITHDRAW: lambda: arbiter.withdraw("h"),
    }
    try:
        return "return", calls[event_]()
    except NATTraversalError as e:
        return "raise", e


def _checkEffect(effect: Effect, outcome: Tuple[str, object], heldBefore: bool, arbiter: Arbiter) -> None:
    kind, value = outcome
    released = [Keepalive("h", b"held")] if heldBefore else []
    if effect is Effect.WRITE_NOW:
        assert outcome == ("return", True)
    elif effect is Effect.HOLD:
        assert outcome == ("return", False)
        assert arbiter.heldKeys[-1] == "k"
    elif effect is Effect.SIP:
        assert kind == "return" and isinstance(value, list)
        assert all(isinstance(c, SIPBytes) for c in value)
        assert arbiter.heldKeys == (("h",) if heldBefore else ())
    elif effect is Effect.SIP_RELEASING:
        assert kind == "return" and isinstance(value, list)
        assert [c for c in value if isinstance(c, Keepalive)] == released
        if heldBefore:
            cut = len(MSG) - CUT  # right after the message that was partly written
            first = value[0]
            assert isinstance(first, SIPBytes) and len(first.data) == cut
            assert value[1] == released[0]
        assert arbiter.held == 0
    elif effect is Effect.RELEASE:
        assert outcome == ("return", released)
        assert arbiter.held == 0
    elif effect is Effect.DROP:
        assert outcome == ("return", heldBefore)
        assert arbiter.held == 0
    elif effect is Effect.NOTHING:
        assert outcome in (("return", []), ("return", False))
    elif effect is Effect.KILL:
        assert kind == "raise" and isinstance(value, SIPFramingError)
        assert arbiter.held == 0
    else:
        assert effect is Effect.REFUSE
        assert kind == "raise" and type(value) is SIPFramingError


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("withHeld", [False, True])
def test_everyReachablePairDoesWhatTheTableSays(stream: bool, withHeld: bool) -> None:
    reachable = [State.IDLE_BOUNDARY, State.BUSY_BOUNDARY] + (
        [State.IDLE_MID, State.BUSY_MID, State.IDLE_DEAD, State.BUSY_DEAD] if stream else []
    )
    inputs = list(Input) if stream else [i for i in Input if i not in (Input.WRITE_PARTIAL, Input.WRITE_UNFRAMEABLE)]
    walked: Set[Tuple[State, Input]] = set()
    for start in reachable:
        for event_ in inputs:
            if (start, event_) not in TABLE:
                continue  # IDLE_DEAD / BUSY_DEAD with a framed write: no call can produce it
            arbiter = Arbiter(stream=stream)
            _reach(arbiter, start)
            heldBefore = withHeld and not arbiter.canWrite and not arbiter.dead
            if heldBefore:
                assert arbiter.offer("h", b"held") is False
            assert arbiter.state is start
            effect, following = TABLE[start, event_]
            outcome = _apply(arbiter, start, event_)
            assert arbiter.state is following, (start, event_)
            _checkEffect(effect, outcome, heldBefore, arbiter)
            walked.add((start, event_))
    assert walked == {(s, i) for (s, i) in TABLE if s in reachable and i in inputs}


def test_fullQueueRaisesAndChangesNothing() -> None:
    arbiter = Arbiter(stream=True, maxHeld=1)
    arbiter.sipWrite(MSG[:CUT])
    arbiter.offer("a", PING)
    with pytest.raises(ResourceLimitError):
        arbiter.offer("b", PING)
    assert arbiter.state is State.IDLE_MID
    assert arbiter.heldKeys == ("a",)


def test_deadOwnerStillFollowsSipIdle() -> None:
    """sipBusy tells what the stack last said, dead or not (as before the table)."""
    arbiter = Arbiter(stream=True)
    _unframeable(arbiter)
    assert arbiter.dead and arbiter.midMessage and not arbiter.sipBusy
    assert arbiter.sipIdle(False) == []
    assert arbiter.sipBusy and arbiter.state is State.BUSY_DEAD
    assert arbiter.sipIdle(True) == []
    assert not arbiter.sipBusy and arbiter.state is State.IDLE_DEAD
    with pytest.raises(SIPFramingError) as caught:
        arbiter.sipWrite(b"")  # even an empty write: nothing can be framed any more
    assert "Content-Length" in caught.value.reason


# -- random walks against a reference model -------------------------------------------------------------------

_bodies = st.lists(st.sampled_from([b"\r\n", b"\r\n\r\n", b"\r", b"\n", b"v=0", b"x"]), max_size=5).map(b"".join)
messages = st.builds(
    lambda body, start: start + b" sip:a SIP/2.0\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body,
    _bodies,
    st.sampled_from([b"OPTIONS", b"INVITE", b"SIP/2.0 200 OK\r\nX:"]),
)
stackItems = messages | st.just(b"\r\n")  # a CRLF of the stack's own between messages
keys = st.sampled_from(["a", "b", "c", ("flow", 1), 7])
payloads = st.binary(min_size=1, max_size=12)


class _ArbitrationMachine(RuleBasedStateMachine):
    """The reference model: owner, position in the stack's output (known from the items it queued), dead."""

    stream = False

    def __init__(self) -> None:
        super().__init__()
        self.arbiter = Arbiter(stream=self.stream, maxHeld=3)
        self.busy = False
        self.dead = False
        self.pending = b""  # what the stack has queued and not written yet
        self.queued = 0  # bytes queued so far
        self.bounds = {0}  # positions in the SIP stream between whole messages
        self.failAt: Optional[int] = None  # the write reaching this position is unframeable
        self.sipPos = 0  # SIP bytes written so far
        self.stackOut = bytearray()  # what the stack wrote, successfully
        self.wire = bytearray()  # SIP bytes that came out of the arbiter
        self.held: Dict[Hashable, bytes] = {}
        self.everDead = False

    # -- the model's view ------------------------------------------------------------------------------------

    @property
    def atBoundary(self) -> bool:
        return not self.stream or self.sipPos in self.bounds

    @property
    def mayWrite(self) -> bool:
        return not self.busy and not self.dead and self.atBoundary

    def expectedState(self) -> State:
        return _stateOf(self.busy, self.stream and not self.atBoundary, self.dead)

    def step(self, before: State, event_: Input) -> Effect:
        """The table's word for what the model saw; the arbiter must have moved where the table says."""
        effect, following = TABLE[before, event_]
        assert self.arbiter.state is following, (before, event_, self.arbiter.state)
        event(f"{before.name} {event_.name}")
        return effect

    def released(self, chunks: Sequence[Keepalive]) -> None:
        assert not self.busy, "keepalive written while the SIP stack holds the socket"
        assert self.atBoundary, "keepalive inside a SIP message"
        assert list(chunks) == [Keepalive(k, v) for k, v in self.held.items()], "release out of order"
        self.held.clear()

    # -- rules -----------------------------------------------------------------------------------------------

    @precondition(lambda self: self.failAt is None)
    @rule(items=st.lists(stackItems, min_size=1, max_size=4))
    def stackQueues(self, items: List[bytes]) -> None:
        for item in items:
            self.pending += item
            self.queued += len(item)
            self.bounds.add(self.queued)

    @rule(n=st.integers(0, 200))
    def stackWrites(self, n: int) -> None:
        data, self.pending = self.pending[:n], self.pending[n:]
        if not self.stream:
            data, self.pending = data + self.pending, b""
        before = self.arbiter.state
        start = self.sipPos
        end = start + len(data)
        if self.dead or (self.failAt is not None and end >= self.failAt):
            with pytest.raises(SIPFramingError):
                self.arbiter.sipWrite(data)
            effect = self.step(before, Input.WRITE_UNFRAMEABLE)
            assert effect is (Effect.REFUSE if self.dead else Effect.KILL)
            self.dead = self.everDead = True
            self.held.clear()
            self.pending = b""
            return
        heldBefore = bool(self.held)
        chunks: List[Chunk] = self.arbiter.sipWrite(data)
        pending: List[Keepalive] = []
        releasedAt: Optional[int] = None
        for chunk in chunks:
            if isinstance(chunk, Keepalive):
                pending.append(chunk)
                releasedAt = self.sipPos
                continue
            assert chunk.data, "an empty SIP chunk"
            if pending:
                self.released(pending)
                pending = []
            self.sipPos += len(chunk.data)
            self.wire += chunk.data
        if pending:
            self.released(pending)
        assert self.sipPos == end, "SIP bytes lost or added"
        self.stackOut += data
        if not self.stream:
            self.bounds.add(end)
        if not data:
            assert chunks == []
            assert self.arbiter.state is before
            return
        effect = self.step(before, Input.WRITE_WHOLE if self.atBoundary else Input.WRITE_PARTIAL)
        # Held keepalives go out right after the first message this write completes, when the stack is idle.
        firstBoundary = min((p for p in self.bounds if start < p <= end), default=None)
        if heldBefore and not self.busy and self.stream and firstBoundary is not None:
            assert effect is Effect.SIP_RELEASING
            assert releasedAt == firstBoundary
        else:
            assert releasedAt is None
            assert effect in (Effect.SIP, Effect.SIP_RELEASING)

    @rule(idle=st.booleans())
    def stackIdle(self, idle: bool) -> None:
        before = self.arbiter.state
        out = self.arbiter.sipIdle(idle)
        self.busy = not idle
        effect = self.step(before, Input.STACK_IDLE if idle else Input.STACK_BUSY)
        if out:
            assert effect is Effect.RELEASE
            self.released(out)
        else:
            assert not (idle and self.mayWrite and self.held), "held keepalives not released on a free socket"

    @rule(key=keys, payload=payloads)
    def keepaliveDue(self, key: Hashable, payload: bytes) -> None:
        before = self.arbiter.state
        if self.dead:
            with pytest.raises(SIPFramingError):
                self.arbiter.offer(key, payload)
            assert self.step(before, Input.OFFER) is Effect.REFUSE
            return
        if not self.mayWrite and key not in self.held and len(self.held) >= self.arbiter.maxHeld:
            with pytest.raises(ResourceLimitError):
                self.arbiter.offer(key, payload)
            assert self.step(before, Input.OFFER) is Effect.HOLD
            return
        written = self.arbiter.offer(key, payload)
        effect = self.step(before, Input.OFFER)
        assert written is self.mayWrite
        if written:
            assert effect is Effect.WRITE_NOW and not self.held
        else:
            assert effect is Effect.HOLD
            self.held[key] = payload

    @rule(key=keys)
    def contextFreed(self, key: Hashable) -> None:
        before = self.arbiter.state
        assert self.arbiter.withdraw(key) is (key in self.held)
        self.step(before, Input.WITHDRAW)
        self.held.pop(key, None)

    # -- invariants ------------------------------------------------------------------------------------------

    @invariant()
    def stateMatchesModel(self) -> None:
        arbiter = self.arbiter
        assert arbiter.state is self.expectedState()
        assert arbiter.sipBusy is self.busy
        assert arbiter.dead is self.dead
        assert arbiter.midMessage is (self.stream and (self.dead or not self.atBoundary))
        assert self.dead or not self.everDead, "DEAD is terminal"

    @invariant()
    def heldOnlyWhileNotFree(self) -> None:
        arbiter = self.arbiter
        assert arbiter.canWrite is self.mayWrite
        assert arbiter.heldKeys == tuple(self.held)
        assert len(set(arbiter.heldKeys)) == arbiter.held <= arbiter.maxHeld
        if arbiter.canWrite or arbiter.dead:
            assert arbiter.held == 0

    @invariant()
    def sipBytesUnchanged(self) -> None:
        assert self.wire == self.stackOut


class DatagramArbitrationMachine(_ArbitrationMachine):
    """On UDP every write is a whole datagram: no MID, no DEAD."""


class StreamArbitrationMachine(_ArbitrationMachine):
    """On a stream writes are cut anywhere, and the stack's output may turn unframeable."""

    stream = True

    @precondition(lambda self: self.failAt is None)
    @rule()
    def stackQueuesUnframeable(self) -> None:
        self.pending += BAD
        self.queued += len(BAD)
        self.failAt = self.queued


TestStreamArbitration = StreamArbitrationMachine.TestCase
TestStreamArbitration.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
TestDatagramArbitration = DatagramArbitrationMachine.TestCase
TestDatagramArbitration.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
