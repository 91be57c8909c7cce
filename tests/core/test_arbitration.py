"""
Tests for twisted_sipnat.core.arbitration: who may write to a socket shared by the SIP stack and the keepalives.

The invariants (issue 8): never a keepalive write while the SIP stack holds the socket, never one inside an
outgoing SIP message on a stream, at most one held keepalive per context, released in order.
"""

from __future__ import annotations

from random import Random
from typing import Dict, Hashable, List, Sequence, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from twisted_sipnat.core.arbitration import Arbiter, Chunk, Keepalive, SIPBytes
from twisted_sipnat.core.sipframing import IncomingSplitter, Ping, SIPData, SIPFramingError
from twisted_sipnat.errors import ResourceLimitError

PING = b"\r\n\r\n"


def _message(body: bytes = b"", method: bytes = b"OPTIONS") -> bytes:
    return (
        method + b" sip:example.com SIP/2.0\r\nCall-ID: 1\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


MSG = _message(b"v=0\r\n\r\nx")

_bodyPieces = st.sampled_from([b"\r\n", b"\r\n\r\n", b"\r", b"\n", b"v=0", b"x"])
messages = st.builds(
    _message,
    st.lists(_bodyPieces | st.binary(max_size=8), max_size=6).map(b"".join),
    st.sampled_from([b"OPTIONS", b"INVITE", b"SIP/2.0 200 OK\r\nX:"]),
)
# What the SIP stack writes: messages, and now and then a CRLF of its own between them.
stackItems = messages | st.just(b"\r\n")
keys = st.sampled_from(["a", "b", "c", ("flow", 1), 7])
payloads = st.binary(min_size=1, max_size=24)


# -- examples -------------------------------------------------------------------------------------------------


def test_idleSocketWritesAtOnce() -> None:
    arbiter = Arbiter(stream=True)
    assert arbiter.canWrite
    assert arbiter.offer("a", PING) is True
    assert arbiter.held == 0


def test_busyHoldsOnePerKeyInOrderAndReleasesOnIdle() -> None:
    arbiter = Arbiter(stream=False)
    assert arbiter.sipIdle(False) == []
    assert not arbiter.canWrite
    assert arbiter.offer("a", b"1") is False
    assert arbiter.offer("b", b"2") is False
    assert arbiter.offer("a", b"3") is False  # replaces a's payload, keeps a's place
    assert arbiter.held == 2
    assert arbiter.heldKeys == ("a", "b")
    assert arbiter.sipWrite(MSG) == [SIPBytes(MSG)]  # the SIP stack still holds the socket
    assert arbiter.sipIdle(True) == [Keepalive("a", b"3"), Keepalive("b", b"2")]
    assert arbiter.held == 0
    assert arbiter.canWrite
    assert arbiter.sipIdle(True) == []


def test_withdraw() -> None:
    arbiter = Arbiter(stream=False)
    arbiter.sipIdle(False)
    arbiter.offer("a", b"1")
    arbiter.offer("b", b"2")
    assert arbiter.withdraw("a") is True
    assert arbiter.withdraw("a") is False
    assert arbiter.sipIdle(True) == [("b", b"2")]


def test_midMessageHoldsUntilTheWriteThatCompletesIt() -> None:
    """On a stream the socket is taken while a SIP message is partly written, even with the stack idle; the
    write that completes the message carries the held keepalives right after it, synchronously."""
    arbiter = Arbiter(stream=True)
    assert arbiter.sipWrite(MSG[:10]) == [SIPBytes(MSG[:10])]
    assert arbiter.midMessage
    assert not arbiter.canWrite
    assert arbiter.offer("a", PING) is False
    assert arbiter.sipIdle(True) == []  # still inside the message
    rest = MSG[10:] + MSG[:5]
    cut = len(MSG) - 10
    assert arbiter.sipWrite(rest) == [SIPBytes(rest[:cut]), Keepalive("a", PING), SIPBytes(rest[cut:])]
    assert arbiter.held == 0


def test_busyMidMessageThenIdleAtBoundary() -> None:
    arbiter = Arbiter(stream=True)
    arbiter.sipIdle(False)
    arbiter.sipWrite(MSG[:20])
    arbiter.offer("a", PING)
    assert arbiter.sipWrite(MSG[20:]) == [SIPBytes(MSG[20:])]  # whole now, but the stack still holds it
    assert arbiter.sipIdle(True) == [Keepalive("a", PING)]


def test_stackCRLFsAreBoundaries() -> None:
    arbiter = Arbiter(stream=True)
    arbiter.sipWrite(b"\r")
    assert not arbiter.canWrite  # half a CRLF: a ping here would garble it
    assert arbiter.offer("a", PING) is False
    assert arbiter.sipWrite(b"\n" + MSG) == [SIPBytes(b"\n"), Keepalive("a", PING), SIPBytes(MSG)]


def test_maxHeld() -> None:
    arbiter = Arbiter(stream=False, maxHeld=2)
    arbiter.sipIdle(False)
    arbiter.offer(1, b"x")
    arbiter.offer(2, b"x")
    arbiter.offer(2, b"y")  # replacing is not growing
    with pytest.raises(ResourceLimitError) as caught:
        arbiter.offer(3, b"x")
    assert caught.value.limit == 2
    assert arbiter.heldKeys == (1, 2)
    with pytest.raises(ValueError):
        Arbiter(stream=False, maxHeld=0)


def test_unframeableOutputKillsTheArbiter() -> None:
    arbiter = Arbiter(stream=True, maxMessageSize=64)
    arbiter.sipWrite(MSG[:5])
    arbiter.offer("a", PING)
    with pytest.raises(SIPFramingError) as caught:
        arbiter.sipWrite(b"X" * 100)
    assert "header block" in caught.value.reason
    assert arbiter.dead
    assert arbiter.held == 0
    assert not arbiter.canWrite
    with pytest.raises(SIPFramingError):
        arbiter.sipWrite(MSG)
    with pytest.raises(SIPFramingError):
        arbiter.offer("a", PING)
    assert arbiter.sipIdle(True) == []
    assert arbiter.withdraw("a") is False


def test_emptyWrite() -> None:
    assert Arbiter(stream=True).sipWrite(b"") == []


# -- property: any interleaving -------------------------------------------------------------------------------


@st.composite
def scripts(draw: st.DrawFn) -> Tuple[List[bytes], List[Tuple[str, object, object]]]:
    items = draw(st.lists(stackItems, max_size=6))
    wire = b"".join(items)
    cuts = sorted(set(draw(st.lists(st.integers(0, len(wire)), max_size=8))) | {0, len(wire)})
    writes = [("write", wire[a:b], None) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]
    others = draw(
        st.lists(
            st.one_of(
                st.tuples(st.just("offer"), keys, payloads),
                st.tuples(st.just("idle"), st.booleans(), st.none()),
                st.tuples(st.just("withdraw"), keys, st.none()),
            ),
            max_size=15,
        )
    )
    ops: List[Tuple[str, object, object]] = []
    # Interleave the writes (in order) with the other operations at drawn positions.
    for op in others:
        ops.insert(draw(st.integers(0, len(ops))), op)
    for w in writes:
        ops.insert(draw(st.integers(0, len(ops))), w)
    # insert() keeps relative order of writes only if each goes after the previous one: re-sort them.
    wIndex = [k for k, op in enumerate(ops) if op[0] == "write"]
    for k, w in zip(wIndex, writes, strict=True):
        ops[k] = w
    return items, ops


def _boundaries(items: Sequence[bytes]) -> set[int]:
    out = {0}
    pos = 0
    for i in items:
        pos += len(i)
        out.add(pos)
    return out


@given(script=scripts(), stream=st.booleans())
def test_anyInterleavingKeepsMessagesWhole(
    script: Tuple[List[bytes], List[Tuple[str, object, object]]], stream: bool
) -> None:
    """The output is the SIP stream, unchanged, with keepalives only between whole messages, never while the
    stack holds the socket, one per key, released in the order they were first held."""
    items, ops = script
    arbiter = Arbiter(stream=stream)
    bounds = _boundaries(items)
    sipPos = 0
    busy = False
    model: Dict[Hashable, bytes] = {}
    sipOut = bytearray()

    def emitKeepalives(released: Sequence[Keepalive]) -> None:
        assert list(released) == [Keepalive(k, v) for k, v in model.items()]
        assert not busy
        if stream:
            assert sipPos in bounds
        model.clear()

    for kind, a, b in ops:
        if kind == "write":
            assert isinstance(a, bytes)
            chunks = arbiter.sipWrite(a)
            pending: List[Keepalive] = []
            for chunk in chunks:
                if isinstance(chunk, Keepalive):
                    pending.append(chunk)
                else:
                    if pending:
                        emitKeepalives(pending)
                        pending = []
                    sipOut += chunk.data
                    sipPos += len(chunk.data)
            if pending:
                emitKeepalives(pending)
            if not stream:
                bounds.add(sipPos)
        elif kind == "offer":
            assert isinstance(b, bytes)
            if arbiter.offer(a, b):  # type: ignore[arg-type]
                assert not model and not busy
                assert not stream or sipPos in bounds
            else:
                assert busy or (stream and sipPos not in bounds)
                model[a] = b  # type: ignore[index]
        elif kind == "idle":
            busy = not a
            released = arbiter.sipIdle(bool(a))
            if released:
                emitKeepalives(released)
            else:
                assert busy or not model or (stream and sipPos not in bounds)
        else:
            assert arbiter.withdraw(a) == (a in model)  # type: ignore[arg-type]
            model.pop(a, None)  # type: ignore[call-overload]
        assert arbiter.heldKeys == tuple(model)
        assert arbiter.canWrite == (not busy and (not stream or sipPos in bounds))
    assert bytes(sipOut) == b"".join(items)


# -- stateful: the arbiter as a machine (issue 8) -------------------------------------------------------------


class ArbiterMachine(RuleBasedStateMachine):
    """Random sequences of sipIdle, partial SIP writes, offers and withdraws against a reference model."""

    stream = True

    def __init__(self) -> None:
        super().__init__()
        self.arbiter = Arbiter(stream=self.stream, maxHeld=3)
        self.toWrite = b""  # SIP bytes the stack has queued but not yet written
        self.queued = 0  # SIP bytes queued so far
        self.bounds = {0}  # positions in the SIP stream where a keepalive may go
        self.sipPos = 0
        self.busy = False
        self.model: Dict[Hashable, bytes] = {}
        self.output: List[Tuple[str, Hashable, bytes]] = []

    def _keepalivesWritten(self, released: Sequence[Keepalive]) -> None:
        assert not self.busy, "keepalive written while the SIP stack holds the socket"
        assert not self.stream or self.sipPos in self.bounds, "keepalive inside a SIP message"
        assert list(released) == [Keepalive(k, v) for k, v in self.model.items()]
        self.model.clear()
        self.output.extend(("keepalive", k, v) for k, v in released)

    @initialize(busy=st.booleans())
    def start(self, busy: bool) -> None:
        self.busy = busy
        assert self.arbiter.sipIdle(not busy) == []

    @rule(item=stackItems)
    def stackQueues(self, item: bytes) -> None:
        self.toWrite += item
        self.queued += len(item)
        self.bounds.add(self.queued)

    @rule(n=st.integers(1, 300), item=stackItems)
    def stackWrites(self, n: int, item: bytes) -> None:
        if not self.toWrite:
            self.stackQueues(item)
        data, self.toWrite = self.toWrite[:n], self.toWrite[n:]
        if not self.stream:
            data, self.toWrite = data + self.toWrite, b""
        pending: List[Keepalive] = []
        written = bytearray()
        start = self.sipPos
        heldBefore = bool(self.model)
        releasedAt = None
        for chunk in self.arbiter.sipWrite(data):
            if isinstance(chunk, Keepalive):
                pending.append(chunk)
                releasedAt = self.sipPos
                continue
            if pending:
                self._keepalivesWritten(pending)
                pending = []
            written += chunk.data
            self.sipPos += len(chunk.data)
            self.output.append(("sip", None, chunk.data))
        if pending:
            self._keepalivesWritten(pending)
        assert bytes(written) == data
        if not self.stream:
            self.bounds.add(self.sipPos)
        # Held keepalives go out at the first boundary of this write when the stack is idle: right after the
        # message they waited for, not later.
        if heldBefore and not self.busy and self.stream:
            inside = [p for p in self.bounds if start < p <= self.sipPos]
            assert releasedAt == (min(inside) if inside else None)
        else:
            assert releasedAt is None

    @rule(idle=st.booleans())
    def stackIdle(self, idle: bool) -> None:
        self.busy = not idle
        released = self.arbiter.sipIdle(idle)
        if released:
            self._keepalivesWritten(released)
        elif idle and (not self.stream or self.sipPos in self.bounds):
            assert not self.model

    @rule(key=keys, payload=payloads)
    def keepaliveDue(self, key: Hashable, payload: bytes) -> None:
        mayWrite = not self.busy and (not self.stream or self.sipPos in self.bounds)
        if key not in self.model and len(self.model) >= self.arbiter.maxHeld and not mayWrite:
            with pytest.raises(ResourceLimitError):
                self.arbiter.offer(key, payload)
            return
        if self.arbiter.offer(key, payload):
            assert mayWrite and not self.model
            self._keepalivesWritten([])
            self.output.append(("keepalive", key, payload))
        else:
            assert not mayWrite
            self.model[key] = payload

    @rule(key=keys)
    def contextFreed(self, key: Hashable) -> None:
        assert self.arbiter.withdraw(key) == (key in self.model)
        self.model.pop(key, None)

    @invariant()
    def heldMatchesModel(self) -> None:
        assert self.arbiter.heldKeys == tuple(self.model)
        assert self.arbiter.held <= self.arbiter.maxHeld

    @invariant()
    def canWriteMatchesModel(self) -> None:
        mayWrite = not self.busy and (not self.stream or self.sipPos in self.bounds)
        assert self.arbiter.canWrite == mayWrite
        if mayWrite:
            assert not self.model, "keepalive held while the socket is free"

    @invariant()
    def sipBytesUnchanged(self) -> None:
        sip = b"".join(data for kind, _, data in self.output if kind == "sip")
        assert len(sip) == self.sipPos


class DatagramArbiterMachine(ArbiterMachine):
    stream = False


TestStreamArbiter = ArbiterMachine.TestCase
TestStreamArbiter.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
TestDatagramArbiter = DatagramArbiterMachine.TestCase
TestDatagramArbiter.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)


def _written(chunks: Sequence[Chunk]) -> bytes:
    return b"".join(c.data for c in chunks)


def test_chunksCarryData() -> None:
    arbiter = Arbiter(stream=True)
    arbiter.sipWrite(MSG[:3])
    arbiter.offer("k", PING)
    chunks = arbiter.sipWrite(MSG[3:])
    assert _written(chunks) == MSG[3:] + PING
    assert [type(c).__name__ for c in chunks] == ["SIPBytes", "Keepalive"]


@given(
    items=st.lists(messages, max_size=6),
    cuts=st.lists(st.integers(0, 2000), max_size=8),
    ops=st.lists(st.tuples(st.sampled_from(["offer", "idle", "withdraw"]), keys, st.booleans()), max_size=12),
    order=st.randoms(use_true_random=False),
)
def test_receiverSeesWholeMessagesAndPings(
    items: List[bytes], cuts: List[int], ops: List[Tuple[str, Hashable, bool]], order: Random
) -> None:
    """End to end: what the arbiter lets out on a stream, read by a server-role IncomingSplitter, is exactly
    the SIP stack's bytes plus one Ping per keepalive written: no ping ever landed inside a message."""
    wire = b"".join(items)
    points = sorted({0, len(wire), *(c % (len(wire) + 1) for c in cuts)})
    writes: List[Tuple[str, Hashable, bool]] = [
        ("write", wire[a:b], False) for a, b in zip(points, points[1:], strict=False) if b > a
    ]
    script = list(ops)
    for w in writes:  # keep the writes in order, the other operations anywhere between them
        script.insert(order.randint(0, len(script)), w)
    wIndex = [k for k, op in enumerate(script) if op[0] == "write"]
    for k, w in zip(wIndex, writes, strict=True):
        script[k] = w
    script.append(("idle", None, True))

    arbiter = Arbiter(stream=True)
    out = bytearray()
    pings = 0
    for kind, a, flag in script:
        if kind == "write":
            assert isinstance(a, bytes)
            for chunk in arbiter.sipWrite(a):
                out += chunk.data
                pings += isinstance(chunk, Keepalive)
        elif kind == "offer":
            if arbiter.offer(a, PING):
                out += PING
                pings += 1
        elif kind == "idle":
            released = arbiter.sipIdle(flag)
            out += b"".join(k.data for k in released)
            pings += len(released)
        else:
            arbiter.withdraw(a)
    assert arbiter.held == 0  # the final sipIdle(True) at a boundary released everything
    events = IncomingSplitter("server").feed(bytes(out))
    assert b"".join(e.data for e in events if isinstance(e, SIPData)) == wire
    assert sum(isinstance(e, Ping) for e in events) == pings
