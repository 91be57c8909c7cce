"""
The STUN Binding server, sans-IO: request bytes and the sender's address in, response bytes (and which of the
server's addresses to send them from, and where to) out.

Theory of operation
-------------------

:meth:`BindingResponder.respond` is called with every datagram that looks like STUN on a server socket (the
shared SIP socket with ``stunResponder=True``, the twistd ``stun``/``edge`` roles, the RFC 5780 discovery
server) and with every message of a STUN-over-TCP stream (``stream=True``).  It returns a :class:`Reply` or
``None`` (send nothing) and never raises on any input bytes:

- not STUN, or failing RFC 8489 §6.3's header checks (leading bits, a length that matches the datagram), or a
  method other than Binding: ``None`` (silently discarded, §6.3);
- from source port 0: ``None`` (deliverable, but nothing can be sent back to port 0: ``sendto`` fails);
- an indication, success or error response: ``None`` (only requests are answered, RFC 8489 §6.3);
- a request over the per-source rate limit: ``None``;
- a request that ends in a FINGERPRINT whose CRC is wrong: ``None`` (RFC 8489 §7.3: not STUN meant for us),
  whether or not its other attributes decode;
- a request with a sound header whose attributes do not decode: 400 Bad Request, with FINGERPRINT when the
  request ended in a valid one (answer in kind, RFC 8489 §7.3);
- unknown comprehension-required attributes: 420 with UNKNOWN-ATTRIBUTES (RFC 8489 §6.3.1);
- PADDING (RFC 5780 §7.6): 420, not supported -- it would let a small request inflate the answer;
- a CHANGE-REQUEST asking for a change when no alternate address is configured: 420 listing CHANGE-REQUEST
  (RFC 5780 §6.1: how a client learns the server cannot do it; one asking for no change is just answered);
- RESPONSE-PORT (RFC 5780 §7.5) over UDP: the answer goes to the request's source IP at that port
  (``Reply.sendTo``); it cannot name another IP, so it steers nothing an attacker could not already steer by
  forging the source port, and the rate limit and the amplification bound apply as to any answer.  Port 0
  gets a 400.  Over a stream the attribute is meaningless (the answer can only go back on the connection):
  it is ignored and the request answered on the connection;
- otherwise, success: XOR-MAPPED-ADDRESS of the sender; with an alternate address, RESPONSE-ORIGIN and
  OTHER-ADDRESS (RFC 5780 §7.3, §7.4), and CHANGE-REQUEST honoured through ``Reply.sendFrom``.

Every response carries FINGERPRINT exactly when the request did (RFC 8489 §7.3: answer in kind), and SOFTWARE
when configured and there is room (below).  The server does not authenticate (no credentials); requests with
MESSAGE-INTEGRITY are answered without it, as RFC 8489 §9 allows for a server that does not use them.

RFC 3489 clients
----------------

A Binding request without the magic cookie comes from an RFC 3489 client (RFC 8489 §12.2), which a server
SHOULD answer: with the whole 128-bit transaction ID echoed, MAPPED-ADDRESS instead of XOR-MAPPED-ADDRESS, no
FINGERPRINT and no SOFTWARE (RFC 3489 §11.2 has neither), and -- with an alternate address -- RFC 3489's
SOURCE-ADDRESS and CHANGED-ADDRESS (§11.2.3, §11.2.5) where an RFC 5780 answer has RESPONSE-ORIGIN and
OTHER-ADDRESS; CHANGE-REQUEST is honoured the same way.  RESPONSE-ADDRESS (RFC 3489 §11.2.2), which would send
the answer to any address at all, gets a 420 as RFC 8489 §12.2 expects.  Only datagrams: RFC 3489 defines
Binding requests over UDP only, so STUN over TCP stays RFC 8489 (the stream framer refuses a cookie-less
header).  The client side never takes an RFC 3489 message (``decode`` and ``peekHeader`` refuse them).

Amplification bound
-------------------

A response is never longer than ``max(len(request), AMPLIFICATION_FLOOR)`` bytes, with
``AMPLIFICATION_FLOOR = 128``.  The essential answer always fits (the largest is an IPv6 success with
RFC 5780 addresses and FINGERPRINT: 100 bytes); SOFTWARE is left out, and an UNKNOWN-ATTRIBUTES list cut short,
when they would not fit.  So a spoofed 20-byte request earns at most 128 bytes (6.4x), a typical 28-byte
fingerprinted one at most 4.6x; :class:`RateLimit` bounds the rate per source address on top.

Figures and drop lines
----------------------

The responder counts every request by result (:attr:`BindingResponder.answered`, ``rejected`` -- a 420 --,
``rateLimited``, ``malformed`` -- a 400 or a broken request dropped) for ``sipnat_stun_requests_total``, and
tallies rate-limited and malformed requests in a :class:`DropTally` each, so the operator reads one line per
interval per kind ("dropped 1,234 rate-limited STUN requests from 17 sources in the last 10 s") through the
``say`` callable the shell gives it, never one line per datagram and never nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Protocol, Tuple

from twisted_sipnat.core.addresses import unmappedHost
from twisted_sipnat.core.ratelimit import DropTally, RateLimit
from twisted_sipnat.core.stun import (
    BINDING,
    CHANGE_REQUEST,
    CHANGED_ADDRESS,
    ERROR,
    HEADER_LENGTH,
    PADDING,
    REQUEST,
    SOURCE_ADDRESS,
    SUCCESS,
    Attribute,
    ErrorCode,
    MappedAddress,
    Message,
    OtherAddress,
    RawAttribute,
    ResponseOrigin,
    ResponsePort,
    Software,
    STUNDecodeError,
    STUNEncodeError,
    UnknownAttributes,
    XorMappedAddress,
    decode,
    decodeClassic,
    encodeClassic,
    endsWithValidFingerprint,
    peekClassicHeader,
    peekHeader,
)
from twisted_sipnat.errors import InvalidSettingsError

__all__ = [
    "AMPLIFICATION_FLOOR",
    "DEFAULT_RESPONDER_BURST",
    "DEFAULT_RESPONDER_RATE",
    "BindingResponder",
    "DropTally",
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
UNSUPPORTED = (PADDING,)

#: The FINGERPRINT TLV header (type 0x8028, length 4): how the last 8 bytes of an undecodable request are told
#: to be a FINGERPRINT attribute (RFC 8489 §14.7: it is always last).
_FINGERPRINT_TLV = b"\x80\x28\x00\x04"

#: The results :meth:`BindingResponder.reportFigures` reports as ``sipnat_stun_requests_total{result}``.
RESULTS = ("answered", "rejected", "rate_limited", "malformed")


@dataclass(frozen=True, slots=True)
class Reply:
    """
    What to send back: ``data`` to ``sendTo`` -- ``None`` for the request's source, else the source IP at the
    port a RESPONSE-PORT asked for (RFC 5780 §7.5; never another IP) -- from ``sendFrom``, one of the server's
    own ``(host, port)`` addresses chosen by an RFC 5780 CHANGE-REQUEST, or, when ``sendFrom`` is ``None``,
    from the socket the request arrived on.  A stream caller writes ``data`` on its connection (``sendTo`` and
    ``sendFrom`` are always ``None`` for ``stream=True``).
    """

    data: bytes
    sendFrom: Optional[HostPort] = None
    sendTo: Optional[HostPort] = None


class FigureSink(Protocol):
    """What :meth:`BindingResponder.reportFigures` writes to: ``twisted_sipnat.service.figures.Figures``."""

    def count(self, name: str, value: float, **labels: str) -> None: ...

    def gauge(self, name: str, value: float, **labels: str) -> None: ...


def _size(attributes: List[Attribute], transactionId: bytes) -> int:
    return sum((4 + len(a.encodeValue(transactionId)) + 3) & ~3 for a in attributes)


def _classicAddress(attrType: int, host: str, port: int) -> Attribute:
    """An RFC 3489 address attribute that RFC 8489 reserves (SOURCE-ADDRESS, CHANGED-ADDRESS): MAPPED-ADDRESS's layout."""
    return RawAttribute(attrType, MappedAddress(host, port).encodeValue(b""))


class BindingResponder:
    """
    Answers STUN Binding requests (RFC 8489 §6.3, and RFC 3489 clients' as §12.2 asks) and, given an
    ``alternate`` address, the RFC 5780 NAT behaviour discovery tests.

    ``primary`` is the server's own ``(host, port)``; ``alternate`` a second one that differs in both IP and
    port (RFC 5780 §4.1 needs both), which requires ``primary``.  ``software`` is the SOFTWARE value for
    responses, ``rateLimit`` an optional per-source :class:`RateLimit`.  ``say`` gets the drop summary lines
    (at most one per ``summaryInterval`` seconds per kind); the shell sets it to a logging call.
    """

    __slots__ = (
        "software", "primary", "alternate", "rateLimit", "say", "answered", "rejected", "rateLimited",
        "malformed", "ignored", "rateLimitedDrops", "malformedDrops", "_software",
    )

    def __init__(
        self,
        software: Optional[str] = None,
        primary: Optional[HostPort] = None,
        alternate: Optional[HostPort] = None,
        rateLimit: Optional[RateLimit] = None,
        say: Optional[Callable[[str], None]] = None,
        summaryInterval: float = 10.0,
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
        self.say = say
        #: Requests answered with a success response.
        self.answered = 0
        #: Well-formed requests answered with an error: 420 (unknown or unsupported attributes).
        self.rejected = 0
        #: Requests dropped by the rate limit.
        self.rateLimited = 0
        #: Broken requests: answered 400, or dropped for a wrong FINGERPRINT.
        self.malformed = 0
        #: STUN that is not a Binding request (indications, responses, other methods, source port 0).
        self.ignored = 0
        self.rateLimitedDrops = DropTally("rate-limited STUN requests", summaryInterval)
        self.malformedDrops = DropTally("malformed STUN requests", summaryInterval)
        self._software: List[Attribute] = [Software(software)] if software else []

    # -- figures and drop lines -------------------------------------------------------------------------------

    def counts(self) -> Tuple[Tuple[str, int], ...]:
        """``(result, count)`` for every result of :data:`RESULTS`."""
        return (
            ("answered", self.answered),
            ("rejected", self.rejected),
            ("rate_limited", self.rateLimited),
            ("malformed", self.malformed),
        )

    def reportFigures(self, figures: FigureSink) -> None:
        """``sipnat_stun_requests_total{result}`` (an ``IFigureSource``; ``figures`` is a ``Figures``)."""
        for result, value in self.counts():
            figures.count("sipnat_stun_requests_total", value, result=result)
        if self.rateLimit is not None:
            figures.gauge("sipnat_rate_limit_sources", len(self.rateLimit), protocol="stun")

    @property
    def summariesPending(self) -> bool:
        """Drops are counted that no summary line has reported yet (the shell flushes them within an interval)."""
        return self.rateLimitedDrops.pending > 0 or self.malformedDrops.pending > 0

    def flushSummaries(self, now: float) -> None:
        """Say the summary of every drop not yet reported (a timer's or shutdown's call)."""
        for tally in (self.rateLimitedDrops, self.malformedDrops):
            self._say(tally.flush(now))

    def _say(self, line: Optional[str]) -> None:
        if line is not None and self.say is not None:
            self.say(line)

    def _malformed(self, source: HostPort, now: float) -> None:
        self.malformed += 1
        self._say(self.malformedDrops.drop(source[0], now))

    # -- answering --------------------------------------------------------------------------------------------

    def respond(
        self,
        data: bytes,
        source: HostPort,
        receivedOn: Optional[HostPort] = None,
        now: float = 0.0,
        stream: bool = False,
    ) -> Optional[Reply]:
        """
        The reply to ``data`` received from ``source`` on the server address ``receivedOn`` (default: the
        primary) at time ``now``, or ``None`` to send nothing; ``stream`` when it came over TCP or TLS (no
        RESPONSE-PORT, no RFC 3489).  Never raises because of ``data``.
        """
        if not source[1]:
            self.ignored += 1
            return None
        data = bytes(data)
        # RFC 8489 §6.3: a message whose header checks fail (leading bits, a sensible length) or whose method is
        # not supported is silently discarded; only requests are answered.  No magic cookie: RFC 3489 (§12.2).
        classic: Optional[bytes] = None
        header = peekHeader(data)
        if header is None:
            header = None if stream else peekClassicHeader(data)
            if header is None:
                self.ignored += 1
                return None
            classic = header[2][:4]
            header = (header[0], header[1], header[2][4:])
        method, messageClass, transactionId = header
        if messageClass != REQUEST or method != BINDING:
            self.ignored += 1
            return None
        rateLimit = self.rateLimit
        if rateLimit is not None and not rateLimit.allow(source[0], now):
            self.rateLimited += 1
            self._say(self.rateLimitedDrops.drop(source[0], now))
            return None
        budget = max(len(data), AMPLIFICATION_FLOOR)
        try:
            request = decodeClassic(data) if classic is not None else decode(data)
        except STUNDecodeError:
            # A sound header around malformed attributes: a Bad Request (RFC 8489 §6.3.1), in kind (§7.3): with
            # FINGERPRINT when the request ends in a valid one; none at all when it ends in a wrong one.
            fingerprint = False
            if classic is None and data[-8:-4] == _FINGERPRINT_TLV and len(data) >= HEADER_LENGTH + 8:
                fingerprint = endsWithValidFingerprint(data)
                if not fingerprint:
                    self._malformed(source, now)
                    return None
            self._malformed(source, now)
            return self._error(method, transactionId, 400, "Bad Request", [], fingerprint, budget, classic)
        fingerprint = classic is None and request.hasFingerprint
        if fingerprint and not request.verifyFingerprint():
            self._malformed(source, now)
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
            self.rejected += 1
            return self._error(method, transactionId, 420, "Unknown Attribute", unknown, fingerprint, budget, classic)

        sendTo: Optional[HostPort] = None
        if not stream:
            for a in request.attributes:
                if type(a) is ResponsePort:
                    if not a.port:
                        self._malformed(source, now)
                        return self._error(method, transactionId, 400, "RESPONSE-PORT 0", [], fingerprint, budget,
                                           classic)
                    if a.port != source[1]:
                        sendTo = (source[0], a.port)  # the source IP only: RFC 5780 §7.5
                    break

        mapped = unmappedHost(source[0])
        attributes: List[Attribute] = [
            MappedAddress(mapped, source[1]) if classic is not None else XorMappedAddress(mapped, source[1])
        ]
        sendFrom: Optional[HostPort] = None
        if self.alternate is not None and self.primary is not None:
            (ip1, p1), (ip2, p2) = self.primary, self.alternate
            arrived = receivedOn if receivedOn is not None else self.primary
            # Which of the server's IPs and ports the request arrived on (anything else counts as primary).
            ipHere, ipThere = (ip2, ip1) if arrived[0] == ip2 else (ip1, ip2)
            portHere, portThere = (p2, p1) if arrived[1] == p2 else (p1, p2)
            changeIP, changePort = change if change is not None and not stream else (False, False)
            origin = (ipThere if changeIP else ipHere, portThere if changePort else portHere)
            if origin != (ipHere, portHere):
                sendFrom = origin
            if classic is not None:  # RFC 3489 §11.2.3, §11.2.5
                attributes.append(_classicAddress(SOURCE_ADDRESS, *origin))
                attributes.append(_classicAddress(CHANGED_ADDRESS, ipThere, portThere))
            else:
                attributes.append(ResponseOrigin(*origin))
                attributes.append(OtherAddress(ipThere, portThere))
        reply = self._reply(SUCCESS, transactionId, attributes, fingerprint, budget, sendFrom, classic=classic)
        if reply is None:
            return None
        self.answered += 1
        return Reply(reply.data, reply.sendFrom, sendTo) if sendTo is not None else reply

    def _error(
        self,
        method: int,
        transactionId: bytes,
        code: int,
        reason: str,
        unknown: List[int],
        fingerprint: bool,
        budget: int,
        classic: Optional[bytes] = None,
    ) -> Optional[Reply]:
        attributes: List[Attribute] = [ErrorCode(code, reason)]
        if unknown:
            # Each listed type costs 2 bytes; cut the list rather than exceed the amplification bound.
            room = budget - HEADER_LENGTH - _size(attributes, transactionId) - 4 - (8 if fingerprint else 0)
            listed = unknown[: max(1, room // 2)]
            if classic is not None and len(listed) % 2:
                # RFC 3489 §11.2.11: an odd count repeats one type, so the value is a multiple of 4 bytes.
                listed = listed + listed[-1:] if (len(listed) + 1) * 2 <= room or len(listed) == 1 else listed[:-1]
            attributes.append(UnknownAttributes(tuple(listed)))
        return self._reply(ERROR, transactionId, attributes, fingerprint, budget, None, method, classic)

    def _reply(
        self,
        messageClass: int,
        transactionId: bytes,
        attributes: List[Attribute],
        fingerprint: bool,
        budget: int,
        sendFrom: Optional[HostPort],
        method: int = BINDING,
        classic: Optional[bytes] = None,
    ) -> Optional[Reply]:
        try:
            if classic is not None:
                # RFC 3489 has neither FINGERPRINT nor SOFTWARE; the 128-bit transaction ID is echoed whole.
                message = Message(method, messageClass, transactionId, attributes)
                return Reply(encodeClassic(message, classic), sendFrom)
            if self._software:
                size = HEADER_LENGTH + _size(attributes + self._software, transactionId) + (8 if fingerprint else 0)
                if size <= budget:
                    attributes = attributes + self._software
            data = Message(method, messageClass, transactionId, attributes).encode(None, fingerprint)
        except STUNEncodeError:
            return None  # a source address we cannot express (not an IP literal): nothing sensible to send
        return Reply(data, sendFrom)
