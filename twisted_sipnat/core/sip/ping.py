"""
OPTIONS keepalives (``--keepalive options``), sans-IO: the request, and what its answer says about the flow.

Why OPTIONS when RFC 5626 has STUN and CRLF: some carriers' edges answer neither (no STUN on the SIP port, CRLF
ignored) and keep a flow only while SIP flows on it; an OPTIONS every keepalive interval is what they expect
(RFC 3261 §11 defines OPTIONS as the question "are you there, what do you support").  Any final response
proves the path works both ways, whatever its code (a 404 or 405 came back through the NAT all the same); no
final response by Timer F is the flow failure, recovered like any other (RFC 5626 §4.5).

The request is addressed to the next hop itself (Request-URI ``sip:HOST:PORT``, no user part), so a proxy
answers it rather than routing it on (RFC 3261 §11.1), with a fresh branch and the CSeq one up for each ping on
one Call-ID, like a REGISTER client's (§8.1.1.4, §8.1.1.5).
"""

from __future__ import annotations

from typing import Tuple

from .fields import Via
from .headers import requestHeaders
from .message import Request, Response
from .uri import SIPURI

__all__ = ["buildOptions", "pingAnswered"]

HostPort = Tuple[str, int]


def buildOptions(aor: SIPURI, hop: HostPort, sentBy: HostPort, *, callId: str, cseq: int, branch: str,
                 fromTag: str) -> Request:
    """One OPTIONS ping from ``aor`` to the next hop ``hop``; ``sentBy`` is the top Via's address (RFC 3581 rport)."""
    target = SIPURI("sip", hop[0], port=hop[1])
    address = SIPURI(aor.scheme, aor.host, user=aor.user, port=aor.port)
    via = Via("UDP", sentBy[0], sentBy[1], (("branch", "z9hG4bK" + branch), ("rport", None)))
    headers = requestHeaders("OPTIONS", str(via), str(target), str(address), fromTag, callId, cseq)
    headers.add("Accept", "application/sdp")
    headers.add("Content-Length", "0")
    return Request("OPTIONS", str(target), headers)


def pingAnswered(response: Response) -> bool:
    """Whether ``response`` ends the ping: any final response (>= 200) shows the flow works (module docstring)."""
    return response.code >= 200
