"""
Tests for twisted_sipnat.core.sip: parsing and serialising SIP messages (RFC 3261 §7), in the style of the RFC
4475 torture tests, and the one definition of a message it shares with twisted_sipnat.core.sipframing.
"""

from __future__ import annotations

import subprocess
import sys
from typing import List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twisted_sipnat.core.sip import (
    COMPACT_FORMS,
    SIPURI,
    WILDCARD,
    Headers,
    NameAddress,
    Request,
    Response,
    SIPParseError,
    Via,
    badRequest,
    canonicalName,
    checkRequest,
    contactsOf,
    cseqOf,
    parse,
    responseTo,
    setTopVia,
)
from twisted_sipnat.core.sipframing import IncomingSplitter, OutgoingTracker, SIPData, SIPFramingError
from twisted_sipnat.errors import NATTraversalError


def _msg(*headers: str, start: str = "REGISTER sip:example.com SIP/2.0", body: bytes = b"") -> bytes:
    return (start + "".join("\r\n" + h for h in headers) + "\r\n\r\n").encode("utf-8") + body


BASE = (
    "Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK776asdhds;rport",
    "From: <sip:bob@example.com>;tag=456248",
    "To: <sip:bob@example.com>",
    "Call-ID: 843817637684230@998sdasdh09",
    "CSeq: 1826 REGISTER",
)


def _framedWhole(data: bytes) -> bool:
    """The server-role framer hands out ``data`` as exactly one message and is at a boundary after it."""
    splitter = IncomingSplitter("server")
    events = splitter.feed(data)
    return events == [SIPData(data)] and splitter.atBoundary and OutgoingTracker().feed(data) == [len(data)]


# -- accepted: RFC 4475-style torture cases -------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["Content-Length: 0", "Content-Length : 0", "Content-Length\t: 0", "l: 0", "L:0",
                                      "content-length:\r\n 0", "CONTENT-LENGTH  :  0  "])  # fmt: skip
def test_contentLengthSpellingsFrameAndParse(spelling: str) -> None:
    data = _msg(*BASE, spelling)
    assert _framedWhole(data)
    message = parse(data, stream=True)
    assert isinstance(message, Request) and message.body == b"" and message.headers.get("Content-Length") == "0"
    # A valid REGISTER after it on the same stream is framed and parsed too: the edge does not go deaf.
    splitter = IncomingSplitter("server")
    assert b"".join(e.data for e in splitter.feed(data + _msg(*BASE, "l: 0")) if isinstance(e, SIPData)) == (
        data + _msg(*BASE, "l: 0")
    )


@pytest.mark.parametrize("short,full", sorted(COMPACT_FORMS.items()))
def test_everyCompactFormIsItsFullName(short: str, full: str) -> None:
    value = "0" if short == "l" else f"value-{short}"
    data = _msg(*BASE, f"{short}: {value}", "Content-Length: 0")
    message = parse(data, stream=True)
    assert message.headers.getAll(full)[-1] == value == message.headers.getAll(full.upper())[-1]
    assert canonicalName(short.upper()) == full.lower()
    assert f"\r\n{short}: {value}\r\n".encode() in message.toBytes()  # spelling kept


def test_compactFormsAreExactlyTheRegisteredOnes() -> None:
    assert COMPACT_FORMS == {
        "a": "Accept-Contact", "b": "Referred-By", "c": "Content-Type", "d": "Request-Disposition",
        "e": "Content-Encoding", "f": "From", "i": "Call-ID", "j": "Reject-Contact", "k": "Supported",
        "l": "Content-Length", "m": "Contact", "n": "Identity-Info", "o": "Event", "r": "Refer-To",
        "s": "Subject", "t": "To", "u": "Allow-Events", "v": "Via", "x": "Session-Expires", "y": "Identity",
    }  # fmt: skip


def test_foldingUnfoldsToOneSpace() -> None:
    data = _msg(*BASE, "Subject: I know you're there,\r\n     pick up the phone\r\n\tand talk to me!", "l: 0")
    message = parse(data, stream=True)
    assert message.headers.get("s") == "I know you're there, pick up the phone and talk to me!"
    assert _framedWhole(data)


def test_foldedViaListSplitsAcrossLines() -> None:
    data = _msg("v: SIP/2.0/UDP a.example;branch=z9hG4bK1,\r\n SIP/2.0/UDP b.example;branch=z9hG4bK2", *BASE[1:],
                "Via  :  SIP/2.0/TCP [2001:db8::9]:5061;branch=z9hG4bK3", "l: 0")  # fmt: skip
    vias = [Via.parse(v) for v in parse(data, stream=True).headers.getAll("Via")]
    assert [v.host for v in vias] == ["a.example", "b.example", "2001:db8::9"]
    assert vias[2].port == 5061 and vias[2].transport == "TCP" and vias[2].branch == "z9hG4bK3"


def test_quotedAndEscapedCommasDoNotSplit() -> None:
    contact = (
        '"Doe, John \\"JD\\", Jr." <sip:jd@192.0.2.4?subject=a,b>;expires=60, '
        "<sip:[2001:db8::1]:5070;transport=tcp;ob>;reg-id=1;+sip.instance=\"<urn:uuid:0000-1>\""
    )
    message = parse(_msg(BASE[0], *BASE[2:], "m: " + contact, 'From: "a, b" <sip:x@y>;tag=9', "l: 0"), stream=True)
    contacts = contactsOf(message.headers)
    assert contacts != WILDCARD
    first, second = contacts
    assert first.displayName == 'Doe, John "JD", Jr.' and first.expires == 60
    assert first.uri == "sip:jd@192.0.2.4?subject=a,b"
    assert second.sipURI.host == "2001:db8::1" and second.sipURI.port == 5070 and second.sipURI.hasParam("ob")
    assert second.regId == 1 and second.instance == "<urn:uuid:0000-1>" and not second.hasParam("ob")
    assert NameAddress.parse(message.headers.get("From") or "").displayName == "a, b"
    assert message.headers.getAll("From") == ['"a, b" <sip:x@y>;tag=9']  # From is not a list header


def test_unknownHeadersKeptVerbatimInOrder() -> None:
    headers = (*BASE, "X-Weird_Name.~!: some, value ; with=stuff", "UnknownHeader:", "NewFangled: x", "l: 0")
    data = _msg(*headers)
    message = parse(data, stream=True)
    assert message.toBytes() == data
    assert [n for n, _ in message.headers] == [h.split(":")[0] for h in headers]
    assert message.headers.getAll("x-weird_name.~!") == ["some, value ; with=stuff"]


def test_responsesAndOtherVersionsParse() -> None:
    response = parse(_msg(*BASE, "l: 3", start="SIP/2.0 480 Temporarily  Unavailable — été", body=b"abc"))
    assert isinstance(response, Response) and response.code == 480
    assert response.reason == "Temporarily  Unavailable — été" and response.body == b"abc"
    assert parse(_msg(*BASE, "l: 0", start="SIP/2.0 200")).reason == ""  # type: ignore[union-attr]
    # RFC 4475 §3.1.2.16 (badvers): an unknown version parses, so the server can answer 505.
    request = parse(_msg(*BASE, "l: 0", start="OPTIONS sip:t@example.com sip/7.0"))
    assert isinstance(request, Request) and request.version == "SIP/7.0"


def test_datagramRules() -> None:
    """RFC 3261 §18.3: no Content-Length means the rest of the datagram; bytes past the body are dropped."""
    assert parse(_msg(*BASE, body=b"v=0\r\n\r\n")).body == b"v=0\r\n\r\n"
    assert parse(_msg(*BASE, "l: 2", body=b"v=0")).body == b"v="


# -- refused ---------------------------------------------------------------------------------------------------

REFUSED = [
    # (message, reason words, framing, request whose start line is readable)
    (_msg(*BASE), "no Content-Length, which a stream requires", False, True),
    (_msg(*BASE, "Content-Length: 3", "l: 4", body=b"abcd"), "conflicting Content-Length", True, True),
    (_msg(*BASE, "X-Long: " + "a" * 20_000, "l: 0"), "longer than 8192", False, True),
    (_msg(*BASE, "NoColonHere", "l: 0"), "without a colon", False, True),
    (_msg(*BASE, "Bad Name: x", "l: 0"), "not a token", False, True),
    (_msg(*BASE, "l: 0", start="INVITE  sip:a@b SIP/2.0"), "bad start line", False, False),  # 4475 lwsstart
    (_msg(*BASE, "l: 0", start="INVITE sip:a@b SIP/2.0 "), "bad start line", False, False),  # 4475 trws
    (_msg(*BASE, "l: 0", start="INVITE <sip:a@b> SIP/2.0"), "bad start line", False, False),  # 4475 ltgtruri
    (_msg(*BASE, "l: 0", start="INVITE sip:a @b SIP/2.0"), "bad start line", False, False),  # 4475 lwsruri
    (_msg(*BASE, "l: 0", start="SIP/2.0 4294967301 better not break"), "bad start line", False, False),  # bigcode
    (_msg(*BASE, "l: 0", start="INVITE sip:a@b"), "bad start line", False, False),
    (_msg(*BASE, "l: 0", start="\x7fINVITE sip:a@b SIP/2.0"), "control character", False, False),
    (_msg(*BASE, "Content-Length: -1"), "negative", True, True),
    (_msg(*BASE, "Content-Length: abc"), "malformed Content-Length", True, True),
    (_msg(*BASE, "Content-Length: 10", body=b"short"), "body shorter", True, True),
    (_msg(*BASE, "X-Bare: a\nb", "l: 0"), "bare CR/LF", False, True),
    (_msg(*BASE, "X-Nul: a\x00b", "l: 0"), "control character", False, True),
    (_msg(*BASE, *(f"X-{i}: {i}" for i in range(300)), "l: 0"), "more than 256 header fields", False, True),
]


@pytest.mark.parametrize("data,words,framing,readable", REFUSED)
def test_refused(data: bytes, words: str, framing: bool, readable: bool) -> None:
    with pytest.raises(SIPParseError) as info:
        parse(data, stream=True)
    error = info.value
    assert isinstance(error, NATTraversalError) and isinstance(error, ValueError)
    assert words in error.reason and error.framing is framing
    assert (error.method == "REGISTER") is readable and (badRequest(error) is not None) is readable
    # The framer agrees: a framing reason is its own reason, anything else is a message it frames whole.
    if framing and "shorter" not in words:
        with pytest.raises(SIPFramingError) as framed:
            IncomingSplitter("server").feed(data)
        assert framed.value.reason == error.reason
    elif not framing:
        assert _framedWhole(data)


def test_headerBlockBeyondTheBoundIsAFramingErrorForBoth() -> None:
    data = _msg(*BASE, "X: " + "a" * 70_000)
    with pytest.raises(SIPParseError) as info:
        parse(data)
    with pytest.raises(SIPFramingError) as framed:
        OutgoingTracker().feed(data)
    assert info.value.framing and info.value.reason == framed.value.reason
    assert info.value.method == "REGISTER" and info.value.callId == "843817637684230@998sdasdh09"


def test_boundsAreOptions() -> None:
    data = _msg(*BASE, "l: 0")
    with pytest.raises(SIPParseError, match="more than 3 header fields"):
        parse(data, maxHeaders=3)
    with pytest.raises(SIPParseError, match="longer than 40 bytes"):
        parse(data, maxLineLength=40)
    with pytest.raises(SIPParseError, match="header block longer than 100 bytes"):
        parse(data, maxSize=100)
    for option in ("maxSize", "maxHeaders", "maxLineLength"):
        with pytest.raises(ValueError):
            parse(data, **{option: 0})  # type: ignore[arg-type]


def test_badRequestEchoesWhatItCouldRead() -> None:
    data = _msg("Via: SIP/2.0/UDP a.example;branch=z9hG4bK1", "v: SIP/2.0/UDP b.example;\r\n branch=z9hG4bK2",
                *BASE[1:], "broken line", "l: 0")  # fmt: skip
    with pytest.raises(SIPParseError) as info:
        parse(data)
    answer = badRequest(info.value, toTag="t1")
    assert answer is not None and answer.code == 400 and "without a colon" in answer.reason
    assert answer.headers.getAll("Via") == ["SIP/2.0/UDP a.example;branch=z9hG4bK1", "SIP/2.0/UDP b.example; branch=z9hG4bK2"]
    assert answer.headers.get("From") == "<sip:bob@example.com>;tag=456248"
    assert answer.headers.get("To") == "<sip:bob@example.com>;tag=t1"
    assert answer.headers.get("Call-ID") == "843817637684230@998sdasdh09" and answer.headers.get("CSeq") == "1826 REGISTER"
    assert parse(answer.toBytes(), stream=True) == answer


def test_noAnswerToResponsesOrAck() -> None:
    for start in ("SIP/2.0 200 OK", "ACK sip:a@b SIP/2.0"):
        with pytest.raises(SIPParseError) as info:
            parse(_msg(*BASE, "junk", "l: 0", start=start))
        assert badRequest(info.value) is None


def test_checkRequest() -> None:
    """RFC 3261 §8.1.1 headers a response needs, and RFC 4475 §3.1.2.17 (mismatch01), §3.1.2.4 (scalar02)."""
    request = parse(_msg(*BASE, "l: 0"))
    assert isinstance(request, Request)
    checkRequest(request)
    assert cseqOf(request) == (1826, "REGISTER")
    for change, words in ((("CSeq", "1826 INVITE"), "CSeq method"), (("CSeq", "36893488147419103232 REGISTER"),
                          "malformed CSeq"), (("Call-ID", None), "no Call-ID"), (("Via", None), "no Via")):  # fmt: skip
        broken = parse(request.toBytes())
        assert isinstance(broken, Request)
        name, value = change
        broken.headers.remove(name) if value is None else broken.headers.set(name, value)
        with pytest.raises(SIPParseError, match=words) as info:
            checkRequest(broken)
        answer = badRequest(info.value, toTag="x")
        assert answer is not None and answer.headers.get("From") == "<sip:bob@example.com>;tag=456248"


# -- responses, headers, Via, addresses, URIs ------------------------------------------------------------------


def test_responseTo() -> None:
    data = _msg("Via: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2", "v: SIP/2.0/UDP c",
                *BASE[1:], "Timestamp: 54", "Contact: <sip:bob@192.0.2.4>", "l: 0")  # fmt: skip
    request = parse(data)
    assert isinstance(request, Request)
    ok = responseTo(request, 200, toTag="abc")
    assert ok.startLine == "SIP/2.0 200 OK"
    assert [n for n, _ in ok.headers] == ["Via", "Via", "From", "To", "Call-ID", "CSeq", "Content-Length"]
    assert ok.headers.getAll("Via") == request.headers.getAll("Via")
    assert ok.headers.get("To") == "<sip:bob@example.com>;tag=abc" and ok.headers.get("Content-Length") == "0"
    trying = responseTo(request, 100)
    assert trying.headers.get("To") == "<sip:bob@example.com>" and trying.headers.get("Timestamp") == "54"
    request.headers.set("To", "<sip:bob@example.com>;tag=old")
    assert responseTo(request, 486, "Busy").headers.get("To") == "<sip:bob@example.com>;tag=old"
    assert NameAddress.parse(responseTo(request, 404).headers.get("t") or "").tag == "old"
    with pytest.raises(ValueError):
        responseTo(request, 99)


def test_headersMultiMap() -> None:
    h = Headers()
    h.add("Via", "SIP/2.0/UDP a")
    h.add("Max-Forwards", "70")
    h.add("v", "SIP/2.0/UDP b, SIP/2.0/UDP c")
    h.add("Supported", "outbound, path")
    assert h.getAll("VIA") == ["SIP/2.0/UDP a", "SIP/2.0/UDP b", "SIP/2.0/UDP c"] and h.get("via") == "SIP/2.0/UDP a"
    assert h.fields("Via") == ["SIP/2.0/UDP a", "SIP/2.0/UDP b, SIP/2.0/UDP c"]
    assert h.getAll("k") == ["outbound", "path"] and "SUPPORTED" in h and "Require" not in h
    h.set("V", "SIP/2.0/TCP z")
    assert list(h)[0] == ("Via", "SIP/2.0/TCP z") and h.getAll("via") == ["SIP/2.0/TCP z"]
    assert h.remove("max-forwards") == 1 and h.get("Max-Forwards", "none") == "none" and len(h) == 2
    assert Headers([("v", "x")]) == Headers([("Via", "x")]) != Headers([("Via", "y")])
    for name, value in (("Bad Name", "x"), ("X", "a\r\nInjected: 1")):
        with pytest.raises(ValueError):
            h.add(name, value)


def test_serialiseWritesOneTrueContentLength() -> None:
    r = Request("MESSAGE", "sip:a@b", Headers([("l", "99"), ("Content-Length", "3")]), b"hello")
    assert r.toBytes() == b"MESSAGE sip:a@b SIP/2.0\r\nl: 5\r\n\r\nhello"
    assert Response(200, "OK").serialise() == b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"


def test_viaStamping() -> None:
    """RFC 3261 §18.2.1 and RFC 3581 §4."""
    same = Via.parse("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1")
    assert same.receivedFrom("192.0.2.1", 5060) == same
    assert same.receivedFrom("198.51.100.2", 4000).received == "198.51.100.2"
    named = Via.parse("SIP/2.0/TCP pc.example.com;branch=z9hG4bK1")
    assert named.receivedFrom("192.0.2.1", 5060).received == "192.0.2.1" and named.rport is None
    bare = Via.parse("SIP / 2.0 / UDP 192.0.2.1:5060 ; branch = z9hG4bK1 ; rport")
    stamped = bare.receivedFrom("192.0.2.1", 6000)
    assert str(stamped) == "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport=6000;received=192.0.2.1"
    assert stamped.rport == 6000 and stamped.branch == "z9hG4bK1"
    v6 = Via.parse("SIP/2.0/UDP [2001:DB8::1];rport;keep").receivedFrom("2001:db8:0::2", 7)
    assert v6.received == "2001:db8::2" and v6.keep is None and v6.hasParam("keep")
    assert Via.parse("SIP/2.0/UDP h;keep=30").keep == 30
    headers = Headers([("v", "SIP/2.0/UDP a;rport, SIP/2.0/UDP b")])
    setTopVia(headers, Via.parse(headers.get("via") or "").receivedFrom("192.0.2.9", 1))
    assert headers.getAll("Via") == ["SIP/2.0/UDP a;rport=1;received=192.0.2.9", "SIP/2.0/UDP b"]
    for bad in ("SIP/2.0 host", "SIP/2.0/UDP", "SIP/2.0/UDP host:99999", "SIP/2.0/UDP [::1"):
        with pytest.raises(SIPParseError):
            Via.parse(bad)


def test_contacts() -> None:
    assert contactsOf(Headers([("Contact", "*")])) == WILDCARD
    assert contactsOf(Headers()) == []
    with pytest.raises(SIPParseError):
        contactsOf(Headers([("m", "*, <sip:a@b>")]))
    spec = NameAddress.parse("sip:bob@192.0.2.4;transport=tcp;expires=0")
    assert spec.uri == "sip:bob@192.0.2.4" and spec.expires == 0 and spec.param("transport") == "tcp"
    assert str(NameAddress.parse('Bob <sip:b@c>;tag=1')) == '"Bob" <sip:b@c>;tag=1'
    bad4475 = ("Bell, Alexander <sip:a.g.bell@bell-tel.com>;tag=43", '"Bell" <sip:a.g.bell@ bell-tel.com>')
    for bad in ('"open <sip:a@b>', "<sip:a@b", "<sip:a@b> junk", "<sip:a@b>;expires=soon", *bad4475):
        with pytest.raises(SIPParseError):
            NameAddress.parse(bad).expires  # noqa: B018


@pytest.mark.parametrize("a,b", [
    ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
    ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;newparam=5"),
    ("sip:alice@atlanta.com?subject=project%20x&priority=urgent", "sip:alice@atlanta.com?priority=urgent&subject=project%20x"),
    ("sip:b@[2001:DB8::1]:5060;ob", "SIP:b@[2001:db8:0::1]:5060"),
])  # fmt: skip
def test_uriEqual(a: str, b: str) -> None:
    """RFC 3261 §19.1.4's equivalent URIs."""
    assert SIPURI.parse(a) == SIPURI.parse(b) and hash(SIPURI.parse(a)) == hash(SIPURI.parse(b))


@pytest.mark.parametrize("a,b", [
    ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
    ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
    ("sip:a@b", "sips:a@b"),
    ("sip:a@b;maddr=x", "sip:a@b"),
    ("sip:a@b;lr", "sip:a@b;lr=on"),
])  # fmt: skip
def test_uriNotEqual(a: str, b: str) -> None:
    assert SIPURI.parse(a) != SIPURI.parse(b)


def test_uriParts() -> None:
    uri = SIPURI.parse("sips:+1-212:pw@[2001:db8::1]:5061;transport=TCP;lr?h=v")
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == ("sips", "+1-212", "pw", "2001:db8::1", 5061)
    assert uri.transport == "tcp" and uri.hasParam("lr") and uri.param("lr") is None
    assert str(uri) == "sips:+1-212:pw@[2001:db8::1]:5061;transport=TCP;lr?h=v"
    for bad in ("tel:+1212", "sip:", "sip:a b@c", "sip:@host", "sip:h:0x1", "sip:[zz::1]", "sip:h;;x"):
        with pytest.raises(SIPParseError):
            SIPURI.parse(bad)


def test_coreImportsWithoutTwisted() -> None:
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'twisted' or name.startswith('twisted.'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import twisted_sipnat.core.sip, twisted_sipnat.core.sipframing\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- properties ------------------------------------------------------------------------------------------------

_tokens = st.from_regex(r"[A-Za-z][A-Za-z0-9\-.!%*_+`'~]{0,12}", fullmatch=True)
_text = st.text(st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\x7f"), max_size=30)
_values = _text.map(lambda s: s.strip(" \t"))
_headerLists = st.lists(
    st.tuples(_tokens.filter(lambda n: canonicalName(n) != "content-length"), _values), max_size=10
)


@st.composite
def messages(draw: st.DrawFn) -> object:
    headers = Headers(draw(_headerLists))
    body = draw(st.binary(max_size=40))
    if draw(st.booleans()):
        message: object = Request(draw(_tokens), "sip:" + draw(_tokens) + "@example.com", headers, body)
    else:
        message = Response(draw(st.integers(100, 699)), draw(_text), headers, body)
    return message


@given(message=messages())
def test_roundTrip(message: object) -> None:
    assert isinstance(message, (Request, Response))
    wire = message.toBytes()
    parsed = parse(wire, stream=True)
    message.headers.add("Content-Length", str(len(message.body)))
    assert parsed == message and parsed.toBytes() == wire


_pieces = st.sampled_from([
    b"\r\n", b"\r", b"\n", b"\r\n\r\n", b"l: -1\r\n", b"Content-Length: 3\r\nl: 4\r\n", b"l: 5\r\n",
    b"X: " + b"y" * 150 + b"\r\n", b"no colon\r\n", b"REGISTER sip:a SIP/2.0\r\n", b"SIP/2.0 200 OK\r\n",
    b"Via: SIP/2.0/UDP h\r\n", b" folded\r\n", b"l: 0\r\n\r\n", b"abc",
])  # fmt: skip


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    parts: List[bytes] = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 2))
        if kind == 0:
            body = draw(st.binary(max_size=20))
            cl = draw(st.sampled_from(["Content-Length: {}", "l:{}", "L \t: {}", "content-length:\r\n {}"]))
            parts.append(_msg(*BASE, cl.format(len(body)), body=body))
        elif kind == 1:
            parts.append(draw(_pieces))
        else:
            parts.append(draw(st.binary(max_size=30)))
    return b"".join(parts)


def _chunks(data: bytes, cuts: List[int]) -> List[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


def _byteByByte(data: bytes, limit: int) -> Tuple[List[int], Optional[str]]:
    tracker, boundaries = OutgoingTracker(limit), [0]
    for i in range(len(data)):
        try:
            boundaries += [i + o for o in tracker.feed(data[i : i + 1])]
        except SIPFramingError as e:
            return boundaries, e.reason
    return boundaries, None


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300)
@given(data=streams(), cuts=st.lists(st.integers(0, 10_000), max_size=8), limit=st.sampled_from([64, 300, 65536]))
def test_framerAndParserAgree(data: bytes, cuts: List[int], limit: int) -> None:
    """
    On any byte stream cut anywhere: each message the framer delimits parses or is refused for its content
    only (``framing=False``); when the framer fails, the parser fails on the rest with the same reason; an
    unfinished tail is refused as framing.  The receiving and the sending framer fail alike.
    """
    # A byte at a time, the tracker loses no boundary to an error; chunked, the framers must agree with it.
    boundaries, failure = _byteByByte(data, limit)
    tracker, splitter = OutgoingTracker(limit), IncomingSplitter("client", limit)
    found, position = [0], 0
    trackerFailure: Optional[str] = None
    splitterFailure: Optional[str] = None
    for chunk in _chunks(data, cuts):
        try:
            splitter.feed(chunk)
        except SIPFramingError as e:
            splitterFailure = splitterFailure or e.reason
        try:
            found += [position + o for o in tracker.feed(chunk)]
        except SIPFramingError as e:
            trackerFailure = trackerFailure or e.reason
        position += len(chunk)
    assert trackerFailure == splitterFailure == failure
    if failure is None:
        assert found == boundaries
    for a, b in zip(boundaries, boundaries[1:], strict=False):
        if data[a:b] == b"\r\n":
            continue
        try:
            parsed = parse(data[a:b], stream=True, maxSize=limit)
        except SIPParseError as e:
            assert not e.framing, e.reason
        else:
            assert parse(parsed.toBytes(), stream=True, maxSize=limit + 20) == parsed
    rest = data[boundaries[-1] :]
    if failure is not None or rest:
        with pytest.raises(SIPParseError) as info:
            parse(rest, stream=True, maxSize=limit)
        assert info.value.framing
        if failure is not None:
            assert info.value.reason == failure


_wireText = st.lists(
    st.sampled_from([*'sip:@;=<>"\\,. \t[]?&%0a1A:5060tag*+-_\u00e9\u00b2', "SIP/2.0/UDP ", "sip:", "expires="]),
    max_size=30,
).map("".join)


@settings(max_examples=500)
@given(data=streams() | st.binary(max_size=200), stream=st.booleans(), text=_wireText)
def test_onlySIPParseErrorOnAnyInput(data: bytes, stream: bool, text: str) -> None:
    """Bytes and header values off the wire never raise anything but SIPParseError (never a traceback)."""
    for call in (lambda: parse(data, stream=stream, maxSize=300), lambda: Via.parse(text),
                 lambda: NameAddress.parse(text).expires, lambda: SIPURI.parse(text),
                 lambda: contactsOf(Headers([("m", text)]))):  # fmt: skip
        try:
            call()
        except SIPParseError as e:
            assert e.reason
