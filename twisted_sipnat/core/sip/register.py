"""
The pure parts of the client role's REGISTER client (RFC 3261 §10.2): building the request, reading what comes
back, and the figures a UA takes from a 2xx.

Why here and not in the service layer: what goes on the wire and what is believed from the wire are protocol
rules; sans-IO they are tested on their own (with hypothesis), and the shell
(:mod:`twisted_sipnat.service.sipclient`) is left with a socket and one timer.

- :func:`parseAOR`: the address of record, ``user@domain`` or a ``sip:`` / ``sips:`` URI with a user part.
- :func:`buildRegister`: RFC 3261 §10.2: Request-URI the registrar's domain (no user part), To and From the AOR
  (From with a tag, §8.1.1.3), one Call-ID for every REGISTER of a client (§10.2.4 SHOULD), CSeq counting up
  (§10.2.4), a Contact with the public address, ``Expires``, ``Max-Forwards: 70`` (§8.1.1.6), and a top Via
  with a fresh ``z9hG4bK`` branch (§8.1.1.7), RFC 3581 ``rport`` and RFC 6223 ``keep`` offers.
- :func:`readMessage`: one datagram as a SIP message, refusing what is not UTF-8 (RFC 3261 §7.3.1: header text
  is UTF-8; the parser keeps undecodable bytes as surrogate escapes, so this check is made here).
- :func:`grantedExpires`: the lifetime the registrar granted (§10.2.4): the ``expires`` parameter of the
  Contact that is ours (§19.1.4 URI equality), else the Expires header, else what was asked.
- :func:`registrarKeepalive`: RFC 5626 §4.4.1 Flow-Timer, else the RFC 6223 ``keep=N`` the next hop put on our
  Via: the keepalive interval the registrar asked for.
- :func:`minExpires`: the Min-Expires of a 423 (§10.2.8), the interval to ask for on the retry.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

from twisted_sipnat.errors import InvalidHeaderError, InvalidSettingsError

from ..sipheaders import parseFlowTimer, parseKeepParameter
from .error import SIPParseError
from .fields import NameAddress, Via
from .headers import requestHeaders
from .message import DEFAULT_MAX_MESSAGE_SIZE, Message, Request, Response, parse
from .uri import SIPURI

__all__ = [
    "CONTACT_TRANSPORTS",
    "MAX_EXPIRES",
    "buildRegister",
    "grantedExpires",
    "minExpires",
    "parseAOR",
    "readMessage",
    "registrarKeepalive",
]

#: The largest lifetime: RFC 3261 §20.19 has Expires between 0 and 2**32-1 seconds; a larger value off the
#: wire is read as this one rather than refused.
MAX_EXPIRES = 2**32 - 1

HostPort = Tuple[str, int]

#: The Contact URI's scheme and parameters for each transport a REGISTER goes out on (:func:`buildRegister`).
CONTACT_TRANSPORTS: Dict[str, Tuple[str, Tuple[Tuple[str, Optional[str]], ...]]] = {
    "UDP": ("sip", ()),
    "TCP": ("sip", (("transport", "tcp"),)),
    "TLS": ("sips", ()),
}


def parseAOR(text: str) -> SIPURI:
    """
    The address of record to register: ``user@domain`` (``sip:`` is assumed) or a SIP/SIPS URI with a user
    part.  Raises :class:`~twisted_sipnat.errors.InvalidSettingsError` naming the ``register`` option.
    """
    uri = text if text.lower().startswith(("sip:", "sips:")) else "sip:" + text
    try:
        parsed = SIPURI.parse(uri)
    except SIPParseError as e:
        raise InvalidSettingsError("register", text, f"expected an address of record user@domain ({e})") from None
    if parsed.user is None:
        raise InvalidSettingsError("register", text, "expected an address of record user@domain")
    return parsed


def _hostText(host: str) -> str:
    """A host as it goes in a SIP URI or Via: IPv6 literals in brackets (RFC 3261 §25.1)."""
    return f"[{host}]" if ":" in host else host


def buildRegister(
    aor: SIPURI,
    contact: HostPort,
    sentBy: HostPort,
    *,
    callId: str,
    cseq: int,
    branch: str,
    fromTag: str,
    expires: int,
    instance: Optional[str] = None,
    regId: Optional[int] = None,
    extraHeaders: Sequence[Tuple[str, str]] = (),
    transport: str = "UDP",
) -> Request:
    """
    One REGISTER binding ``contact`` (the public address) to ``aor``, as RFC 3261 §10.2 builds it (module
    docstring).  ``sentBy`` is the address the top Via names (RFC 3261 §18.1.1: where responses are to go,
    before ``rport`` corrects it); ``branch`` is the part after the magic cookie ``z9hG4bK``.

    RFC 5626 outbound: ``instance`` (a ``urn:uuid:...``) is the Contact's ``+sip.instance`` (§4.1); with
    ``regId`` as well the Contact carries ``reg-id`` and its URI ``;ob`` (§4.2, §5.4), and the request says
    ``Supported: outbound, path`` (§4.2.1).  ``extraHeaders`` (credentials, RFC 3261 §22.4) go after CSeq.

    ``transport`` (``UDP``, ``TCP``, ``TLS``) is the top Via's (RFC 3261 §18.1.1: the transport the request
    goes out on) and says how the Contact is reached: ``;transport=tcp`` on a TCP flow (§19.1.1: without it a
    ``sip:`` URI means UDP), a ``sips:`` URI on a TLS flow (§19.1: SIPS is how a URI asks for TLS; RFC 5630 §3.1.3
    deprecates ``;transport=tls``).
    """
    transport = transport.upper()
    if transport not in CONTACT_TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(CONTACT_TRANSPORTS)}, not {transport!r}")
    if not 0 <= expires <= MAX_EXPIRES:
        raise ValueError(f"expires must be 0..{MAX_EXPIRES}, not {expires}")
    domain = SIPURI(aor.scheme, aor.host, port=aor.port)
    address = SIPURI(aor.scheme, aor.host, user=aor.user, port=aor.port)
    via = Via(transport, sentBy[0], sentBy[1], (("branch", "z9hG4bK" + branch), ("rport", None), ("keep", None)))
    outbound = instance is not None and regId is not None
    scheme, uriParams = CONTACT_TRANSPORTS[transport]
    ours = SIPURI(scheme, contact[0], user=aor.user, port=contact[1],
                  params=uriParams + ((("ob", None),) if outbound else ()))
    contactParams = ""
    if outbound:
        contactParams += f";reg-id={regId:d}"
    if instance is not None:
        contactParams += f';+sip.instance="<{instance}>"'
    headers = requestHeaders("REGISTER", str(via), str(address), str(address), fromTag, callId, cseq)
    for name, value in extraHeaders:
        headers.add(name, value)
    if outbound:
        headers.add("Supported", "outbound, path")
    headers.add("Contact", f"<{ours}>{contactParams}")
    headers.add("Expires", str(expires))
    headers.add("Content-Length", "0")
    return Request("REGISTER", str(domain), headers)


def contactOf(request: Request) -> SIPURI:
    """The Contact URI a REGISTER built by :func:`buildRegister` binds."""
    return NameAddress.parse(request.headers.get("Contact") or "").sipURI


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a surrogate escape: the bytes were not UTF-8
        return False
    return True


def readMessage(data: bytes, maxSize: int = DEFAULT_MAX_MESSAGE_SIZE, stream: bool = False) -> Message:
    """
    One datagram as a SIP message (RFC 3261 §18.3: a datagram is one message), or with ``stream`` one message a
    stream framer cut out (Content-Length then mandatory, §18.3).  Raises :class:`SIPParseError`, and only
    that, when it is malformed or its start line or headers are not UTF-8.
    """
    message = parse(data, maxSize=maxSize, stream=stream)
    startLine = message.startLine
    if not _utf8(startLine) or not all(_utf8(name) and _utf8(value) for name, value in message.headers):
        raise SIPParseError("not UTF-8 (RFC 3261 §7.3.1)")
    return message


def _delta(text: Optional[str]) -> Optional[int]:
    """RFC 3261 §25.1 delta-seconds, capped at :data:`MAX_EXPIRES`; ``None`` when absent or not digits."""
    if text is None:
        return None
    text = text.strip()
    if not text.isascii() or not text.isdigit():
        return None
    return MAX_EXPIRES if len(text) > 10 else min(int(text), MAX_EXPIRES)


def grantedExpires(response: Response, asked: int, contact: Optional[SIPURI] = None) -> int:
    """
    The registration lifetime a 2xx granted (RFC 3261 §10.2.4), in seconds.

    The 2xx lists every binding of the AOR, other devices' too; the one that counts is the Contact whose URI
    equals ``contact`` (§19.1.4), by its ``expires`` parameter.  Without ``contact``, the first Contact with
    an ``expires`` parameter.  Then the Expires header; then ``asked``.  Malformed values are passed over,
    never raised: they come off the wire.
    """
    for value in response.headers.getAll("Contact"):
        try:
            address = NameAddress.parse(value)
            if contact is not None and address.sipURI != contact:
                continue
        except SIPParseError:
            continue
        granted = _delta(address.param("expires"))
        if granted is not None:
            return granted
    granted = _delta(response.headers.get("Expires"))
    return granted if granted is not None else asked


def registrarKeepalive(response: Response) -> Optional[int]:
    """
    The keepalive interval the registrar asked for in a 2xx to REGISTER, in seconds, or ``None``: the
    ``Flow-Timer`` header (RFC 5626 §4.4.1) first, else the ``keep=N`` of the top Via (RFC 6223 §4.3: the
    next hop's answer to our ``keep`` offer).  Unusable values (zero, absurd, not digits) read as absent, with
    the bounds of :mod:`twisted_sipnat.core.sipheaders`.
    """
    for value in response.headers.getAll("Flow-Timer"):
        try:
            return parseFlowTimer(value)
        except InvalidHeaderError:
            continue
    top = response.headers.get("Via")
    if top is None:
        return None
    try:
        return parseKeepParameter(Via.parse(top).param("keep"))
    except (SIPParseError, InvalidHeaderError):
        return None


def minExpires(response: Response) -> Optional[int]:
    """The Min-Expires of a 423 Interval Too Brief (RFC 3261 §10.2.8, §20.23), or ``None`` (absent, malformed)."""
    if response.code != 423:
        return None
    return _delta(response.headers.get("Min-Expires"))
