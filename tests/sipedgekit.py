"""Requests for the registrar and proxy tests: one REGISTER builder, a few fixed flows."""

from __future__ import annotations

from typing import Iterable, Optional

from twisted_sipnat.core.registrar import Flow
from twisted_sipnat.core.sip import Request, Response, parse

UDP_FLOW = Flow("udp", "198.51.100.7", 40001)
TCP_FLOW = Flow("tcp", "198.51.100.8", 40002, 7)
CALLER = Flow("udp", "192.0.2.50", 5070)


def register(
    user: str = "bob",
    *,
    domain: str = "example.com",
    uri: Optional[str] = None,
    contacts: Iterable[str] = ("<sip:bob@10.0.0.1:5060>",),
    expires: Optional[str] = None,
    callId: str = "c1@test",
    cseq: int = 1,
    branch: str = "z9hG4bKr1",
    transport: str = "UDP",
    extra: Iterable[str] = (),
    via: Optional[str] = None,
) -> bytes:
    lines = [
        f"REGISTER {uri or 'sip:' + domain} SIP/2.0",
        f"Via: {via or f'SIP/2.0/{transport} 10.0.0.1:5060;branch={branch};rport'}",
        "Max-Forwards: 70",
        f"To: <sip:{user}@{domain}>",
        f"From: <sip:{user}@{domain}>;tag=f1",
        f"Call-ID: {callId}",
        f"CSeq: {cseq} REGISTER",
    ]
    lines += [f"Contact: {c}" for c in contacts]
    if expires is not None:
        lines.append(f"Expires: {expires}")
    lines += list(extra)
    lines += ["Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


def request(
    method: str = "INVITE",
    uri: str = "sip:bob@example.com",
    *,
    maxForwards: Optional[str] = "70",
    branch: str = "z9hG4bKcall1",
    callId: str = "call1@test",
    extra: Iterable[str] = (),
    body: bytes = b"",
) -> bytes:
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP 192.0.2.50:5070;branch={branch};rport",
        "To: <sip:bob@example.com>",
        "From: <sip:alice@example.com>;tag=a1",
        f"Call-ID: {callId}",
        f"CSeq: 1 {method}",
    ]
    if maxForwards is not None:
        lines.append(f"Max-Forwards: {maxForwards}")
    lines += list(extra)
    lines += [f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


def asResponse(data: bytes) -> Response:
    message = parse(data)
    assert isinstance(message, Response), data
    return message


def asRequest(data: bytes) -> Request:
    message = parse(data)
    assert isinstance(message, Request), data
    return message
