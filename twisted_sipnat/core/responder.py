"""
The STUN Binding server, sans-IO: request bytes and the sender's address in, response bytes (and which of the
server's addresses to send them from) out.

Theory of operation
-------------------

:meth:`BindingResponder.respond` is called with every datagram that looks like STUN on a server socket (the
shared SIP socket with ``stunResponder=True``, the twistd ``stun``/``edge`` roles, the RFC 5780 discovery
server).  It returns a :class:`Reply` or ``None`` (send nothing) and never raises on any input bytes:

- not STUN, or failing RFC 8489 §6.3's header checks (leading bits, magic cookie, a length that matches the
  datagram), or a method other than Binding: ``None`` (silently discarded, §6.3);
- from source port 0: ``None`` (deliverable, but nothing can be sent back to port 0: ``sendto`` fails);
- an indication, success or error response: ``None`` (only requests are answered, RFC 8489 §6.3);
- a request over the per-source rate limit: ``None``;
- a request with a sound header whose attributes do not decode: 400 Bad Request;
- a request whose FINGERPRINT is present but wrong: ``None`` (RFC 8489 §7.3: not STUN meant for us);
- unknown comprehension-required attributes: 420 with UNKNOWN-ATTRIBUTES (RFC 8489 §6.3.1);
- RESPONSE-PORT or PADDING (RFC 5780 §7.5, §7.6): 420, not supported -- both would let a small request steer
  or inflate the answer;
- a CHANGE-REQUEST asking for a change when no alternate address is configured: 420 listing CHANGE-REQUEST
  (RFC 5780 §6.1: how a client learns the server cannot do it; one asking for no change is just answered);
- otherwise, success: XOR-MAPPED-ADDRESS of the sender; with an alternate address, RESPONSE-ORIGIN and
  OTHER-ADDRESS (RFC 5780 §7.3, §7.4), and CHANGE-REQUEST honoured through ``Reply.sendFrom``.

Every response carries FINGERPRINT exactly when the request did (RFC 8489 §7.3: answer in kind), and SOFTWARE
when configured and there is room (below).  The server does not authenticate (no credentials); requests with
MESSAGE-INTEGRITY are answered without it, as RFC 8489 §9 allows for a server that does not use them.

Amplification bound
-------------------

A response is never longer than ``max(len(request), AMPLIFICATION_FLOOR)`` bytes, with
``AMPLIFICATION_FLOOR = 128``.  The essential answer always fits (the largest is an IPv6 success with
RFC 5780 addresses and FINGERPRINT: 100 bytes); SOFTWARE is left out, and an UNKNOWN-ATTRIBUTES list cut short,
when they would not fit.  So a spoofed 20-byte request earns at most 128 bytes (6.4x), a typical 28-byte
fingerprinted one at most 4.6x; :class:`RateLimit` bounds the rate per source address on top.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

from twisted_sipnat.core.addresses import unmappedHost
from twisted_sipnat.core.ratelimit import RateLimit
from twisted_sipnat.core.stun import (
    BINDING,
    CHANGE_REQUEST,
    ERROR,
    HEADER_LENGTH,
    PADDING,
    REQUEST,
    RESPONSE_PORT,
    SUCCESS,
    Attribute,
    ErrorCode,
    Message,
    OtherAddress,
    ResponseOrigin,
    Software,
    STUNDecodeError,
    STUNEncodeError,
    UnknownAttributes,
    XorMappedAddress,
    decode,
    peekHeader,
)
from twisted_sipnat.errors import InvalidSettingsError

__all__ = [
    "AMPLIFICATION_FLOOR",
    "DEFAULT_RESPONDER_BURST",
    "DEFAULT_RESPONDER_RATE",
    "BindingResponder",
    "RateLimit",
    "Reply",
]

HostPort = Tuple[str, int]

#: A response is at most ``max(len(request), AMPLIFICATION_FLOOR)`` bytes.
AMPLIFICATION_FLOOR = 128

#: The per-source rate limit every role's responder uses unless told otherwise: 20 requests a second, in bursts
#: of up to 40.  A client keeps a flow alive with one request every 25-30 s (RFC 5626 §4.4.1) and sends at most
#: 7 per transaction (RFC 8489 §6.2.1), so an honest source -- even a NAT with a hundred UAs behind one address,
#: about 4 a second -- stays well below it, while a spoofed flood earns at most 20 answers a second per forged
#: address.  Defined here once; the shell and the twistd roles import these.
DEFAULT_RESPONDER_RATE = 20.0
DEFAULT_RESPONDER_BURST = 40

#: Known attributes this server does not implement; a request that carries them is answered 420.
UNSUPPORTED = (RESPONSE_PORT, PADDING)


@dataclass(frozen=True, slots=True)
class Reply:
    """
    What to send back: ``data`` to the request's source, from ``sendFrom`` -- one of the server's own
    ``(host, port)`` addresses, chosen by an RFC 5780 CHANGE-REQUEST -- or, when ``sendFrom`` is ``None``,
    from the socket the request arrived on.
    """

    data: bytes
    sendFrom: Optional[HostPort] = None


def _size(attributes: List[Attribute], transactionId: bytes) -> int:
    return sum((4 + len(a.encodeValue(transactionId)) + 3) & ~3 for a in attributes)


class BindingResponder:
    """
    Answers STUN Binding requests (RFC 8489 §6.3) and, given an ``alternate`` address, the RFC 5780 NAT
    behaviour discovery tests.

    ``primary`` is the server's own ``(host, port)``; ``alternate`` a second one that differs in both IP and
    port (RFC 5780 §4.1 needs both), which requires ``primary``.  ``software`` is the SOFTWARE value for
    responses, ``rateLimit`` an optional per-source :class:`RateLimit`.
    """

    __slots__ = ("software", "primary", "alternate", "rateLimit", "_software")

    def __init__(
        self,
        software: Optional[str] = None,
        primary: Optional[HostPort] = None,
        alternate: Optional[HostPort] = None,
        rateLimit: Optional[RateLimit] = None,
    ) -> None:
        if alternate is not None:
            if primary is None:
                raise InvalidSettingsError("alternate", alternate, "an alternate address needs a primary address")
            if alternate[0] == primary[0] or alternate[1] == primary[1]:
                raise InvalidSettingsError(
                    "alternate", alternate, f"must differ from primary {primary!r} in both IP address and port"
                )
        self.software = software
        self.primary = primary
        self.alternate = alternate
        self.rateLimit = rateLimit
        self._software: List[Attribute] = [Software(software)] if software else []

    def respond(
        self,
        data: bytes,
        source: HostPort,
        receivedOn: Optional[HostPort] = None,
        now: float = 0.0,
    ) -> Optional[Reply]:
        """
        The reply to ``data`` received from ``source`` on the server address ``receivedOn`` (default: the
        primary) at time ``now``, or ``None`` to send nothing.  Never raises because of ``data``.
        """
        if not source[1]:
            return None
        data = bytes(data)
        # RFC 8489 §6.3: a message whose header checks fail (leading bits, cookie, a sensible length) or whose
        # method is not supported is silently discarded; only requests are answered.
        header = peekHeader(data)
        if header is None:
            return None
        method, messageClass, transactionId = header
        if messageClass != REQUEST or method != BINDING:
            return None
        rateLimit = self.rateLimit
        if rateLimit is not None and not rateLimit.allow(source[0], now):
            return None
        budget = max(len(data), AMPLIFICATION_FLOOR)
        try:
            request = decode(data)
        except STUNDecodeError:
            # a sound header around malformed attributes: a Bad Request (RFC 8489 §6.3.1)
            return self._error(method, transactionId, 400, "Bad Request", [], False, budget)
        fingerprint = request.hasFingerprint
        if fingerprint and not request.verifyFingerprint():
            return None

        # A server lists every comprehension-required type it does not understand, RFC 3489's reserved ones
        # included (RFC 8489 §6.3.1); only a client tolerates those (see Message.unknownComprehensionRequired).
        unknown = list(request.unknownRequired(tolerate=()))
        for unsupported in UNSUPPORTED:  # one pass each, not a list search per attribute: no quadratic work
            if unsupported not in unknown and any(a.type == unsupported for a in request.attributes):
                unknown.append(unsupported)
        change = request.changeRequest
        if change is not None and (change[0] or change[1]) and self.alternate is None:
            unknown.append(CHANGE_REQUEST)
        if unknown:
            return self._error(method, transactionId, 420, "Unknown Attribute", unknown, fingerprint, budget)

        attributes: List[Attribute] = [XorMappedAddress(unmappedHost(source[0]), source[1])]
        sendFrom: Optional[HostPort] = None
        if self.alternate is not None and self.primary is not None:
            (ip1, p1), (ip2, p2) = self.primary, self.alternate
            arrived = receivedOn if receivedOn is not None else self.primary
            # Which of the server's IPs and ports the request arrived on (anything else counts as primary).
            ipHere, ipThere = (ip2, ip1) if arrived[0] == ip2 else (ip1, ip2)
            portHere, portThere = (p2, p1) if arrived[1] == p2 else (p1, p2)
            changeIP, changePort = change if change is not None else (False, False)
            origin = (ipThere if changeIP else ipHere, portThere if changePort else portHere)
            if origin != (ipHere, portHere):
                sendFrom = origin
            attributes.append(ResponseOrigin(*origin))
            attributes.append(OtherAddress(ipThere, portThere))
        return self._reply(SUCCESS, transactionId, attributes, fingerprint, budget, sendFrom)

    def _error(
        self,
        method: int,
        transactionId: bytes,
        code: int,
        reason: str,
        unknown: List[int],
        fingerprint: bool,
        budget: int,
    ) -> Optional[Reply]:
        attributes: List[Attribute] = [ErrorCode(code, reason)]
        if unknown:
            # Each listed type costs 2 bytes; cut the list rather than exceed the amplification bound.
            room = budget - HEADER_LENGTH - _size(attributes, transactionId) - 4 - (8 if fingerprint else 0)
            attributes.append(UnknownAttributes(tuple(unknown[: max(1, room // 2)])))
        return self._reply(ERROR, transactionId, attributes, fingerprint, budget, None, method)

    def _reply(
        self,
        messageClass: int,
        transactionId: bytes,
        attributes: List[Attribute],
        fingerprint: bool,
        budget: int,
        sendFrom: Optional[HostPort],
        method: int = BINDING,
    ) -> Optional[Reply]:
        if self._software:
            size = HEADER_LENGTH + _size(attributes + self._software, transactionId) + (8 if fingerprint else 0)
            if size <= budget:
                attributes = attributes + self._software
        try:
            data = Message(method, messageClass, transactionId, attributes).encode(None, fingerprint)
        except STUNEncodeError:
            return None  # a source address we cannot express (not an IP literal): nothing sensible to send
        return Reply(data, sendFrom)
