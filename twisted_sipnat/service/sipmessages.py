"""
SIP messages off the wire, read with ``twisted.protocols.sip``'s parser and guarded against the input it cannot
take.

``sip.MessagesParser`` decodes every chunk it is given as UTF-8 (RFC 3261 §7.3.1 text) and logs a traceback for
bytes it cannot decode, and raises for some malformed messages: bytes off the wire must never earn a traceback,
so the roles go through these helpers.  This is the one place the service layer parses SIP; a SIP message layer
of the project's own can replace it without touching the roles.

``twisted.protocols.sip`` imports the global reactor when it loads, so importing this module does too (see the
package docstring).
"""

from __future__ import annotations

from typing import Any, Iterable, List, Optional

from twisted.protocols import sip

__all__ = ["DIALOG_HEADERS", "parseDatagram", "responseTo", "utf8Prefix"]

#: The headers a response copies from its request (RFC 3261 §8.2.6.2).
DIALOG_HEADERS = ("via", "to", "from", "call-id", "cseq")


def utf8Prefix(data: bytes) -> Optional[int]:
    """
    How much of ``data`` is whole UTF-8 characters: ``len(data)``, or less when the last character is cut
    off (a stream may split one between two reads), or ``None`` when it is not UTF-8 at all.
    """
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.reason == "unexpected end of data" and len(data) - e.start < 4:
            return e.start
        return None
    return len(data)


def parseDatagram(data: bytes) -> Optional[List[Any]]:
    """
    The SIP messages (``sip.Request`` / ``sip.Response``) in one datagram, or ``None`` when it is not UTF-8 or
    the parser refuses it (RFC 3261 §18.3: a datagram is one message, so nothing of it is kept).
    """
    if utf8Prefix(data) != len(data):
        return None
    messages: List[Any] = []
    parser = sip.MessagesParser(messages.append)
    try:
        parser.dataReceived(data)
        parser.dataDone()
    except Exception:  # noqa: BLE001 - the parser raises assorted errors for malformed input
        return None
    return messages


def responseTo(request: Any, code: int, phrase: Optional[str] = None,
               headers: Iterable[str] = DIALOG_HEADERS) -> Any:
    """A ``sip.Response`` to ``request`` with its dialog headers copied (RFC 3261 §8.2.6.2)."""
    response = sip.Response(code, phrase)
    for name in headers:
        response.headers[name] = list(request.headers.get(name, []))
    return response
