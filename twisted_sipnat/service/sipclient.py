"""
The client role's RFC 3261 REGISTER client: one registration, sent over the shared SIP socket.

It is the ``sipProtocol`` of a :class:`~twisted_sipnat.protocols.SharedDatagramProtocol`, so its REGISTERs leave
from the very socket whose NAT binding the controller keeps alive, and its ``transport`` writes through the
socket arbitration.

This is the shell: the request, the matching of responses, the figures read from them
(:mod:`twisted_sipnat.core.sip.register`) and the RFC 3261 §17.1.2 transaction with its Timers E and F
(:mod:`twisted_sipnat.core.sip.clienttransaction`) are sans-IO; what is left here is one delayed call, the
writes, and the Deferred.  :class:`RegisterTransactions` is that part, whatever the transport;
:class:`RegisterClient` puts it on the UDP socket, and
:class:`~twisted_sipnat.service.sipstreamclient.StreamRegisterClient` on a TCP or TLS connection.
"""

from __future__ import annotations

import secrets
import socket
from collections import Counter
from typing import Any, Callable, Optional, Tuple, Union

from twisted.internet import defer, protocol
from twisted.logger import Logger
from zope.interface import implementer

from ..core.ratelimit import DropTally
from ..core.sip.clienttransaction import T1, T2, TIMER_F, NonInviteClientTransaction, Retransmit, TimedOut
from ..core.sip.digest import Credentials
from ..core.sip.error import SIPParseError
from ..core.sip.message import Request, Response
from ..core.sip.register import grantedExpires, parseAOR, readMessage, registrarKeepalive
from ..core.sip.registration import Registered, Registration, Retry
from ..core.sip.uri import SIPURI
from ..errors import RegistrationError
from ..protocols import sendDatagram
from ..wakeup import Wakeup
from .figures import Figures, IFigureSource

__all__ = ["REGISTER_RESULTS", "RegisterClient", "RegisterTransactions", "grantedExpires", "registrarKeepalive",
           "routeSource"]

#: The ``result`` label of ``sipnat_register_transactions_total``: a 2xx, a final error response (a 423 that is
#: retried is not counted: its retry is), no final response by Timer F.
REGISTER_RESULTS = ("registered", "refused", "timeout")

HostPort = Tuple[str, int]
NextHop = Union[HostPort, Callable[[], HostPort]]

log = Logger(namespace="twisted_sipnat.client")


def routeSource(hop: HostPort, default: str) -> str:
    """
    The local address the host's routes use toward ``hop`` (a connected UDP socket's name: no packet is sent),
    for a Contact when the SIP socket is bound to every interface; ``default`` when there is no route.
    """
    family = socket.AF_INET6 if ":" in hop[0] else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(hop)
            return str(probe.getsockname()[0])
    except OSError:
        return default


class RegisterTransactions:
    """
    What every REGISTER client of the role shares, whatever carries its requests: one flow's
    :class:`~twisted_sipnat.core.sip.registration.Registration`, one RFC 3261 §17.1.2 transaction at a time with
    its one delayed call, the Deferred of :meth:`register`, the reading of what comes back, and the figures.

    A subclass is the transport: it provides :meth:`_write` (the request's bytes toward the next hop),
    :meth:`_sentBy` (the address the top Via names) and :attr:`reliable` (TCP, TLS: no retransmissions, RFC 3261
    §17.1.2.2), and feeds :meth:`_messageReceived` with each message that arrives.  ``transport`` is the Via's
    and the Contact's (``UDP``, ``TCP``, ``TLS``: :func:`~twisted_sipnat.core.sip.register.buildRegister`).
    """

    T1 = T1
    T2 = T2
    TIMER_F = TIMER_F
    #: RFC 3261 §17.1.2.2: ``True`` where the transport delivers or fails by itself (no Timer E).
    reliable = False

    def __init__(self, reactor: Any, aor: str, nextHop: NextHop, expires: int = 3600,
                 dropInterval: float = 10.0, credentials: Optional[Credentials] = None,
                 instance: Optional[str] = None, regId: Optional[int] = None, transport: str = "UDP",
                 what: str = "SIP datagrams") -> None:
        self.reactor = reactor
        self.aorURI = parseAOR(aor)
        self.aor = str(self.aorURI)
        self._nextHop = nextHop
        #: The flow's registration rules (:mod:`twisted_sipnat.core.sip.registration`).  RFC 3261 §10.2.4:
        #: one Call-ID for every REGISTER this client sends; the CSeq counts up.
        self.registration = Registration(
            self.aorURI, expires=expires, callId=secrets.token_hex(8), fromTag=secrets.token_hex(4),
            token=lambda: secrets.token_hex(8), credentials=credentials, instance=instance, regId=regId,
            transport=transport,
        )
        self.callId = self.registration.callId
        self.stats: Counter[str] = Counter()
        self.dropped = DropTally(what, interval=dropInterval)
        self._txn: Optional[NonInviteClientTransaction] = None
        self._deferred: Optional[defer.Deferred[Response]] = None
        self._wakeup = Wakeup(reactor, self._wake)
        #: What the last 2xx said (``None`` before one), read by the role: outbound honoured, the reflexive address.
        self.registered: Optional[Registered] = None

    @property
    def transportName(self) -> str:
        """``UDP``, ``TCP`` or ``TLS``: what this client's REGISTERs go out on."""
        return self.registration.transport

    @property
    def expires(self) -> int:
        """The lifetime REGISTERs ask for (RFC 3261 §10.2.1.1); a 423's Min-Expires raises it."""
        return self.registration.expires

    @expires.setter
    def expires(self, value: int) -> None:
        self.registration.expires = value

    @property
    def cseq(self) -> int:
        return self.registration.cseq

    @property
    def contact(self) -> Optional[SIPURI]:
        """The Contact URI of the last REGISTER: the binding whose ``expires`` a 2xx's lifetime is read from."""
        return self.registration.contact

    @property
    def nextHop(self) -> HostPort:
        hop = self._nextHop
        return hop() if callable(hop) else hop

    @property
    def pending(self) -> bool:
        """``True`` while a REGISTER transaction is in progress."""
        return self._txn is not None or self._deferred is not None

    def _begin(self) -> defer.Deferred[Response]:
        """A new registration: an earlier one is cancelled, the retry bounds start again; its Deferred."""
        self.stop()
        self.registration.begin()
        d: defer.Deferred[Response] = defer.Deferred(self._cancelled)
        self._deferred = d
        return d

    # -- the subclass's part --

    def _write(self, data: bytes) -> None:
        raise NotImplementedError

    def _sentBy(self, contact: HostPort) -> HostPort:
        raise NotImplementedError

    # -- the transaction --

    def _send(self, contact: HostPort) -> None:
        request = self.registration.request(contact, self._sentBy(contact))
        self._txn = NonInviteClientTransaction(request, self._now(), t1=self.T1, t2=self.T2, timerF=self.TIMER_F,
                                               reliable=self.reliable)
        hop = self.nextHop
        self._write(self._txn.data)
        self._arm()
        log.info("REGISTER {aor} sent to {host}:{port}", aor=self.aor, host=hop[0], port=hop[1],
                 transport=self.transportName, sipnat_event="sipnat.client.register.sent")

    def _now(self) -> float:
        return float(self.reactor.seconds())

    def _arm(self) -> None:
        """Keep the one delayed call at the transaction's next timer (RFC 3261 Timer E or F)."""
        self._wakeup.at(self._txn.nextWake() if self._txn is not None else None, self._now())

    def _wake(self, scheduledFor: float) -> None:
        txn = self._txn
        if txn is None:
            return
        outcome = txn.timerDue(self._now())
        if isinstance(outcome, Retransmit):
            self._write(outcome.data)
        elif isinstance(outcome, TimedOut):
            self.stats["register.timeout"] += 1
            self._fail(RegistrationError(None, f"no response within {outcome.after:g} s (RFC 3261 Timer F)"))
            return
        self._arm()

    def _cancelled(self, d: defer.Deferred[Response]) -> None:
        """The Deferred's canceller: the REGISTER is forgotten (``Deferred.cancel`` errbacks ``CancelledError``)."""
        if d is self._deferred:
            self._finish()

    def _finish(self) -> Optional[defer.Deferred[Response]]:
        """End the transaction in progress and cancel its timer; returns its Deferred (unfired)."""
        self._txn = None
        self._wakeup.cancel()
        d, self._deferred = self._deferred, None
        return d

    def _fail(self, error: RegistrationError) -> None:
        self.stats["register.failed"] += 1
        d = self._finish()
        if d is not None:
            d.errback(error)

    def stop(self) -> None:
        """Forget the REGISTER in progress and cancel its timers; its Deferred errbacks ``CancelledError``."""
        d = self._finish()
        if d is not None and not d.called:
            d.cancel()

    def _sayDrops(self) -> None:
        line = self.dropped.flush(self._now())
        if line is not None:
            log.warn(line, sipnat_event="sipnat.client.dropped")

    # -- what arrives --

    def _messageReceived(self, data: bytes, source: Any, stream: bool = False) -> None:
        """One SIP message (a datagram, or one a stream framer cut out): this transaction's response or a drop."""
        try:
            message = readMessage(data, stream=stream)
        except SIPParseError as e:
            self.stats["dropped.malformed"] += 1
            self._dropped(source, e.reason)
            return
        if not isinstance(message, Response):
            self._requestReceived(message)
            return
        self._response(message)

    def _requestReceived(self, request: Request) -> None:
        """A request: dropped here (a transport whose requests come from its next hop only may answer it)."""
        self.stats["dropped.request"] += 1  # RFC 3261 §8.2 would answer it; this UA only registers

    def _dropped(self, addr: Any, why: str) -> None:
        host = str(addr[0]) if isinstance(addr, tuple) and addr else str(addr)
        line = self.dropped.drop(host, self._now())
        if line is not None:
            log.warn("{summary} (malformed or not UTF-8; the latest: {why})", summary=line, why=why,
                     sipnat_event="sipnat.client.dropped")

    def _response(self, response: Response) -> None:
        txn = self._txn
        final = txn.responseReceived(response) if txn is not None else None
        if final is None:
            if txn is None or not txn.matches(response):
                self.stats["dropped.unmatched"] += 1
            return
        decision = self.registration.final(final)
        if isinstance(decision, Retry):
            self.stats["register.retried"] += 1
            log.info("REGISTER {aor}: {why}; sending it again", aor=self.aor, why=decision.why,
                     sipnat_event="sipnat.client.register.retry")
            self._send(decision.contact)
        elif isinstance(decision, Registered):
            self.stats["register.succeeded"] += 1
            self.registered = decision
            d = self._finish()
            if d is not None:
                d.callback(final)
        else:
            self.stats["register.refused"] += 1
            self._fail(RegistrationError(decision.code, decision.why))

    def reportFigures(self, figures: Figures) -> None:
        stats = self.stats
        for result, key in zip(REGISTER_RESULTS, ("register.succeeded", "register.refused", "register.timeout"),
                               strict=True):
            figures.count("sipnat_register_transactions_total", stats[key], result=result)

    def grantedExpires(self, response: Response) -> int:
        """The lifetime ``response`` granted to this client's binding (RFC 3261 §10.2.4, RFC 5626 §6)."""
        return self.registration.grantedExpires(response)


@implementer(IFigureSource)
class RegisterClient(RegisterTransactions, protocol.DatagramProtocol):
    """
    The smallest useful UDP registering UA: sends REGISTER to the next hop and reports the final response.

    Retransmission follows RFC 3261 §17.1.2.2 (Timer E from T1 = 0.5 s doubling to T2 = 4 s, every T2 once a
    provisional response arrived; Timer F = 32 s).  A 2xx fires the Deferred of :meth:`register` with the
    parsed :class:`twisted_sipnat.core.sip.Response`; anything >= 300, Timer F, or the socket closing under it
    errbacks :class:`~twisted_sipnat.errors.RegistrationError`.  A 423 with a Min-Expires above what was asked is
    retried once with that interval (RFC 3261 §10.2.8), which later refreshes keep asking for.  The top Via
    offers RFC 6223 ``;keep`` and RFC 3581 ``rport``.  ``nextHop`` is an ``(IP, port)`` or a callable
    returning one.

    What arrives that is not this transaction's response is dropped: requests (this UA takes none), others'
    responses, and datagrams that are malformed or not UTF-8, which are counted in :attr:`stats` and said in one
    rate-limited log line per ``dropInterval`` (:class:`~twisted_sipnat.core.ratelimit.DropTally`), never a
    traceback.  :meth:`reportFigures` gives the operator ``sipnat_register_transactions_total``.
    """

    noisy = False

    def __init__(self, reactor: Any, aor: str, nextHop: NextHop, expires: int = 3600,
                 dropInterval: float = 10.0, credentials: Optional[Credentials] = None,
                 instance: Optional[str] = None, regId: Optional[int] = None) -> None:
        RegisterTransactions.__init__(self, reactor, aor, nextHop, expires, dropInterval, credentials, instance,
                                      regId)

    @property
    def socket(self) -> Any:
        """What the controller's calls take for this flow: the shared SIP socket this client writes through."""
        return self

    def register(self, contact: HostPort) -> defer.Deferred[Response]:
        """Send one REGISTER binding ``contact`` (the public address) to the AOR; cancels an earlier one."""
        d = self._begin()
        self._send(contact)
        return d

    def dropFlow(self) -> None:
        """The flow failed: nothing to close on UDP (the socket stays, and the NAT's binding times out by itself)."""

    def _sentBy(self, contact: HostPort) -> HostPort:
        local = self.transport.getHost() if self.transport is not None else None
        localHost = str(getattr(local, "host", ""))
        localPort = getattr(local, "port", None)
        viaHost = localHost if localHost and localHost not in ("0.0.0.0", "::") else contact[0]
        return (viaHost, localPort if localPort is not None else contact[1])

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            sendDatagram(self.transport, data, self.nextHop, self.stats, "a REGISTER")
            self.stats["register.sent"] += 1

    def stopProtocol(self) -> None:
        """The socket closed: a REGISTER in progress fails (its responses can no longer arrive)."""
        if self._txn is not None:
            self._fail(RegistrationError(None, "the SIP socket closed"))
        self._sayDrops()

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if data and not data.strip(b"\r\n"):
            self.stats["keepalives.received"] += 1  # CRLFs only: a keepalive, not a message (RFC 3261 §7.5)
            return
        self._messageReceived(data, addr)
