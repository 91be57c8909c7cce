"""
The one error the SIP message layer raises on bytes or header values it cannot use.
"""

from __future__ import annotations

from typing import List, Optional

from twisted_sipnat.errors import NATTraversalError

from .headers import Headers

__all__ = ["SIPParseError"]


class SIPParseError(NATTraversalError, ValueError):
    """
    A SIP message, or a header value in one, is malformed (RFC 3261 §7, §25).

    ``reason`` says what is wrong, in words fit for a log line or a 400's reason phrase.  ``framing`` is
    ``True`` when the bytes are not one whole message by the framing rules shared with
    :mod:`twisted_sipnat.core.sipframing` (header block too long or unterminated, Content-Length malformed,
    conflicting or too large, body short, bytes after the body): on a stream nothing after such an error can be
    trusted.  ``False`` means the message's extent is known but its content is bad, so a stream stays in step.

    When the start line was readable, ``method`` is the request's method (``None`` for a response or an
    unreadable start line) and ``headers`` holds the Via, From, To, Call-ID and CSeq headers that could be read,
    which is what :func:`~twisted_sipnat.core.sip.badRequest` needs to answer 400 (RFC 3261 §8.2.6).
    """

    def __init__(
        self,
        reason: str,
        *,
        framing: bool = False,
        method: Optional[str] = None,
        headers: Optional[Headers] = None,
    ) -> None:
        super().__init__(f"malformed SIP message: {reason}")
        self.reason = reason
        self.framing = framing
        self.method = method
        self.headers = headers if headers is not None else Headers()

    @property
    def via(self) -> List[str]:
        """The Via values read, top first."""
        return self.headers.getAll("Via")

    @property
    def callId(self) -> Optional[str]:
        return self.headers.get("Call-ID")

    @property
    def fromValue(self) -> Optional[str]:
        return self.headers.get("From")

    @property
    def toValue(self) -> Optional[str]:
        return self.headers.get("To")

    @property
    def cseq(self) -> Optional[str]:
        return self.headers.get("CSeq")
