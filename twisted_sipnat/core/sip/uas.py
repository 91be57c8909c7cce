"""
What the client role answers to a request that reaches it on a flow (RFC 3261 §8.2), sans-IO.

Why it answers at all: the registrar reaches the user agent through the flow it registered (RFC 5626 §5.3), with
an OPTIONS (a registrar or a monitor asking whether the UA is there, RFC 3261 §11) or a request to the AOR.
Silence would look like a dead flow to the sender, and nothing would show that the request got through the NAT.
The role is a registration agent, not a phone: it says what it supports to an OPTIONS (200 with Allow, Accept,
``Supported: outbound``, §11.2) and that nobody takes the call to anything else (480 Temporarily Unavailable,
§21.4.18); an ACK is never answered (§17.1.1.3), nor is a request without what a response copies (the
message layer refuses it, and junk never earns a reply on a flow).
"""

from __future__ import annotations

from typing import Optional

from .error import SIPParseError
from .message import Request, Response, checkRequest, responseTo

__all__ = ["ACCEPT", "ALLOW", "SUPPORTED", "answerRequest"]

#: The methods this user agent answers (RFC 3261 §20.5).
ALLOW = "OPTIONS, ACK"
#: The bodies it accepts (§20.1): none it would read, so the one every SIP entity must.
ACCEPT = "application/sdp"
#: RFC 5626 §4.2.1: the UA supports outbound; path (RFC 3327) because it registers through edges.
SUPPORTED = "outbound, path"


def answerRequest(request: Request, *, toTag: Optional[str] = None) -> Optional[Response]:
    """
    The response to ``request``: 200 to OPTIONS, 480 to anything else, ``None`` for an ACK and for a request
    missing Via, From, To, Call-ID or CSeq (or whose CSeq method differs).  ``toTag`` is the To tag to add when
    the request has none (random if not given).
    """
    if request.method == "ACK":
        return None
    try:
        checkRequest(request)
    except SIPParseError:
        return None
    if request.method == "OPTIONS":
        response = responseTo(request, 200, toTag=toTag)
        response.headers.add("Allow", ALLOW)
        response.headers.add("Accept", ACCEPT)
        response.headers.add("Supported", SUPPORTED)
        return response
    return responseTo(request, 480, toTag=toTag)
