"""
The edge's registrar, sans-IO: RFC 3261 §10.3 REGISTER processing and RFC 5626 §6 outbound bindings, with every
table bounded and expiry driven by the caller's ``now``.

Theory of operation
===================

:meth:`Registrar.register` takes a parsed REGISTER (its top Via already stamped by the caller), the
:class:`Flow` it arrived on and ``now``, and returns the response to send with what changed.  The steps are
RFC 3261 §10.3's, in its order:

1. the Request-URI's host must be a domain this edge serves, else 404 (the edge does not forward REGISTER);
2. ``Require`` may name only ``outbound`` (RFC 5626), else 420 with ``Unsupported`` (§8.2.2.3);
3. authentication is not done: anyone may register, which is why every table is bounded;
4. nor is authorisation (which AORs an authenticated user may register);
5. the address-of-record is the To URI in canonical form (:func:`aorOf`: scheme, unescaped user, lower-case
   host, no port, no parameters); a To that is not a SIP URI with a user in a served domain gets 404;
6. ``Contact: *`` is allowed only alone and with ``Expires: 0`` (else 400) and removes every binding of the AOR;
   each Contact's expiry is its ``expires`` parameter, else the ``Expires`` header, else ``defaultExpires``; a
   non-zero expiry below ``minExpires`` (and below one hour, as §10.3 step 7 says) is refused with 423 and
   ``Min-Expires``; above ``maxExpires`` it is cut to ``maxExpires``;
7. each Contact is looked up among the AOR's bindings with the URI equality of §19.1.4 (or, for an RFC 5626
   outbound Contact, by ``(AOR, +sip.instance, reg-id)``): a different Call-ID replaces the binding, the same
   Call-ID replaces it only with a higher CSeq; a lower one fails the request (500: "the update MUST be aborted
   and the request fails").  The same CSeq with the same Via branch is a retransmission (no transaction layer
   here absorbs it), answered with the current bindings and nothing changed.  All changes are committed only if
   every one succeeds (§10.3 step 7), so a refused REGISTER changes nothing;
8. the 200 lists every current binding of the AOR with its remaining ``expires``.  A REGISTER without Contact is
   a query and changes nothing (a 200 without Contact when there are no bindings).

RFC 5626 §6: a Contact with ``+sip.instance`` and ``reg-id`` in a REGISTER with ``outbound`` in ``Supported`` (or
``Require``) is an outbound binding, keyed by ``(AOR, instance, reg-id)`` and pinned to the flow it came in on;
the 200 then carries ``Require: outbound``.  Every binding remembers its flow (the NAT's public side, which is
all an edge can reach), and :meth:`Registrar.flowClosed` marks the flow of a closed connection gone.

Bounds: at most ``maxRegistrations`` bindings in total, and ``maxContacts`` per AOR (each 200 lists all of an
AOR's bindings, so this bounds the answer to a spoofable query).  A REGISTER that would add beyond either is
refused with 503 and ``Retry-After`` (the time until the next binding expires); refreshes and removals still
work; nothing is evicted.  Expiry is a heap of ``(time, serial, key)`` with lazy deletion, compacted when stale entries outnumber
live ones, so the caller keeps one timer (:meth:`nextWakeup`, :meth:`expire`) instead of one per binding.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Literal, Optional, Sequence, Set, Tuple

from twisted_sipnat.errors import InvalidSettingsError

from .sip import (
    SIPURI,
    WILDCARD,
    NameAddress,
    Request,
    Response,
    SIPParseError,
    Via,
    contactsOf,
    cseqOf,
    responseTo,
    setTopVia,
)

__all__ = [
    "Binding",
    "DEFAULT_DEFAULT_EXPIRES",
    "DEFAULT_MAX_CONTACTS",
    "DEFAULT_MAX_EXPIRES",
    "DEFAULT_MAX_REGISTRATIONS",
    "DEFAULT_MIN_EXPIRES",
    "Flow",
    "RegisterResult",
    "Registrar",
    "aorOf",
    "answerKeepVia",
]

#: Bindings held in total (about 1 KB each, so some 50 MB when full).
DEFAULT_MAX_REGISTRATIONS = 50000
#: Bindings of one AOR: every 200 lists them all, so this bounds the size of the answer to a (spoofable) query.
DEFAULT_MAX_CONTACTS = 10
#: The expiry granted when a REGISTER asks for none (RFC 3261 §10.2.1.1 suggests one hour).
DEFAULT_DEFAULT_EXPIRES = 3600
#: Shorter non-zero expiries get 423 (RFC 3261 §10.3 step 7); 60 s is what RFC 3261 §10.2.8 and Kamailio use.
DEFAULT_MIN_EXPIRES = 60
#: Longer requests are cut to this.
DEFAULT_MAX_EXPIRES = 7200
#: RFC 3261 §10.3 step 7: 423 only for an interval "smaller than one hour".
_ONE_HOUR = 3600
#: Extensions this registrar implements (RFC 3261 §8.2.2.3 ``Require`` / RFC 5626 §6).
SUPPORTED = ("outbound",)


@dataclass(frozen=True, slots=True)
class Flow:
    """
    Where a message came from and how to reach that source again (RFC 5626 §3.2 "flow"): ``transport``
    (``"udp"``, ``"tcp"`` or ``"tls"``), the source ``host`` and ``port`` and, for a connection, the shell's ``connection``
    serial (0 for UDP, where the source address alone is the flow).
    """

    transport: str
    host: str
    port: int
    connection: int = 0


BindingKey = Tuple[object, ...]


class _ContactKey:
    """
    A Contact URI as a dictionary key: §19.1.4 equality, with the hash computed once (hashing a
    :class:`SIPURI` normalises its host, and a binding's key is looked up several times per REGISTER).
    """

    __slots__ = ("uri", "_hash")

    def __init__(self, uri: SIPURI) -> None:
        self.uri = uri
        self._hash = hash(uri)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _ContactKey) and self._hash == other._hash and self.uri == other.uri


@dataclass(eq=False, slots=True)
class Binding:
    """One registered Contact of an AOR: what :meth:`Registrar.lookup` returns and the proxy routes to."""

    key: BindingKey
    aor: str
    contact: NameAddress  # as registered, without its expires parameter
    uri: SIPURI
    callId: str
    cseq: int
    branch: Optional[str]
    expiresAt: float
    flow: Flow
    outbound: bool
    order: int
    q: float = 1.0
    flowGone: bool = False

    def remaining(self, now: float) -> int:
        return max(0, math.ceil(self.expiresAt - now))


@dataclass
class RegisterResult:
    """The response to send, and the bindings added or refreshed and removed (for the log)."""

    response: Response
    registered: List[Binding] = field(default_factory=list)
    removed: List[Binding] = field(default_factory=list)


def aorOf(uri: SIPURI) -> str:
    """
    The canonical address-of-record of ``uri`` (RFC 3261 §10.3 step 5): scheme, user with escapes decoded, host
    in lower case; port, parameters and headers removed.
    """
    user = uri.user or ""
    if "%" in user:
        from urllib.parse import unquote

        user = unquote(user)
    host = f"[{uri.host}]" if ":" in uri.host else uri.host.lower()
    return f"{uri.scheme}:{user}@{host}" if user else f"{uri.scheme}:{host}"


def answerKeepVia(response: Response, seconds: int) -> None:
    """RFC 6223 §4.3: a bare ``;keep`` on the response's top Via is answered ``;keep=seconds``."""
    try:
        via = Via.parse(response.headers.get("Via") or "")
    except SIPParseError:
        return
    if via.hasParam("keep") and via.param("keep") is None:
        setTopVia(response.headers, via.withParam("keep", str(seconds)))


class _Refused(Exception):
    def __init__(self, code: int, reason: Optional[str] = None, **headers: str) -> None:
        super().__init__(code)
        self.code = code
        self.reason = reason
        self.headers = headers


def _expiresHeader(request: Request) -> Optional[int]:
    value = request.headers.get("Expires")
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit() or len(value) > 10:
        raise _Refused(400, "Bad Request (malformed Expires)")
    return int(value)


def _hasOption(request: Request, option: str) -> bool:
    return any(
        item.lower() == option for name in ("Supported", "Require") for item in request.headers.getAll(name)
    )


def _q(contact: NameAddress) -> float:
    value = contact.param("q")
    try:
        q = float(value) if value is not None else 1.0
    except ValueError:
        raise _Refused(400, "Bad Request (malformed q)") from None
    if not 0.0 <= q <= 1.0:
        raise _Refused(400, "Bad Request (q outside 0-1)")
    return q


_Change = Tuple[Literal["put", "drop"], BindingKey, Optional[Binding]]


class Registrar:
    """
    Bindings of AORs in ``domains`` (see the module docstring for the rules).  ``flowTimer`` adds ``Flow-Timer``
    (RFC 5626 §5.4) to every REGISTER 2xx and answers a ``;keep`` offer (RFC 6223).
    """

    def __init__(
        self,
        domains: Sequence[str],
        *,
        maxRegistrations: int = DEFAULT_MAX_REGISTRATIONS,
        maxContacts: int = DEFAULT_MAX_CONTACTS,
        minExpires: int = DEFAULT_MIN_EXPIRES,
        maxExpires: int = DEFAULT_MAX_EXPIRES,
        defaultExpires: int = DEFAULT_DEFAULT_EXPIRES,
        flowTimer: Optional[int] = None,
    ) -> None:
        for name, value in (("max-registrations", maxRegistrations), ("max-contacts", maxContacts),
                            ("min-expires", minExpires),
                            ("max-expires", maxExpires), ("default-expires", defaultExpires)):
            if not isinstance(value, int) or value < 1:
                raise InvalidSettingsError(name, value, "must be a whole number >= 1")
        if not minExpires <= defaultExpires <= maxExpires:
            raise InvalidSettingsError(
                "default-expires", defaultExpires, f"must be within --min-expires {minExpires} and "
                f"--max-expires {maxExpires}"
            )
        if flowTimer is not None and flowTimer < 1:
            raise InvalidSettingsError("flow-timer", flowTimer, "must be a positive number of seconds")
        self.domains = frozenset(d.lower().strip("[]") for d in domains)
        self.maxRegistrations = maxRegistrations
        self.maxContacts = maxContacts
        self.minExpires = minExpires
        self.maxExpires = maxExpires
        self.defaultExpires = defaultExpires
        self.flowTimer = flowTimer
        self.refused = 0  # REGISTERs refused because the table was full
        self._byAOR: Dict[str, Dict[BindingKey, Binding]] = {}
        self._byContact: Dict[_ContactKey, Binding] = {}
        self._byFlow: Dict[Flow, Set[BindingKey]] = {}
        self._bindings: Dict[BindingKey, Binding] = {}
        self._heap: List[Tuple[float, int, BindingKey]] = []
        self._serial = 0

    # -- reading ------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._bindings)

    def __iter__(self) -> Iterator[Binding]:
        return iter(list(self._bindings.values()))

    def serves(self, host: str) -> bool:
        """Whether ``host`` is one of the domains of this registrar (case-insensitive)."""
        return host.lower().strip("[]") in self.domains

    def lookup(self, aor: str, now: float) -> List[Binding]:
        """The live bindings of ``aor`` (canonical, :func:`aorOf`), best first: highest q, then newest."""
        found = [b for b in self._byAOR.get(aor, {}).values() if b.expiresAt > now]
        return sorted(found, key=lambda b: (-b.q, -b.order))

    def byContact(self, uri: SIPURI, now: float) -> Optional[Binding]:
        """The live binding registered with exactly this Contact URI (§19.1.4), if any."""
        binding = self._byContact.get(_ContactKey(uri))
        return binding if binding is not None and binding.expiresAt > now else None

    def flowCounts(self) -> Dict[str, int]:
        """Distinct live flows holding bindings, by transport."""
        counts: Dict[str, int] = {}
        for flow, keys in self._byFlow.items():
            if any(not self._bindings[k].flowGone for k in keys):
                counts[flow.transport] = counts.get(flow.transport, 0) + 1
        return counts

    # -- time -------------------------------------------------------------------------------------------------

    def nextWakeup(self) -> Optional[float]:
        """When the earliest binding expires (``None`` with no bindings): the caller's one timer."""
        heap = self._heap
        while heap:
            at, _, key = heap[0]
            binding = self._bindings.get(key)
            if binding is not None and binding.expiresAt == at:
                return at
            heapq.heappop(heap)
        return None

    def expire(self, now: float) -> List[Binding]:
        """Remove and return every binding whose time has come."""
        gone = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, _, key = heapq.heappop(heap)
            binding = self._bindings.get(key)
            if binding is not None and binding.expiresAt == at:
                self._drop(key)
                gone.append(binding)
        return gone

    def flowClosed(self, flow: Flow) -> List[Binding]:
        """The connection ``flow`` is closed: its bindings stay until they expire, but can no longer be reached."""
        marked = []
        for key in self._byFlow.get(flow, ()):
            binding = self._bindings[key]
            binding.flowGone = True
            marked.append(binding)
        return marked

    def clear(self) -> None:
        self._byAOR.clear()
        self._byContact.clear()
        self._byFlow.clear()
        self._bindings.clear()
        self._heap = []

    # -- REGISTER ---------------------------------------------------------------------------------------------

    def register(self, request: Request, flow: Flow, now: float) -> RegisterResult:
        """Process one REGISTER (RFC 3261 §10.3); ``request`` has passed ``checkRequest`` and Via stamping."""
        try:
            return self._register(request, flow, now)
        except _Refused as e:
            response = responseTo(request, e.code, e.reason)
            for name, value in e.headers.items():
                response.headers.add(name.replace("_", "-"), value)
            return RegisterResult(response)
        except SIPParseError as e:
            return RegisterResult(responseTo(request, 400, f"Bad Request ({e.reason[:60]})"))

    def _register(self, request: Request, flow: Flow, now: float) -> RegisterResult:
        target = SIPURI.parse(request.uri) if request.uri[:4].lower() in ("sip:", "sips") else None
        if target is None:
            raise _Refused(416)
        if not self.serves(target.host):  # step 1
            raise _Refused(404, "Not Found (not a domain of this registrar)")
        unsupported = [o for o in request.headers.getAll("Require") if o.lower() not in SUPPORTED]
        if unsupported:  # step 2
            raise _Refused(420, Unsupported=", ".join(unsupported))
        to = NameAddress.parse(request.headers.get("To") or "")  # step 5
        try:
            toURI = to.sipURI
        except SIPParseError:
            raise _Refused(404, "Not Found (To is not a SIP URI)") from None
        if toURI.user is None or not self.serves(toURI.host):
            raise _Refused(404, "Not Found (To is not an address of this domain)")
        aor = aorOf(toURI)
        callId = request.headers.get("Call-ID") or ""
        cseq, _ = cseqOf(request)
        topVia = request.headers.get("Via")
        branch = Via.parse(topVia).branch if topVia else None
        contacts = contactsOf(request.headers)
        expiresHeader = _expiresHeader(request)
        current = self._byAOR.get(aor, {})
        changes: List[_Change] = []
        retransmission = False
        outbound = False
        if contacts == WILDCARD:  # step 6
            if expiresHeader != 0:
                raise _Refused(400, "Bad Request (Contact: * needs Expires: 0)")
            for key, binding in current.items():
                if binding.callId == callId and cseq <= binding.cseq:
                    raise _Refused(500, "Server Internal Error (CSeq not higher than the binding's)")
                changes.append(("drop", key, None))
        else:
            outboundRequest = _hasOption(request, "outbound")
            if outboundRequest and sum(1 for c in contacts if c.param("reg-id") is not None) > 1:
                raise _Refused(400, "Bad Request (reg-id on more than one Contact)")  # RFC 5626 §6
            seen: Set[BindingKey] = set()
            for contact in contacts:
                change, isOutbound, again = self._plan(
                    aor, contact, expiresHeader, current, callId, cseq, branch, flow, now, outboundRequest
                )
                if change[1] in seen:
                    continue
                seen.add(change[1])
                outbound = outbound or isOutbound
                retransmission = retransmission or again
                changes.append(change)
        if not retransmission:
            added = sum(1 for kind, key, _ in changes if kind == "put" and key not in self._bindings)
            dropped = sum(1 for kind, key, _ in changes if kind == "drop" and key in current)
            if added and len(self._bindings) + added > self.maxRegistrations:
                self.refused += 1
                raise _Refused(503, "Service Unavailable (registrar full)", Retry_After=str(self._retryAfter(now)))
            if added and len(current) + added - dropped > self.maxContacts:
                self.refused += 1
                raise _Refused(503, f"Service Unavailable (more than {self.maxContacts} contacts for the AOR)",
                               Retry_After=str(self._retryAfter(now, aor)))
        result = RegisterResult(responseTo(request, 200))
        if not retransmission:
            for kind, key, new in changes:  # commit: every check passed (step 7)
                old = self._bindings.get(key)
                if old is not None:
                    self._drop(key)
                    if kind == "drop":
                        result.removed.append(old)
                if kind == "put" and new is not None:
                    self._put(new)
                    result.registered.append(new)
        self._answer(result.response, aor, outbound, now)
        return result

    def _plan(
        self,
        aor: str,
        contact: NameAddress,
        expiresHeader: Optional[int],
        current: Dict[BindingKey, Binding],
        callId: str,
        cseq: int,
        branch: Optional[str],
        flow: Flow,
        now: float,
        outboundRequest: bool,
    ) -> Tuple[_Change, bool, bool]:
        """One Contact's change (step 6 and 7), whether it is an outbound one, and whether it is a retransmission."""
        try:
            uri = contact.sipURI
        except SIPParseError:
            raise _Refused(400, "Bad Request (Contact is not a SIP URI)") from None
        asked = contact.expires
        if asked is None:
            asked = expiresHeader if expiresHeader is not None else self.defaultExpires
        if 0 < asked < self.minExpires and asked < _ONE_HOUR:
            raise _Refused(423, Min_Expires=str(self.minExpires))
        granted = 0 if asked == 0 else min(max(asked, self.minExpires), self.maxExpires)
        instance, regId = contact.instance, contact.regId
        isOutbound = outboundRequest and instance is not None and regId is not None
        key: BindingKey = ("ob", aor, instance, regId) if isOutbound else ("uri", aor, _ContactKey(uri))
        old = current.get(key)
        again = False
        if old is not None and old.callId == callId:
            if cseq < old.cseq or (cseq == old.cseq and branch != old.branch):
                raise _Refused(500, "Server Internal Error (CSeq not higher than the binding's)")
            again = cseq == old.cseq
        if granted == 0:
            return ("drop", key, None), False, again
        self._serial += 1
        stored = NameAddress(contact.uri, contact.displayName, tuple(
            (n, v) for n, v in contact.params if n.lower() != "expires"
        ))
        binding = Binding(key, aor, stored, uri, callId, cseq, branch, now + granted, flow, isOutbound,
                          self._serial, _q(contact))
        return ("put", key, binding), isOutbound, again

    def _answer(self, response: Response, aor: str, outbound: bool, now: float) -> None:
        """Step 8: every current binding with its expires; RFC 5626 §6 Require; Flow-Timer and keep."""
        for binding in self.lookup(aor, now):
            response.headers.add("Contact", str(binding.contact.withParam("expires", str(binding.remaining(now)))))
        if outbound:
            response.headers.add("Require", "outbound")
        if self.flowTimer is not None:
            response.headers.add("Flow-Timer", str(self.flowTimer))
            answerKeepVia(response, self.flowTimer)

    def _retryAfter(self, now: float, aor: Optional[str] = None) -> int:
        if aor is not None:
            wake: Optional[float] = min((b.expiresAt for b in self._byAOR.get(aor, {}).values()), default=None)
        else:
            wake = self.nextWakeup()
        return 60 if wake is None else int(min(3600, max(1, math.ceil(wake - now))))

    def _put(self, binding: Binding) -> None:
        key = binding.key
        self._bindings[key] = binding
        self._byAOR.setdefault(binding.aor, {})[key] = binding
        self._byContact[_ContactKey(binding.uri)] = binding
        self._byFlow.setdefault(binding.flow, set()).add(key)
        heapq.heappush(self._heap, (binding.expiresAt, binding.order, key))
        if len(self._heap) > 2 * len(self._bindings) + 64:  # stale entries of refreshed bindings
            self._heap = [(b.expiresAt, b.order, k) for k, b in self._bindings.items()]
            heapq.heapify(self._heap)

    def _drop(self, key: BindingKey) -> None:
        binding = self._bindings.pop(key)
        perAOR = self._byAOR[binding.aor]
        del perAOR[key]
        if not perAOR:
            del self._byAOR[binding.aor]
        contact = _ContactKey(binding.uri)
        if self._byContact.get(contact) is binding:
            del self._byContact[contact]
        keys = self._byFlow[binding.flow]
        keys.discard(key)
        if not keys:
            del self._byFlow[binding.flow]

