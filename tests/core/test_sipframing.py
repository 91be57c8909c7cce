"""
Tests for twisted_sipnat.core.sipframing: SIP message framing on streams and the RFC 5626 keepalives between
messages, for received bytes (IncomingSplitter) and written bytes (OutgoingTracker).
"""

from __future__ import annotations

from typing import List, Sequence, Union

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twisted_sipnat.core.sipframing import (
    Event,
    IncomingSplitter,
    OutgoingTracker,
    Ping,
    Pong,
    SIPData,
    SIPFramingError,
    contentLength,
    findHeaderEnd,
    headerBlockTooLong,
)
from twisted_sipnat.errors import NATTraversalError

REGISTER = (
    b"REGISTER sip:example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK776asdhds\r\n"
    b"Call-ID: a84b4c76e66710\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

# Pieces bodies are made of: the dangerous ones are the CR/LF sequences that look like keepalives or header
# ends when read without Content-Length.
_bodyPieces = st.sampled_from([b"\r\n", b"\r\n\r\n", b"\r", b"\n", b"v=0", b"x", b"\x00\xff", b"l: 5\r\n"])
bodies = st.lists(_bodyPieces | st.binary(max_size=12), max_size=8).map(b"".join)

startLines = st.sampled_from(
    [
        b"REGISTER sip:example.com SIP/2.0",
        b"INVITE sip:bob@example.com SIP/2.0",
        b"SIP/2.0 200 OK",
        b"OPTIONS sip:l SIP/2.0",
        b"x",
    ]
)

# Headers that must not be mistaken for Content-Length.
otherHeaders = st.sampled_from(
    [
        b"Via: SIP/2.0/TCP 192.0.2.1;branch=z9hG4bK1",
        b"Allow: INVITE, ACK, BYE",
        b"X-Length: 99",
        b"Subject: folded\r\n l: 77",
        b"Supported: l",
        b"Contact: <sip:a@b>;expires=3600",
        b"Lx: 3",
    ]
)


def _contentLengthHeaders(style: str, n: int) -> List[bytes]:
    v = str(n).encode()
    return {
        "long": [b"Content-Length: " + v],
        "lower": [b"content-length:" + v],
        "upper": [b"CONTENT-LENGTH  :  " + v + b"  "],
        "compact": [b"l: " + v],
        "compactUpper": [b"L:\t" + v],
        "folded": [b"Content-Length:\r\n   " + v],
        "duplicate": [b"Content-Length: " + v, b"l: " + v],
        "absent": [],
    }[style]


@st.composite
def sipMessages(draw: st.DrawFn) -> bytes:
    """A SIP message as a stream carries it, with its Content-Length in any legal spelling."""
    style = draw(
        st.sampled_from(["long", "lower", "upper", "compact", "compactUpper", "folded", "duplicate", "absent"])
    )
    body = b"" if style == "absent" else draw(bodies)
    headers = draw(st.lists(otherHeaders, max_size=4))
    at = draw(st.integers(0, len(headers)))
    headers[at:at] = _contentLengthHeaders(style, len(body))
    return draw(startLines) + b"".join(b"\r\n" + h for h in headers) + b"\r\n\r\n" + body


Item = Union[bytes, str]  # a SIP message, or "ping" / "pong" / "noise"


def _wire(items: Sequence[Item]) -> bytes:
    table = {"ping": b"\r\n\r\n", "pong": b"\r\n", "noise": b"\r\n"}
    return b"".join(table[i] if isinstance(i, str) else i for i in items)


def _expected(items: Sequence[Item]) -> List[Event]:
    out: List[Event] = []
    for i in items:
        if i == "ping":
            out.append(Ping())
        elif i == "pong":
            out.append(Pong())
        elif isinstance(i, bytes):
            out.append(SIPData(i))
    return _normalise(out)


def _normalise(events: Sequence[Event]) -> List[Event]:
    """Merge adjacent SIPData: how SIP bytes are split into events is not part of the contract."""
    out: List[Event] = []
    for e in events:
        if isinstance(e, SIPData) and out and isinstance(out[-1], SIPData):
            out[-1] = SIPData(out[-1].data + e.data)
        elif not (isinstance(e, SIPData) and not e.data):
            out.append(e)
    return out


def _chunks(data: bytes, cuts: Sequence[int]) -> List[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


def _feedAll(splitter: IncomingSplitter, chunks: Sequence[bytes]) -> List[Event]:
    events: List[Event] = []
    for c in chunks:
        got = splitter.feed(c)
        assert all(not (isinstance(e, SIPData) and not e.data) for e in got), "empty SIPData"
        events.extend(got)
    return events


@st.composite
def serverItems(draw: st.DrawFn) -> List[Item]:
    """Messages and pings; a message may be preceded by one stray CRLF (RFC 3261 §7.5), which is dropped."""
    items: List[Item] = []
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.booleans()):
            items.append("ping")
        else:
            if draw(st.booleans()):
                items.append("noise")
            items.append(draw(sipMessages()))
    return items


clientItems = st.lists(sipMessages() | st.just("pong"), max_size=8)
cutLists = st.lists(st.integers(0, 10_000), max_size=12)


# -- incoming: properties -------------------------------------------------------------------------------------


@given(items=clientItems, cuts=cutLists)
def test_clientAnyChunkingDeliversSIPAndPongsInOrder(items: List[Item], cuts: List[int]) -> None:
    """Role client: every SIP byte reaches SIPData in order, every CRLF between messages is one Pong."""
    wire = _wire(items)
    events = _feedAll(IncomingSplitter("client"), _chunks(wire, cuts))
    assert _normalise(events) == _expected(items)
    assert b"".join(e.data for e in events if isinstance(e, SIPData)) == b"".join(
        i for i in items if isinstance(i, bytes)
    )


@given(items=serverItems(), cuts=cutLists)
def test_serverAnyChunkingDeliversSIPAndPingsInOrder(items: List[Item], cuts: List[int]) -> None:
    """Role server: CRLFCRLF between messages is a Ping, a stray CRLF before a start line never shows."""
    wire = _wire(items)
    events = _feedAll(IncomingSplitter("server"), _chunks(wire, cuts))
    assert _normalise(events) == _expected(items)


@given(items=clientItems, role=st.sampled_from(["client", "server"]))
def test_byteAtATime(items: List[Item], role: str) -> None:
    """The most hostile chunking: one byte per feed."""
    if role == "server":
        items = [i for i in items if i != "pong"]
    wire = _wire(items)
    splitter = IncomingSplitter(role)  # type: ignore[arg-type]
    events = _feedAll(splitter, [wire[k : k + 1] for k in range(len(wire))])
    assert _normalise(events) == _expected(items)


@given(message=sipMessages(), cuts=cutLists)
def test_sipBytesHandedOutOnceTheHeaderBlockIsWhole(message: bytes, cuts: List[int]) -> None:
    """
    Only an unfinished header block is held back (the splitter keeps it, the SIP protocol behind gets it whole);
    once the header block is in, every SIP byte received so far is out after each feed, body bytes at once.
    """
    headerEnd = message.index(b"\r\n\r\n") + 4
    splitter = IncomingSplitter("client")
    fed = 0
    out = 0
    for chunk in _chunks(message, cuts):
        fed += len(chunk)
        out += sum(len(e.data) for e in splitter.feed(chunk) if isinstance(e, SIPData))
        assert out == (fed if fed >= headerEnd else 0)
        assert splitter.buffered == (0 if fed >= headerEnd else fed)
    assert splitter.atBoundary


@given(message=sipMessages(), cuts=cutLists)
def test_aHeldHeaderBlockIsTheOnlyCopyAndLeadsTheUnframedBytes(message: bytes, cuts: List[int]) -> None:
    """
    A header block that never ends in time: the bytes handed on are none of it (nothing for a SIP server to
    keep a second copy of), and the framing error's ``unframed`` is the whole header block up to the bound, the
    held part first, so that a server can still answer it with a 400.
    """
    limit = 256
    endless = message.split(b"\r\n\r\n", 1)[0] + b"\r\nX-Pad: " + b"p" * (2 * limit)
    splitter = IncomingSplitter("server", maxMessageSize=limit)
    handed = b""
    with pytest.raises(SIPFramingError) as caught:
        for chunk in _chunks(endless, cuts):
            handed += b"".join(e.data for e in splitter.feed(chunk) if isinstance(e, SIPData))
    handed += b"".join(e.data for e in caught.value.events if isinstance(e, SIPData))
    assert handed == b""
    assert caught.value.unframed == endless[:limit]


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.lists(st.binary(max_size=64) | _bodyPieces | st.sampled_from([REGISTER, b"l: 99999999\r\n"]),
                  max_size=20).map(b"".join),
    cuts=cutLists,
    role=st.sampled_from(["client", "server"]),
    limit=st.sampled_from([4, 16, 100, 65536]),
)
def test_anyBytesOnlyFramingErrors(data: bytes, cuts: List[int], role: str, limit: int) -> None:
    """Whatever arrives, the only exception is SIPFramingError, and after it the splitter stays dead."""
    splitter = IncomingSplitter(role, maxMessageSize=limit)  # type: ignore[arg-type]
    accounted = 0
    for chunk in _chunks(data, cuts):
        try:
            events = splitter.feed(chunk)
        except SIPFramingError as e:
            assert e.reason
            with pytest.raises(SIPFramingError):
                splitter.feed(b"x")
            events = e.events
            accounted += _size(events)
            assert accounted <= len(data)
            return
        accounted += _size(events)
        assert accounted <= len(data)
        assert splitter.buffered <= limit  # the only buffer grows no further than the bound


def _size(events: Sequence[Event]) -> int:
    return sum(len(e.data) if isinstance(e, SIPData) else 4 if isinstance(e, Ping) else 2 for e in events)


# -- incoming: examples ---------------------------------------------------------------------------------------


def test_bodyWithCRLFCRLFIsNotAPing() -> None:
    body = b"\r\n\r\n\r\n"
    message = b"MESSAGE sip:a SIP/2.0\r\nContent-Length: 6\r\n\r\n" + body
    events = IncomingSplitter("server").feed(message + b"\r\n\r\n")
    assert _normalise(events) == [SIPData(message), Ping()]


def test_serverTrailingCRLFWaits() -> None:
    """A CRLF at the end of data is undecided: half a ping, or noise before a start line."""
    splitter = IncomingSplitter("server")
    assert splitter.feed(REGISTER + b"\r\n") == [SIPData(REGISTER)]
    assert splitter.feed(b"\r") == []
    assert splitter.feed(b"\n") == [Ping()]
    assert splitter.feed(b"\r\n") == []
    assert _normalise(splitter.feed(REGISTER)) == [SIPData(REGISTER)]


def test_serverOddCRLFs() -> None:
    """Three CRLFs then a message: a Ping, then the stray CRLF is dropped."""
    events = IncomingSplitter("server").feed(b"\r\n\r\n\r\n" + REGISTER)
    assert _normalise(events) == [Ping(), SIPData(REGISTER)]


def test_clientCRLFCRLFIsTwoPongs() -> None:
    assert IncomingSplitter("client").feed(b"\r\n\r\n") == [Pong(), Pong()]


def test_clientTrailingCRWaitsForLF() -> None:
    splitter = IncomingSplitter("client")
    assert splitter.feed(b"\r") == []
    assert splitter.feed(b"\n") == [Pong()]


def test_loneCRStartsAMessage() -> None:
    """A CR not followed by LF is not a keepalive: it goes to the SIP protocol, which judges it."""
    splitter = IncomingSplitter("client")
    assert splitter.feed(b"\r") == []
    assert splitter.feed(b"X\r\n\r\n") == [SIPData(b"\rX\r\n\r\n")]
    assert splitter.atBoundary


def test_absentContentLengthMeansEmptyBody() -> None:
    message = b"OPTIONS sip:a SIP/2.0\r\nCall-ID: 1\r\n\r\n"
    events = IncomingSplitter("client").feed(message + b"\r\n" + message)
    assert _normalise(events) == [SIPData(message), Pong(), SIPData(message)]


def test_foldedContentLength() -> None:
    message = b"MESSAGE sip:a SIP/2.0\r\nContent-Length:\r\n\t 3\r\n\r\n\r\n\r"
    events = IncomingSplitter("client").feed(message + b"\r\n")
    assert _normalise(events) == [SIPData(message), Pong()]


def test_roleValidated() -> None:
    with pytest.raises(ValueError):
        IncomingSplitter("peer")  # type: ignore[arg-type]


# -- incoming: errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header, words",
    [
        (b"Content-Length: -1", "negative"),
        (b"Content-Length: abc", "malformed"),
        (b"Content-Length:", "malformed"),
        (b"l: 1 2", "malformed"),
        (b"Content-Length: 0x10", "malformed"),
        (b"Content-Length: " + b"9" * 5000, "malformed"),
        (b"Content-Length: 3\r\nl: 4", "conflicting"),
        (b"Content-Length: 70000", "exceeds"),
    ],
)
@pytest.mark.parametrize("chunked", [False, True])
def test_badContentLength(header: bytes, words: str, chunked: bool) -> None:
    message = b"INVITE sip:a SIP/2.0\r\n" + header + b"\r\n\r\n"
    splitter = IncomingSplitter("server")
    good = splitter.feed(REGISTER)
    assert good == [SIPData(REGISTER)]
    with pytest.raises(SIPFramingError) as caught:
        if chunked:
            splitter.feed(message[:10])
            splitter.feed(message[10:])
        else:
            splitter.feed(REGISTER + message)
    assert words in caught.value.reason
    assert isinstance(caught.value, NATTraversalError)
    if not chunked:
        # What came before the bad message in the same feed is not lost.
        assert _normalise(caught.value.events) == [SIPData(REGISTER)]
    with pytest.raises(SIPFramingError) as again:
        splitter.feed(REGISTER)
    assert again.value.reason == caught.value.reason


def test_eventsBeforeErrorAreKept() -> None:
    splitter = IncomingSplitter("server")
    bad = b"INVITE sip:a SIP/2.0\r\nl: x\r\n\r\n"
    with pytest.raises(SIPFramingError) as caught:
        splitter.feed(REGISTER + b"\r\n\r\n" + bad)
    assert _normalise(caught.value.events) == [SIPData(REGISTER), Ping()]


@pytest.mark.parametrize("step", [None, 1, 7, 1000])
def test_sizeBoundExact(step: Union[int, None]) -> None:
    """A message of exactly maxMessageSize bytes passes; one byte more is refused, however it is split."""
    limit = 200
    head = b"MESSAGE sip:a SIP/2.0\r\nContent-Length: 100\r\nX: "
    pad = limit - 100 - len(head) - 4
    fits = head + b"a" * pad + b"\r\n\r\n" + b"b" * 100
    assert len(fits) == limit
    tooBig = head + b"a" * (pad + 1) + b"\r\n\r\n" + b"b" * 100

    def run(data: bytes) -> List[Event]:
        splitter = IncomingSplitter("client", maxMessageSize=limit)
        if step is None:
            return splitter.feed(data)
        return _feedAll(splitter, [data[k : k + step] for k in range(0, len(data), step)])

    assert _normalise(run(fits)) == [SIPData(fits)]
    with pytest.raises(SIPFramingError, match="exceeds"):
        run(tooBig)


@pytest.mark.parametrize("step", [None, 1, 64])
def test_headerBlockBound(step: Union[int, None]) -> None:
    limit = 128
    endless = b"INVITE sip:a SIP/2.0\r\n" + b"X: y\r\n" * 100
    splitter = IncomingSplitter("server", maxMessageSize=limit)
    with pytest.raises(SIPFramingError, match="header block longer than 128"):
        if step is None:
            splitter.feed(endless)
        else:
            for k in range(0, len(endless), step):
                splitter.feed(endless[k : k + step])
                assert splitter.buffered <= limit


def test_headerBlockExactlyAtBoundFits() -> None:
    limit = 64
    head = b"INVITE sip:a SIP/2.0\r\nX: "
    block = head + b"y" * (limit - len(head) - 4) + b"\r\n\r\n"
    assert len(block) == limit
    for step in (1, 5, limit):
        splitter = IncomingSplitter("client", maxMessageSize=limit)
        events = _feedAll(splitter, [block[k : k + step] for k in range(0, len(block), step)])
        assert _normalise(events) == [SIPData(block)]


# -- outgoing -------------------------------------------------------------------------------------------------

outgoingItems = st.lists(sipMessages() | st.just(b"\r\n"), max_size=8)


@given(items=outgoingItems, cuts=cutLists)
def test_outgoingBoundariesAreMessageEnds(items: List[bytes], cuts: List[int]) -> None:
    """However the stack's writes are split, the reported boundaries are exactly the ends of its messages
    (and of the CRLFs it writes between them), and atBoundary is true exactly there."""
    wire = b"".join(items)
    ends = []
    pos = 0
    for i in items:
        pos += len(i)
        ends.append(pos)
    tracker = OutgoingTracker()
    assert tracker.atBoundary
    seen: List[int] = []
    base = 0
    for chunk in _chunks(wire, cuts):
        offsets = tracker.feed(chunk)
        assert offsets == sorted(set(offsets))
        assert all(0 < o <= len(chunk) for o in offsets)
        seen.extend(base + o for o in offsets)
        base += len(chunk)
        assert tracker.atBoundary == (base in ends or base == 0)
    assert seen == ends


def test_outgoingPendingCR() -> None:
    tracker = OutgoingTracker()
    assert tracker.feed(REGISTER + b"\r") == [len(REGISTER)]
    assert not tracker.atBoundary
    assert tracker.feed(b"\n") == [1]
    assert tracker.atBoundary
    assert tracker.feed(b"\r") == []
    # The CR was the start of a (strange) message, whose header block ends here.
    assert tracker.feed(b"X\r\n\r\n") == [5]


@pytest.mark.parametrize("data", [b"INVITE sip:a SIP/2.0\r\nl: -5\r\n\r\n", b"A" * 70000])
def test_outgoingErrors(data: bytes) -> None:
    tracker = OutgoingTracker()
    with pytest.raises(SIPFramingError) as caught:
        tracker.feed(data)
    assert caught.value.reason
    with pytest.raises(SIPFramingError):
        tracker.feed(REGISTER)


@given(data=st.binary(max_size=300), cuts=cutLists, limit=st.sampled_from([4, 32, 65536]))
def test_outgoingAnyBytesOnlyFramingErrors(data: bytes, cuts: List[int], limit: int) -> None:
    tracker = OutgoingTracker(maxMessageSize=limit)
    try:
        for chunk in _chunks(data, cuts):
            offsets = tracker.feed(chunk)
            assert all(0 < o <= len(chunk) for o in offsets)
    except SIPFramingError as e:
        assert e.reason


def test_maxMessageSizeValidated() -> None:
    with pytest.raises(ValueError):
        OutgoingTracker(maxMessageSize=0)


def test_eventsAreFrozenAndSlotted() -> None:
    event = SIPData(b"x")
    with pytest.raises(AttributeError):
        event.data = b"y"  # type: ignore[misc]
    assert not hasattr(event, "__dict__")
    assert Ping() == Ping()
    assert SIPData(b"x") != SIPData(b"y")


# -- the shared definition of a message (also used by twisted_sipnat.core.sip.parse) ---------------------------


def test_sharedHeaderEndAndContentLength() -> None:
    message = b"OPTIONS sip:a SIP/2.0\r\nl : 3\r\nContent-Length\t:\r\n 3\r\n\r\nabc\r\n\r\n"
    end = findHeaderEnd(message, 0, len(message))
    assert message[:end].endswith(b"3\r\n\r\n") and message[end:].startswith(b"abc")
    assert findHeaderEnd(message, 0, end - 1) == -1 and findHeaderEnd(b"a\nb\n\n", 0, 5) == -1
    assert contentLength(message, 0, end, 3) == 3
    assert contentLength(REGISTER.replace(b"Content-Length: 0\r\n", b""), 0, len(REGISTER) - 19, 0) is None
    with pytest.raises(SIPFramingError, match="exceeds"):
        contentLength(message, 0, end, 2)
    assert headerBlockTooLong(64) == "header block longer than 64 bytes"


@pytest.mark.parametrize("spelling", [b"l: 0", b"Content-Length : 0", b"Content-Length\t: 0"])
def test_legalContentLengthSpellingsKeepTheStreamInStep(spelling: bytes) -> None:
    """The spellings an edge once went deaf on: each message and the REGISTER after it come out whole."""
    message = REGISTER.replace(b"Content-Length: 0", spelling)
    splitter = IncomingSplitter("server")
    assert _normalise(splitter.feed(message + b"\r\n\r\n" + REGISTER)) == [SIPData(message), Ping(), SIPData(REGISTER)]
    assert splitter.atBoundary
