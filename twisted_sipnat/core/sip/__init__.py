"""
The SIP message layer of twisted_sipnat: RFC 3261 messages parsed, built and serialised without a SIP stack.

Pure code (no Twisted), for the server side (edge registrar) and the client role's REGISTER client.  What is
where:

- :mod:`.message`: :class:`Request`, :class:`Response`, :func:`parse` (RFC 3261 §7, §7.4.1, §18.3, with the
  framing rules shared with :mod:`twisted_sipnat.core.sipframing`), :func:`responseTo` and :func:`badRequest`
  (§8.2.6), the size bounds;
- :mod:`.headers`: :class:`Headers`, the ordered case-insensitive multi-map, and the compact forms (§7.3.3,
  §20);
- :mod:`.fields`: :class:`Via` with ``received`` / ``rport`` stamping (§18.2.1, RFC 3581 §4) and
  :class:`NameAddress` for From / To / Contact (§20.10), ``Contact: *``;
- :mod:`.uri`: :class:`SIPURI` with the equality of §19.1.4;
- :mod:`.error`: :class:`SIPParseError`;
- :mod:`.clienttransaction` and :mod:`.register`: the client role's REGISTER client, sans-IO (the RFC 3261
  §17.1.2 non-INVITE client transaction; the REGISTER of §10.2 and what is read from its responses).  Import
  them from their modules: they are not re-exported here.
"""

from .error import SIPParseError
from .fields import WILDCARD, NameAddress, Via, contactsOf, setTopVia
from .headers import COMPACT_FORMS, LIST_HEADERS, Headers, canonicalName, isToken, splitTopLevel
from .message import (
    DEFAULT_MAX_HEADERS,
    DEFAULT_MAX_LINE_LENGTH,
    DEFAULT_MAX_MESSAGE_SIZE,
    REASON_PHRASES,
    Message,
    Request,
    Response,
    badRequest,
    checkRequest,
    cseqOf,
    parse,
    responseTo,
)
from .uri import SIPURI

__all__ = [
    "COMPACT_FORMS",
    "DEFAULT_MAX_HEADERS",
    "DEFAULT_MAX_LINE_LENGTH",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "LIST_HEADERS",
    "WILDCARD",
    "Headers",
    "Message",
    "NameAddress",
    "REASON_PHRASES",
    "Request",
    "Response",
    "SIPParseError",
    "SIPURI",
    "Via",
    "badRequest",
    "canonicalName",
    "checkRequest",
    "cseqOf",
    "contactsOf",
    "isToken",
    "parse",
    "responseTo",
    "setTopVia",
    "splitTopLevel",
]
