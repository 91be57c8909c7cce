"""
The table of pending STUN client transactions (sans-IO): IDs, request building, the RFC 8489 §6 limit of
outstanding transactions per server, RTO memory, and response matching and validation.

A transaction is started for an *owner* (a keepalive flow, a resolution, a probe) and a *sink*, the object
that is told how it ended (``answered``, ``timedOut``, ``unusable``); the table itself only knows the rules
common to every Binding transaction:

- matching (RFC 8489 §6.3): the transaction ID, the socket it was sent on and, on UDP, the source, which must
  be the destination (unless the request was an RFC 5780 CHANGE-REQUEST probe answered from elsewhere);
- validation: the method is Binding, a FINGERPRINT verifies (§14.7), MESSAGE-INTEGRITY verifies with
  credentials (§9.1.3), no unknown comprehension-required attribute (§6.3.3: the answer is unusable);
- building (§6.1): SOFTWARE, USERNAME + MESSAGE-INTEGRITY with credentials, FINGERPRINT, within 576 bytes on
  IPv4 (1280 on IPv6; SOFTWARE is dropped if it would not fit);
- long-term credentials (§9.2, :mod:`~twisted_sipnat.core.longterm`): a request to a server whose realm and
  nonce are not known yet goes out unsigned; a 401 or 438 challenge (unsigned, so accepted without
  MESSAGE-INTEGRITY) makes :meth:`TransactionTable.challenged` send it again, once per kind, with a new
  transaction ID and signed; the owner keeps the same :class:`Txn` object and never sees the challenge;
- the first send is handed out with its clock started; if the shell reports it held back by the socket's
  arbitration (:meth:`TransactionTable.heldBack`) the clock waits until :meth:`TransactionTable.released`.

What to send goes into the engine's outbox as ``(socketKey, writeKey, data, destination)``; a transaction's
write key is the transaction itself, or for a keepalive its flow (one held keepalive per context, as the
arbitration wants).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import ResourceLimitError
from . import stun
from .addresses import hostPortOf, sameHostPort
from .longterm import CHALLENGES, LongTermCredentials, ServerCredentials
from .timers import TimerHeap
from .transaction import (
    DEFAULT_RC,
    SEND,
    TIMEOUT,
    ClientTransaction,
    OutstandingLimiter,
    RTOEstimator,
    TransactionIds,
)

HostPort = Tuple[str, int]
Transmit = Tuple[Any, Any, bytes, Any]

#: RFC 8489 §6.1: without path MTU knowledge a request stays within 576 bytes on IPv4 (1280 on IPv6).
MAX_REQUEST_IPV4 = 576
MAX_REQUEST_IPV6 = 1280


class Txn(ClientTransaction):
    """A pending transaction: its timers plus where it was sent from, for whom, and with which key."""

    __slots__ = ("sock", "owner", "sink", "integrityKey", "limiterKey", "server", "queued", "anySource", "held",
                 "writeKey", "settings", "extra", "challenges")

    def __init__(self, transactionId: bytes, request: bytes, destination: HostPort, sock: Any, owner: Any,
                 sink: Any, integrityKey: Optional[bytes], rto: float, rc: int, anySource: bool,
                 budgetRTO: Optional[float], writeKey: Any = None) -> None:
        super().__init__(transactionId, request, destination, rto=rto, reliable=sock.stream, rc=rc,
                         budgetRTO=budgetRTO)
        self.sock = sock
        self.owner = owner
        self.sink = sink
        self.integrityKey = integrityKey
        self.limiterKey = (id(sock), destination)
        #: Where the transaction started: the RTO memory and the limiter count per server.
        self.server = destination
        self.queued = False
        #: RFC 5780 CHANGE-REQUEST probes are answered from another address: the ID alone identifies them.
        self.anySource = anySource
        #: Once held back by the socket's arbitration: its end must withdraw it there.
        self.held = False
        #: The key its sends are held under: a keepalive's flow (one held per context), else itself.
        self.writeKey: Any = self if writeKey is None else writeKey
        #: For a long-term-credential request: what it was built from, to build the retry (else ``None``).
        self.settings: Any = None
        self.extra: Sequence[Any] = ()
        #: The challenge codes (401, 438) already followed: each is followed once (RFC 8489 §9.2.5).
        self.challenges: Tuple[int, ...] = ()

    def unstart(self) -> None:
        """The first send was held back: the schedule starts again when it is written."""
        self.startedAt = None
        self.sends = 0
        self.nextTime = None


class TransactionTable:
    """Every pending transaction of one engine, keyed by transaction ID."""

    __slots__ = ("pending", "timers", "outbox", "withdrawals", "stats", "maxTransactions", "ids", "limiter", "rto",
                 "_keys", "credentials")

    def __init__(self, timers: TimerHeap, outbox: List[Transmit], withdrawals: List[Tuple[Any, Any]],
                 stats: Counter[str], maxTransactions: int, maxOutstandingPerServer: int) -> None:
        self.pending: Dict[bytes, Txn] = {}
        self.timers = timers
        self.outbox = outbox
        #: ``(socketKey, writeKey)`` of held sends the shell must withdraw from the socket's arbitration.
        self.withdrawals = withdrawals
        self.stats = stats
        self.maxTransactions = maxTransactions
        self.ids = TransactionIds()
        self.limiter: OutstandingLimiter[Txn] = OutstandingLimiter(maxOutstandingPerServer)
        self.rto = RTOEstimator()
        self._keys: Dict[str, bytes] = {}
        #: Realm, nonce and key learned per server (RFC 8489 §9.2); ``credentials.maxEntries`` bounds it.
        self.credentials = LongTermCredentials()

    def __len__(self) -> int:
        return len(self.pending)

    # -- building ---------------------------------------------------------------------------------------------

    def integrityKey(self, settings: Any) -> Optional[bytes]:
        if settings.password is None:
            return None
        key = self._keys.get(settings.password)
        if key is None:
            key = self._keys[settings.password] = stun.shortTermKey(settings.password)
        return key

    def buildRequest(self, settings: Any, transactionId: bytes, ipv6: bool, extra: Sequence[Any] = (),
                     key: Optional[bytes] = None) -> bytes:
        """
        A Binding request with SOFTWARE and, with credentials (``key``: their short-term key), USERNAME +
        MESSAGE-INTEGRITY, then FINGERPRINT.  RFC 8489 §6.1: within 576 bytes on IPv4 (1280 on IPv6); SOFTWARE
        is dropped if it would not fit.
        """
        if extra:
            attributes = list(extra)
            if settings.software is not None:
                attributes.append(stun.Software(settings.software))
            if settings.username is not None:
                attributes.append(stun.Username(settings.username))
            return stun.Message(stun.BINDING, stun.REQUEST, transactionId, attributes).encode(key=key)
        request = stun.encodeBindingRequest(transactionId, software=settings.software, username=settings.username,
                                            key=key)
        if len(request) > (MAX_REQUEST_IPV6 if ipv6 else MAX_REQUEST_IPV4) and settings.software is not None:
            request = stun.encodeBindingRequest(transactionId, software=None, username=settings.username, key=key)
        return request

    @staticmethod
    def buildLongTerm(settings: Any, transactionId: bytes, extra: Sequence[Any],
                      state: Optional[ServerCredentials]) -> bytes:
        """
        A Binding request under long-term credentials (RFC 8489 §9.2.3): without ``state`` (realm and nonce not
        known yet, §9.2.3.1) no credential attributes and no integrity; with it (§9.2.3.2), the credential
        attributes and MESSAGE-INTEGRITY, or MESSAGE-INTEGRITY-SHA256 when the SHA-256 password algorithm was
        chosen.
        """
        attributes = list(extra)
        if settings.software is not None:
            attributes.append(stun.Software(settings.software))
        if state is None:
            return stun.Message(stun.BINDING, stun.REQUEST, transactionId, attributes).encode()
        attributes.extend(state.signedAttributes())
        return stun.Message(stun.BINDING, stun.REQUEST, transactionId, attributes).encode(
            key=state.key, sha256=state.sha256)

    def challenged(self, txn: Txn, message: Any, now: float) -> Tuple[bool, str]:
        """
        A checked error response to ``txn``: ``(True, "")`` when it was a long-term credential challenge that is
        followed (RFC 8489 §9.2.5): the request goes out again at once, with a new transaction ID and signed
        under the learned key, in the same :class:`Txn`.  A 401 is followed once and a 438 once; a second one is
        ``(False, "")``, and one that must not be followed (no REALM/NONCE, bid-down, §9.2.1) ``(False, why)``:
        either way the owner gets the error.
        """
        settings = txn.settings
        if settings is None or txn.done or message.messageClass != stun.ERROR:
            return False, ""
        code = (message.errorCode or (0, ""))[0]
        if code not in CHALLENGES:
            return False, ""
        # Learned even when not followed: a second 438 still refreshes the nonce for the next request.
        state, why = self.credentials.learn(txn.server, settings.username, settings.password, message)
        if state is None:
            self.stats["stun.auth.refused"] += 1
            return False, why
        if code in txn.challenges:
            return False, ""
        self.stats["stun.auth.retries"] += 1
        txn.challenges += (code,)
        if txn.held:
            txn.held = False
            self.withdrawals.append((txn.sock.key, txn.writeKey))
        self.timers.unschedule(txn)
        del self.pending[txn.transactionId]
        transactionId = self.ids.next()
        while transactionId in self.pending:  # pragma: no cover - 2**-96
            transactionId = self.ids.next()
        txn.transactionId = transactionId
        txn.request = self.buildLongTerm(settings, transactionId, txn.extra, state)
        txn.integrityKey = state.key
        txn.unstart()
        self.pending[transactionId] = txn
        self.outbox.append((txn.sock.key, txn.writeKey, txn.request, txn.destination))
        self._started(txn, now)
        return True, ""

    # -- life cycle -------------------------------------------------------------------------------------------

    def start(self, sock: Any, destination: HostPort, settings: Any, owner: Any, sink: Any, now: float, *,
              extra: Sequence[Any] = (), rc: int = DEFAULT_RC, anySource: bool = False,
              writeKey: Any = None) -> Txn:
        """
        Start a Binding transaction (``now``: the instant of the input that starts it, so every transaction
        started in one wake-up shares its retransmission instants, and one timer bucket).  Raises
        :class:`~twisted_sipnat.errors.ResourceLimitError` past ``maxTransactions``.
        """
        pending = self.pending
        if len(pending) >= self.maxTransactions:
            raise ResourceLimitError("pending STUN transactions", self.maxTransactions)
        transactionId = self.ids.next()
        while transactionId in pending:  # pragma: no cover - 2**-96
            transactionId = self.ids.next()
        longTerm = settings.password is not None and settings.credentialMechanism == "long-term"
        if longTerm:
            state = self.credentials.lookup(destination, settings.username)
            key = None if state is None else state.key
            request = self.buildLongTerm(settings, transactionId, extra, state)
        else:
            key = None if settings.password is None else self.integrityKey(settings)
            request = self.buildRequest(settings, transactionId, ":" in destination[0] or bool(sock.ipv6), extra, key)
        txn = Txn(transactionId, request, destination, sock, owner, sink, key,
                  self.rto.rtoFor(destination, now, settings.rto), rc, anySource, settings.rto, writeKey)
        if longTerm:
            txn.settings = settings
            txn.extra = tuple(extra)
        pending[transactionId] = txn
        sock.transactions += 1
        if self.limiter.acquire(txn.limiterKey, txn):
            self._sendFirst(txn, now)
        else:
            txn.queued = True
            self.stats["transactions.queued"] += 1
        return txn

    def _sendFirst(self, txn: Txn, now: float) -> None:
        txn.queued = False
        self.outbox.append((txn.sock.key, txn.writeKey, txn.request, txn.destination))
        txn.start(now)  # what _started does, inline: this is every keepalive's path
        if txn.nextTime is not None:
            self.timers.schedule(txn, txn.nextTime)
        self.stats["stun.requests.sent"] += 1

    def _started(self, txn: Txn, now: float) -> None:
        txn.start(now)
        if txn.nextTime is not None:
            self.timers.schedule(txn, txn.nextTime)
        self.stats["stun.requests.sent"] += 1

    def heldBack(self, txn: Txn) -> None:
        """The socket's arbitration held the send just handed out: a first send's clock waits for the write."""
        if txn.done:
            return
        txn.held = True
        if txn.startedAt is None:
            return  # offered again while still held (its flow moved): nothing was started
        if txn.sends == 1:
            txn.unstart()
            self.timers.unschedule(txn)
            self.stats["stun.requests.sent"] -= 1
        else:
            self.stats["stun.requests.retransmitted"] -= 1

    def released(self, txn: Txn, now: float) -> None:
        """A held send of ``txn`` was written at ``now`` (``socketIdle(True)``, or between two SIP messages)."""
        if txn.done:
            return
        if txn.startedAt is None:
            self._started(txn, now)
        else:
            self.stats["stun.requests.sent"] += 1

    def fire(self, txn: Txn, now: float) -> bool:
        """``txn``'s timer is due: retransmit (handed out), or report ``True`` when it timed out (now ended)."""
        action = txn.fire(now)
        if action == SEND:
            self.outbox.append((txn.sock.key, txn.writeKey, txn.request, txn.destination))
            self.stats["stun.requests.retransmitted"] += 1
        elif action == TIMEOUT:
            # RFC 8489 §6.2.1 caches the RTO of *completed* transactions; a timed-out server starts over at the
            # configured RTO, so every failure is detected within the same budget (39.5 s by default).
            self.rto.forget(txn.server)
            self.stats["stun.timeouts"] += 1
            self.end(txn, now)
            return True
        if txn.nextTime is not None:
            self.timers.schedule(txn, txn.nextTime)
        return False

    def end(self, txn: Txn, now: float) -> None:
        """Forget ``txn`` everywhere: pending table, timer, held send, limiter slot (which may start a queued one)."""
        if not txn.done:
            txn.cancel()
        if txn.held:
            txn.held = False
            self.withdrawals.append((txn.sock.key, txn.writeKey))
        self.timers.unschedule(txn)
        if self.pending.get(txn.transactionId) is txn:
            del self.pending[txn.transactionId]
            txn.sock.transactions -= 1
        if txn.queued:
            self.limiter.withdraw(txn.limiterKey, txn)
            txn.queued = False
            return
        following = self.limiter.release(txn.limiterKey)
        if following is not None:
            self._sendFirst(following, now)

    def answered(self, txn: Txn, now: float) -> None:
        """A response passed every check: feed the RTO estimate (RFC 8489 §6.2.1, Karn's rule), end ``txn``."""
        rtt = txn.answered(now)
        if rtt is not None:
            self.rto.sample(txn.server, rtt, now)
        self.end(txn, now)
        self.stats["stun.responses"] += 1

    # -- incoming ---------------------------------------------------------------------------------------------

    def match(self, data: bytes, sock: Any, addr: Any) -> Tuple[Optional[Txn], str]:
        """The pending transaction a response is for, or ``(None, why)`` (RFC 8489 §6.3)."""
        txn = self.pending.get(data[8:20])
        if txn is None or txn.done:
            return None, "unmatched"
        if txn.sock is not sock:
            return None, "wrong-socket"
        if not sock.stream and not txn.anySource:
            source = hostPortOf(addr)
            if source is None or not sameHostPort(source, txn.destination):
                return None, "wrong-source"
        return txn, ""

    @staticmethod
    def check(txn: Txn, data: bytes) -> Tuple[Optional[Any], str]:
        """Decode and validate a matched response: ``(message, "")``, or ``(None, why)`` to drop it."""
        try:
            message = stun.decode(data)
        except stun.STUNDecodeError:
            return None, "malformed"
        if message.method != stun.BINDING:
            return None, "not-binding"
        if message.hasFingerprint and not message.verifyFingerprint():
            return None, "bad-fingerprint"
        if txn.integrityKey is not None and not message.verifyIntegrity(txn.integrityKey):
            # RFC 8489 §9.2.5: a long-term challenge (401, 438) is not signed (the server may not know the key
            # any more); it is accepted without MESSAGE-INTEGRITY and can only cause one signed retry.
            if not (txn.settings is not None and message.messageClass == stun.ERROR and not message.hasIntegrity
                    and (message.errorCode or (0, ""))[0] in CHALLENGES):
                return None, "bad-integrity"
        return message, ""
