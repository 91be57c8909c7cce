"""
:class:`NATTraversalController`: the SIP NAT Traversal Controller API on Twisted.

This is the thin shell around the sans-IO core.  It owns exactly one ``IDelayedCall`` (kept in step with the
:class:`~twisted_sipnat.core.timers.TimerHeap` that orders every transaction and flow), the Deferreds, name
resolution and the writes; the rules live in :mod:`~twisted_sipnat.core.transaction` (RFC 8489 §6.2 timers),
:mod:`~twisted_sipnat.core.keepalive` (RFC 5626 §4.4 policy), :mod:`~twisted_sipnat.core.arbitration` (who may write) and
:mod:`~twisted_sipnat.core.stun` (the codec).

Data flows one way: bytes from the socket → :meth:`NATTraversalController.dataReceived` → the matching core
object → actions → writes through the socket's arbiter → transport.  After every entry point the core has
finished its update before any Deferred or observer is called, so a callback that calls back into the
controller (a ``flowFailure`` that calls ``refreshNATBinding``) sees consistent state.
"""

from __future__ import annotations

import ipaddress
import random
from collections import Counter
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .core import keepalive as ka
from .core import stun
from .core.addresses import isIPLiteral
from .core.arbitration import Arbiter
from .core.timers import TimerHeap
from .core.transaction import (
    DEFAULT_RC,
    SEND,
    TIMEOUT,
    ClientTransaction,
    OutstandingLimiter,
    RTOEstimator,
    TransactionIds,
)
from .errors import (
    FlowConnectionLost,
    FlowFailure,
    MappedAddressChanged,
    NATTraversalError,
    PongTimeout,
    ResourceLimitError,
    STUNErrorResponse,
    STUNTimeout,
    UnknownDomainError,
)
from .interfaces import ISharedSocket
from .protocols import sendDatagram
from .settings import DEFAULT_STUN_PORT, NATSettings, ServerSpec

HostPort = Tuple[str, int]
PublicAddress = Union[IPv4Address, IPv6Address]

#: RFC 8489 §6.1: without path MTU knowledge a request stays within 576 bytes on IPv4 (1280 on IPv6).
MAX_REQUEST_IPV4 = 576
MAX_REQUEST_IPV6 = 1280
#: RFC 8489 §10 (ALTERNATE-SERVER): a client follows one redirect per server.
TRY_ALTERNATE = 300

_log = Logger(namespace="twisted_sipnat")


def _normalHost(host: str) -> str:
    """RFC 5952 text for IPv6, the literal for IPv4; names are returned as they are."""
    try:
        return str(ipaddress.ip_address(host.split("%", 1)[0]))
    except ValueError:
        return host


def _hostPort(addr: Any) -> Optional[HostPort]:
    """``(host, port)`` from a Twisted UDP source tuple (IPv6 ones have four members) or an ``IAddress``."""
    if addr is None:
        return None
    if isinstance(addr, tuple):
        return (addr[0], addr[1])
    host = getattr(addr, "host", None)
    port = getattr(addr, "port", None)
    if host is None or port is None:
        return None
    return (host, port)


def _sameHostPort(a: HostPort, b: HostPort) -> bool:
    return a == b or (a[1] == b[1] and _normalHost(a[0]) == _normalHost(b[0]))


def _publicAddress(host: str, port: int, stream: bool) -> PublicAddress:
    if ":" in host:
        return IPv6Address("TCP", host, port) if stream else IPv6Address("UDP", host, port)
    return IPv4Address("TCP", host, port) if stream else IPv4Address("UDP", host, port)


def _nameServers(path: str = "/etc/resolv.conf") -> List[HostPort]:
    """The ``nameserver`` lines of resolv.conf (read once; twisted.names' own reader re-arms a 60 s timer)."""
    servers: List[HostPort] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver" and isIPLiteral(parts[1]):
                    servers.append((parts[1], 53))
    except OSError:
        pass
    return servers or [("127.0.0.1", 53)]


def _messageClass(data: bytes) -> int:
    """The class bits C1 C0 of the STUN message type (RFC 8489 §5), without decoding anything else."""
    high, low = data[0], data[1]
    return ((high & 0x01) << 1) | ((low >> 4) & 0x01)


# ---------------------------------------------------------------------------------------------------------------
# Adapting the caller's socket


@implementer(ISharedSocket)
class _BareSocket:
    """
    A socket the SIP stack reads itself (it calls ``dataReceived``/``socketIdle``): a Twisted transport, or a
    protocol with a ``transport``.  The controller keeps its arbiter, since it sees no SIP writes.
    """

    def __init__(self, socket: Any, isStream: bool, stats: Counter[str]) -> None:
        self._socket = socket
        self.isStream = isStream
        self.arbiter = Arbiter(stream=isStream)
        self._stats = stats

    def _transport(self) -> Any:
        return getattr(self._socket, "transport", None) or self._socket

    def writeKeepalive(self, data: bytes, addr: Any) -> None:
        transport = self._transport()
        if self.isStream:
            transport.write(data)
        else:
            # A write the OS refuses is a lost datagram: the transaction's timers report it (RFC 8489 §6.2.1).
            sendDatagram(transport, data, addr, self._stats, "a keepalive")

    def peerAddress(self) -> Optional[HostPort]:
        if not self.isStream:
            return None
        try:
            return _hostPort(self._transport().getPeer())
        except Exception:
            return None

    def localAddress(self) -> Any:
        try:
            return self._transport().getHost()
        except Exception:
            return None


def _looksLikeStream(socket: Any) -> bool:
    from twisted.internet.interfaces import ITCPTransport, IUDPTransport
    from twisted.internet.protocol import DatagramProtocol

    if isinstance(socket, DatagramProtocol) or IUDPTransport.providedBy(socket):
        return False
    transport = getattr(socket, "transport", None)
    if transport is not None and IUDPTransport.providedBy(transport):
        return False
    return bool(ITCPTransport.providedBy(socket) or ITCPTransport.providedBy(transport) or transport is not None)


class _SocketState:
    """What the controller tracks per shared socket: its adapter and the flows that ride on it."""

    __slots__ = ("socket", "shared", "flows", "transactions", "ipv6", "__weakref__")

    def __init__(self, socket: Any, shared: Any) -> None:
        self.socket = socket
        self.shared = shared
        #: A dict used as an ordered set: about 40 bytes an entry where a set of this size takes 50-100, and
        #: the flows of a closed socket fail in the order they started.
        self.flows: Dict[_Flow, None] = {}
        #: How many of the controller's pending transactions use this socket.
        self.transactions = 0
        #: The bound socket's family, learned once it has a local address (it cannot change after binding):
        #: asking the transport for every keepalive's request size limit costs a ``getsockname`` each time.
        self.ipv6: Optional[bool] = None


# ---------------------------------------------------------------------------------------------------------------
# Core objects with the shell's extra slots


class _Txn(ClientTransaction):
    """A client transaction plus what the shell needs to route it: socket, owner, credentials, limiter slot."""

    __slots__ = ("sock", "owner", "integrityKey", "limiterKey", "server", "dueAt", "queued", "anySource")

    def __init__(
        self,
        transactionId: bytes,
        request: bytes,
        destination: HostPort,
        sock: _SocketState,
        owner: Union[_Resolution, _Flow, _Probe],
        integrityKey: Optional[bytes],
        rto: float,
        rc: int = DEFAULT_RC,
        anySource: bool = False,
        budgetRTO: Optional[float] = None,
    ) -> None:
        super().__init__(transactionId, request, destination, rto=rto, reliable=sock.shared.isStream, rc=rc,
                         budgetRTO=budgetRTO)
        #: RFC 5780 CHANGE-REQUEST probes are answered from another address: the ID alone identifies them.
        self.anySource = anySource
        self.sock = sock
        self.owner = owner
        self.integrityKey = integrityKey
        self.limiterKey = (id(sock), destination)
        self.server = destination
        self.dueAt: Optional[float] = None
        self.queued = False


class _Flow(ka.FlowKeeper):
    """One keepalive context (keyed by its observer): the keeper plus where and how to send."""

    __slots__ = ("observer", "sock", "nextHop", "settings", "txn", "stopped", "lastAnswer")

    def __init__(
        self,
        kind: str,
        base: float,
        now: float,
        rng: random.Random,
        pongTimeout: float,
        baseline: Any,
        observer: Any,
        sock: _SocketState,
        nextHop: Optional[HostPort],
        settings: NATSettings,
    ) -> None:
        super().__init__(kind, base, now, rng, pongTimeout=pongTimeout, baseline=baseline)
        self.observer = observer
        self.sock = sock
        self.nextHop = nextHop
        self.settings = settings
        self.txn: Optional[_Txn] = None
        self.stopped = False
        #: The last keepalive answer that confirmed the baseline, kept so the next identical one need not be
        #: decoded again (see :class:`_AnswerMemo`).
        self.lastAnswer: Optional[_AnswerMemo] = None


class _AnswerMemo:
    """
    What a healthy flow's keepalive answers have in common: on a flow whose mapping has not changed, the next
    hop answers every Binding with the same bytes but for the transaction ID and the FINGERPRINT value that
    covers it (IPv4's XOR-MAPPED-ADDRESS is XORed with the magic cookie alone, RFC 8489 §14.2).  An answer
    with the same :attr:`shape` (and, when the memo had one, a valid FINGERPRINT) therefore passes every check
    the first one passed -- class, method, comprehension-required attributes, the mapped address equal to
    :attr:`baseline` -- and is taken without decoding.  Anything else (an IPv6 mapping, whose XOR covers the ID;
    credentials, whose MESSAGE-INTEGRITY covers it; any other byte changed) takes the full path.
    """

    __slots__ = ("shape", "fingerprinted", "baseline")

    def __init__(self, shape: bytes, fingerprinted: bool, baseline: Any) -> None:
        self.shape = shape
        self.fingerprinted = fingerprinted
        self.baseline = baseline

    @staticmethod
    def shapeOf(data: bytes, fingerprinted: bool) -> bytes:
        """``data`` without its transaction ID and, if ``fingerprinted``, without the FINGERPRINT value."""
        return data[:8] + data[20:-4] if fingerprinted else data[:8] + data[20:]

    def matches(self, data: bytes, baseline: Any) -> bool:
        if baseline is not self.baseline or self.shapeOf(data, self.fingerprinted) != self.shape:
            return False
        return not self.fingerprinted or stun.endsWithValidFingerprint(data)


class _Resolution:
    """One ``resolvePublicAddress`` call: the server list, where it stands, and its Deferred."""

    __slots__ = (
        "deferred",
        "sock",
        "settings",
        "servers",
        "index",
        "tried",
        "redirected",
        "lastError",
        "txn",
        "observer",
        "nextHop",
        "domain",
        "pendingLookup",
        "startedAt",
        "done",
    )

    def __init__(self, sock: _SocketState, settings: NATSettings, servers: List[ServerSpec], observer: Any,
                 nextHop: HostPort, domain: Optional[str], now: float) -> None:
        self.deferred: defer.Deferred[PublicAddress]
        self.sock = sock
        self.settings = settings
        self.servers = servers
        self.index = 0
        self.tried: List[HostPort] = []
        self.redirected: Set[HostPort] = set()
        self.lastError: Optional[STUNErrorResponse] = None
        self.txn: Optional[_Txn] = None
        self.observer = observer
        self.nextHop = nextHop
        self.domain = domain
        self.pendingLookup: Optional[defer.Deferred[HostPort]] = None
        self.startedAt = now
        self.done = False


class _Probe:
    """One :meth:`NATTraversalController.sendBindingRequest`: its Deferred and transaction."""

    __slots__ = ("deferred", "txn", "done")

    def __init__(self) -> None:
        self.deferred: defer.Deferred[Any]
        self.txn: Optional[_Txn] = None
        self.done = False


class _ObserverMemory:
    """What ``refreshNATBinding`` needs from the observer's last ``resolvePublicAddress``."""

    __slots__ = ("domain", "nextHop", "resolved", "viaNextHop")

    def __init__(self) -> None:
        self.domain: Optional[str] = None
        self.nextHop: Optional[HostPort] = None
        self.resolved: Optional[PublicAddress] = None
        self.viaNextHop = False


# ---------------------------------------------------------------------------------------------------------------


class NATTraversalController:
    """
    Finds the public address of a SIP socket and keeps its NAT binding alive, on the SIP stack's own socket.

    ``settings`` is one :class:`~twisted_sipnat.settings.NATSettings` for every domain, or a mapping
    ``{domain: NATSettings}``.  ``reactor`` provides ``IReactorTime`` (a ``twisted.internet.task.Clock`` in
    tests); every timer goes through it.  ``rng`` drives the keepalive jitter (seed it for repeatable runs).

    Bounds (issue "reliability"): at most ``maxFlows`` keepalive contexts, ``maxTransactions`` STUN
    transactions in flight and ``maxOutstandingPerServer`` outstanding per socket and server (RFC 8489 §6: ten;
    the rest wait their turn).  Past the first two a call raises :class:`~twisted_sipnat.errors.ResourceLimitError`.

    ``keepaliveEvents``: emit the two debug-level log events of every keepalive (``sipnat_event``
    ``keepalive.sent`` and ``keepalive.answered``).  Building an event costs a few microseconds even when every
    observer filters debug out -- a third of a keepalive's CPU -- so a process keeping tens of thousands of flows
    alive, where nobody reads per-keepalive lines, passes ``False`` (the :attr:`stats` counters stay).  Flow
    failures, address changes and the other events are always emitted.
    """

    def __init__(
        self,
        settings: Union[NATSettings, Mapping[str, NATSettings]],
        reactor: Optional[IReactorTime] = None,
        *,
        rng: Optional[random.Random] = None,
        maxFlows: int = 1_000_000,
        maxTransactions: int = 1_000_000,
        maxOutstandingPerServer: int = 10,
        dnsResolver: Any = None,
        keepaliveEvents: bool = True,
    ) -> None:
        if isinstance(settings, NATSettings):
            self._settings: Optional[NATSettings] = settings
            self._domainSettings: Dict[str, NATSettings] = {}
        elif isinstance(settings, Mapping):
            for domain, value in settings.items():
                if not isinstance(value, NATSettings):
                    raise NATTraversalError(f"settings for domain {domain!r} must be NATSettings, not {value!r}")
            self._settings = None
            self._domainSettings = dict(settings)
        else:
            raise NATTraversalError(f"settings must be NATSettings or a mapping of them, not {settings!r}")
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor  # type: ignore[assignment]
        assert reactor is not None
        self.reactor = reactor
        self.rng = rng if rng is not None else random.SystemRandom()
        self.maxFlows = maxFlows
        self.maxTransactions = maxTransactions
        #: Counters: keepalives sent/answered, responses dropped by reason, and so on.
        self.stats: Counter[str] = Counter()
        self._timers = TimerHeap()
        self._ids = TransactionIds()
        self._call: Optional[IDelayedCall] = None
        self._pending: Dict[bytes, _Txn] = {}
        self._limiter: OutstandingLimiter[_Txn] = OutstandingLimiter(maxOutstandingPerServer)
        self._rto = RTOEstimator()
        self._sockets: Dict[int, _SocketState] = {}
        self._flows: Dict[Any, _Flow] = {}
        self._resolutions: Set[_Resolution] = set()
        self._memory: Dict[Any, _ObserverMemory] = {}
        self._keys: Dict[str, bytes] = {}
        self._requestTemplates: Dict[Tuple[Optional[str], Optional[str], bool], Callable[[bytes], bytes]] = {}
        #: A ``twisted.internet.interfaces.IResolver`` for SRV look-ups; by default one on the system's
        #: name servers, made on first use.
        self._dnsResolver: Any = dnsResolver
        self.keepaliveEvents = keepaliveEvents

    # -- settings ---------------------------------------------------------------------------------------------

    def settingsFor(self, domain: Optional[str]) -> NATSettings:
        """The settings of ``domain``; :class:`~twisted_sipnat.errors.UnknownDomainError` if it has none."""
        if self._settings is not None:
            return self._settings
        if domain is not None and domain in self._domainSettings:
            return self._domainSettings[domain]
        raise UnknownDomainError(str(domain))

    def _integrityKey(self, settings: NATSettings) -> Optional[bytes]:
        if settings.password is None:
            return None
        key = self._keys.get(settings.password)
        if key is None:
            key = self._keys[settings.password] = stun.shortTermKey(settings.password)
        return key

    def _buildRequest(self, settings: NATSettings, transactionId: bytes, ipv6: bool) -> bytes:
        """
        A Binding request with SOFTWARE and, with credentials, USERNAME + MESSAGE-INTEGRITY, then FINGERPRINT.
        RFC 8489 §6.1: within 576 bytes on IPv4 (1280 on IPv6); SOFTWARE is dropped if it would not fit.
        """
        key = self._integrityKey(settings)
        request = stun.encodeBindingRequest(
            transactionId, software=settings.software, username=settings.username, key=key
        )
        limit = MAX_REQUEST_IPV6 if ipv6 else MAX_REQUEST_IPV4
        if len(request) > limit and settings.software is not None:
            request = stun.encodeBindingRequest(transactionId, software=None, username=settings.username, key=key)
        return request

    # -- sockets ----------------------------------------------------------------------------------------------

    @staticmethod
    def _canonicalSocket(socket: Any) -> Any:
        """
        The shared socket behind what the caller passed: a SIP protocol whose transport is (or wraps) a shared
        socket, or the transport a :class:`~twisted_sipnat.protocols.SharedDatagramProtocol` gave its SIP
        protocol, all mean that shared socket.
        """
        if ISharedSocket.providedBy(socket):
            return socket
        shared = getattr(socket, "sharedSocket", None)
        if shared is not None and ISharedSocket.providedBy(shared):
            return shared
        transport = getattr(socket, "transport", None)
        if transport is not None:
            if ISharedSocket.providedBy(transport):
                return transport
            shared = getattr(transport, "sharedSocket", None)
            if shared is not None and ISharedSocket.providedBy(shared):
                return shared
        return socket

    def _socketState(self, socket: Any) -> _SocketState:
        socket = self._canonicalSocket(socket)
        state = self._sockets.get(id(socket))
        if state is not None and state.socket is socket:
            return state
        if ISharedSocket.providedBy(socket):
            shared: Any = socket
        else:
            shared = _BareSocket(socket, _looksLikeStream(socket), self.stats)
        state = self._sockets[id(socket)] = _SocketState(socket, shared)
        return state

    def _forgetSocketIfUnused(self, sock: _SocketState) -> None:
        if sock.flows or sock.transactions:
            return
        if sock.shared.arbiter.held:
            return
        if self._sockets.get(id(sock.socket)) is sock:
            del self._sockets[id(sock.socket)]

    def _isIPv6Socket(self, sock: _SocketState, destination: Optional[HostPort]) -> bool:
        if destination is not None and ":" in destination[0]:
            return True
        if sock.ipv6 is None:
            local = sock.shared.localAddress()
            if local is None:
                return False  # not bound yet: ask again next time
            sock.ipv6 = isinstance(local, IPv6Address)
        return sock.ipv6

    # -- the one timer ----------------------------------------------------------------------------------------

    def _reschedule(self) -> None:
        nextTime = self._timers.nextTime()
        call = self._call
        if nextTime is None:
            if call is not None and call.active():
                call.cancel()
            self._call = None
            return
        now = self.reactor.seconds()
        delay = max(0.0, nextTime - now)
        if call is not None and call.active():
            if call.getTime() != nextTime:
                call.reset(delay)
        else:
            self._call = self.reactor.callLater(delay, self._wake)

    def _wake(self) -> None:
        call, self._call = self._call, None
        # A reactor may wake us a hair before the instant asked for (float rounding of delay + now); the core
        # objects compare strictly, so "now" is never earlier than the instant this call was scheduled for.
        now = self.reactor.seconds()
        if call is not None:
            now = max(now, call.getTime())
        try:
            for item in self._timers.popDue(now):
                try:
                    if type(item) is _Flow:
                        self._flowDue(item, now)
                    else:
                        self._txnDue(item, now)
                except Exception:
                    _log.failure("internal error in a timer; continuing with the others")
        finally:
            self._reschedule()

    # -- transactions -----------------------------------------------------------------------------------------

    def _newTransaction(
        self,
        sock: _SocketState,
        destination: HostPort,
        settings: NATSettings,
        owner: Union[_Resolution, _Flow, _Probe],
        *,
        extra: Sequence[Any] = (),
        rc: int = DEFAULT_RC,
        anySource: bool = False,
        now: Optional[float] = None,
    ) -> _Txn:
        """
        Start a Binding transaction (``now``: the instant of the wake-up that starts it, so every transaction
        started in one wake-up shares its retransmission instants, and one timer bucket).
        """
        if len(self._pending) >= self.maxTransactions:
            raise ResourceLimitError("pending STUN transactions", self.maxTransactions)
        transactionId = self._ids.next()
        while transactionId in self._pending:  # pragma: no cover - 2**-96
            transactionId = self._ids.next()
        if extra:
            attributes = list(extra)
            if settings.software is not None:
                attributes.append(stun.Software(settings.software))
            if settings.username is not None:
                attributes.append(stun.Username(settings.username))
            request = stun.Message(stun.BINDING, stun.REQUEST, transactionId, attributes).encode(
                key=self._integrityKey(settings)
            )
        else:
            request = self._buildRequest(settings, transactionId, self._isIPv6Socket(sock, destination))
        if now is None:
            now = self.reactor.seconds()
        rto = self._rto.rtoFor(destination, now, settings.rto)
        txn = _Txn(transactionId, request, destination, sock, owner, self._integrityKey(settings), rto, rc, anySource,
                   settings.rto)
        self._pending[transactionId] = txn
        sock.transactions += 1
        if self._limiter.acquire(txn.limiterKey, txn):
            self._sendFirst(txn, now)
        else:
            txn.queued = True
            self.stats["transactions.queued"] += 1
        return txn

    def _arbitrationKey(self, txn: _Txn) -> Any:
        """A keepalive transaction is held under its flow (at most one per context), a resolution under itself."""
        return txn.owner if type(txn.owner) is _Flow else txn

    def _offer(self, sock: _SocketState, key: Any, payload: bytes) -> bool:
        """
        Ask the socket's arbiter whether a keepalive may be written now (``False``: held, or refused because the
        stream is dead or the held queue is full; the flow's own timers then report the failure).
        """
        try:
            if sock.shared.arbiter.offer(key, payload):
                return True
        except NATTraversalError as e:
            self.stats["writes.refused"] += 1
            _log.debug("keepalive not written: {why}", why=str(e))
            return False
        self.stats["writes.held"] += 1
        return False

    def _sendFirst(self, txn: _Txn, now: float) -> None:
        txn.queued = False
        if self._offer(txn.sock, self._arbitrationKey(txn), txn.request):
            txn.sock.shared.writeKeepalive(txn.request, txn.destination)
            self._txnWritten(txn, now)

    def _txnWritten(self, txn: _Txn, now: float) -> None:
        if not txn.started:
            txn.start(now)
            if txn.nextTime is not None:
                self._timers.schedule(txn, txn.nextTime)
        self.stats["stun.requests.sent"] += 1

    def _txnDue(self, txn: _Txn, now: float) -> None:
        action = txn.fire(now)
        if action == SEND:
            if self._offer(txn.sock, self._arbitrationKey(txn), txn.request):
                txn.sock.shared.writeKeepalive(txn.request, txn.destination)
                self.stats["stun.requests.retransmitted"] += 1
        elif action == TIMEOUT:
            # RFC 8489 §6.2.1 caches the RTO of *completed* transactions; a timed-out server starts over at the
            # configured RTO, so every failure is detected within the same budget (39.5 s by default).
            self._rto.forget(txn.server)
            self._endTransaction(txn)
            self._txnTimedOut(txn, now)
        if txn.nextTime is not None:
            self._timers.schedule(txn, txn.nextTime)

    def _endTransaction(self, txn: _Txn) -> None:
        """Forget ``txn`` everywhere: pending table, timer, held write, limiter slot (which may start another)."""
        if not txn.done:
            txn.cancel()
        self._timers.unschedule(txn)
        if self._pending.get(txn.transactionId) is txn:
            del self._pending[txn.transactionId]
            txn.sock.transactions -= 1
        key = self._arbitrationKey(txn)
        txn.sock.shared.arbiter.withdraw(key)
        if txn.queued:
            self._limiter.withdraw(txn.limiterKey, txn)
            txn.queued = False
            return
        following = self._limiter.release(txn.limiterKey)
        if following is not None:
            self._sendFirst(following, self.reactor.seconds())

    def _txnTimedOut(self, txn: _Txn, now: float) -> None:
        owner = txn.owner
        self.stats["stun.timeouts"] += 1
        if type(owner) is _Flow:
            flow = owner
            flow.txn = None
            flow.stunInFlight = False
            elapsed = now - txn.startedAt if txn.startedAt is not None else None
            self._failFlow(flow, STUNTimeout((txn.destination,), elapsed))
        elif type(owner) is _Probe:
            elapsed = now - txn.startedAt if txn.startedAt is not None else None
            self._finishProbe(owner, Failure(STUNTimeout((txn.destination,), elapsed)))
        else:
            resolution = owner
            assert isinstance(resolution, _Resolution)
            resolution.txn = None
            self._tryNextServer(resolution)

    # -- incoming ---------------------------------------------------------------------------------------------

    def dataReceived(self, data: bytes, socket: Any, addr: Any = None) -> bool:
        """
        Bytes the SIP stack did not recognise, read from ``socket`` (from ``addr`` on UDP).

        Returns ``True`` if the controller consumed them: a STUN response or indication (a response for no
        pending transaction, from the wrong source or failing its checks is dropped and counted), or the CRLF
        pong a flow on that socket was waiting for.  ``False`` for STUN requests (a responder may answer them)
        and everything else.  Never raises.
        """
        try:
            socket = self._canonicalSocket(socket)
            if stun.isSTUN(data):
                return self._stunReceived(data, socket, addr)
            if data == ka.PONG_BYTES:
                return self._pongReceived(socket)
            return False
        except Exception:
            _log.failure("internal error handling {length} bytes from {addr}", length=len(data), addr=addr)
            return False
        finally:
            self._reschedule()

    def _drop(self, reason: str, addr: Any) -> bool:
        self.stats["stun.dropped." + reason] += 1
        _log.debug("dropped a STUN response ({reason}) from {addr}", reason=reason, addr=addr,
                   sipnat_event="stun.dropped")
        return True

    def _stunReceived(self, data: bytes, socket: Any, addr: Any) -> bool:
        messageClass = _messageClass(data)
        if messageClass == stun.REQUEST:
            return False
        if messageClass == stun.INDICATION:
            self.stats["stun.indications"] += 1
            return True
        txn = self._pending.get(data[8:20])
        if txn is None or txn.done:
            return self._drop("unmatched", addr)
        if txn.sock.socket is not socket:
            return self._drop("wrong-socket", addr)
        if not txn.sock.shared.isStream and not txn.anySource:
            source = _hostPort(addr)
            if source is None or not _sameHostPort(source, txn.destination):
                return self._drop("wrong-source", addr)
        owner = txn.owner
        if type(owner) is _Flow and owner.lastAnswer is not None and txn.integrityKey is None:
            if owner.lastAnswer.matches(data, owner.baseline):
                self._transactionAnswered(txn)
                self._keepaliveUnchanged(owner, txn)
                return True
        try:
            message = stun.decode(data)
        except stun.STUNDecodeError:
            return self._drop("malformed", addr)
        if message.method != stun.BINDING:
            return self._drop("not-binding", addr)
        if message.hasFingerprint and not message.verifyFingerprint():
            return self._drop("bad-fingerprint", addr)
        if txn.integrityKey is not None and not message.verifyIntegrity(txn.integrityKey):
            return self._drop("bad-integrity", addr)
        if message.unknownComprehensionRequired:
            self._drop("unknown-comprehension-required", addr)
            self._endTransaction(txn)
            self._responseUnusable(txn, message)
            return True
        now = self._transactionAnswered(txn)
        if type(txn.owner) is _Flow:
            self._keepaliveAnswered(txn.owner, txn, message, now, data)
        elif type(txn.owner) is _Probe:
            self._finishProbe(txn.owner, (message, _hostPort(addr)))
        else:
            owner = txn.owner
            assert isinstance(owner, _Resolution)
            self._resolutionAnswered(owner, txn, message, now)
        return True

    def _transactionAnswered(self, txn: _Txn) -> float:
        """A response that passed every check ended ``txn``: feed the RTO estimate (RFC 8489 §6.2.1), forget it."""
        now: float = self.reactor.seconds()
        rtt = txn.answered(now)
        if rtt is not None:
            self._rto.sample(txn.server, rtt, now)
        self._endTransaction(txn)
        self.stats["stun.responses"] += 1
        return now

    def _responseUnusable(self, txn: _Txn, message: Any) -> None:
        """
        RFC 8489 §6.3.3/§6.3.4: a response with unknown comprehension-required attributes is discarded and its
        transaction has failed.  A resolution moves on to the next server and a probe errbacks; a keepalive's
        next hop did answer, so the flow is alive, but its mapped address is not taken.
        """
        owner = txn.owner
        why = "response with unknown comprehension-required attributes " + ", ".join(
            f"0x{t:04x}" for t in message.unknownComprehensionRequired)
        _log.warn("{server[0]}:{server[1]} sent a {why}", server=txn.server, why=why, sipnat_event="stun.response.invalid")
        if type(owner) is _Flow:
            owner.txn = None
            owner.stunInFlight = False
        elif type(owner) is _Probe:
            self._finishProbe(owner, Failure(NATTraversalError(f"{txn.server[0]}:{txn.server[1]} sent a {why}")))
        else:
            assert isinstance(owner, _Resolution)
            owner.txn = None
            self._tryNextServer(owner)

    def _pongReceived(self, socket: Any) -> bool:
        sock = self._sockets.get(id(socket))
        if sock is None or sock.socket is not socket:
            return False
        consumed = False
        for flow in list(sock.flows):
            if flow.kind == ka.PING and flow.pongReceived():
                consumed = True
                self.stats["keepalive.pongs"] += 1
                if self.keepaliveEvents:
                    _log.debug("pong received", sipnat_event="keepalive.answered", observer=flow.observer)
                self._scheduleFlow(flow)
        return consumed

    # -- resolution -------------------------------------------------------------------------------------------

    def resolvePublicAddress(
        self, domain: Optional[str], socket: Any, nextHop: Any, observer: Any = None
    ) -> defer.Deferred[PublicAddress]:
        """
        Learn the public address the NAT gave ``socket``, by a STUN Binding request sent from it (RFC 8489).

        The domain's ``stunServers`` are tried in order (next on timeout or error response); with none, the next
        hop itself is asked (an RFC 5626 edge).  The Deferred fires with an ``IPv4Address``/``IPv6Address``
        ("UDP"), or errbacks with :class:`~twisted_sipnat.errors.STUNErrorResponse` (the last error, if any server
        answered with one) or :class:`~twisted_sipnat.errors.STUNTimeout`.  ``cancel()`` stops retransmitting and
        errbacks ``CancelledError``.  Raises :class:`~twisted_sipnat.errors.NATTraversalError` at once for an
        unknown domain or a bad ``nextHop``.  With an ``observer``, its domain, next hop and result are remembered
        for :meth:`refreshNATBinding` until ``freeResources(observer)``.
        """
        settings = self.settingsFor(domain)
        hop = self._checkNextHop(nextHop)
        sock = self._socketState(socket)
        if sock.shared.isStream:
            # RFC 5626 §4.4.1: a TCP/TLS flow is kept alive with CRLF pings; STUN bytes written into the SIP
            # stream would corrupt it for the registrar.  The public address of a stream flow is in the
            # REGISTER response's Via received/rport.
            raise NATTraversalError("resolvePublicAddress needs a UDP socket: STUN is not sent inside a SIP stream")
        servers: List[ServerSpec] = list(settings.servers) if settings.servers else [hop]
        now = self.reactor.seconds()
        resolution = _Resolution(sock, settings, servers, observer, hop, domain, now)
        resolution.deferred = defer.Deferred(lambda d: self._cancelResolution(resolution))
        self._resolutions.add(resolution)
        if observer is not None:
            memory = self._memory.setdefault(observer, _ObserverMemory())
            memory.domain = domain
            memory.nextHop = hop
        try:
            self._tryNextServer(resolution)
        finally:
            self._reschedule()
        return resolution.deferred

    def _checkNextHop(self, nextHop: Any) -> HostPort:
        try:
            host, port = nextHop
        except (TypeError, ValueError):
            raise NATTraversalError(f"nextHop must be (host, port), not {nextHop!r}") from None
        if not isinstance(host, str) or not host or isinstance(port, bool) or not isinstance(port, int) \
                or not 0 < port < 65536:
            raise NATTraversalError(f"nextHop must be (host, port) with a port 1-65535, not {nextHop!r}")
        normal = _normalHost(host)
        if normal == host and type(nextHop) is tuple:
            # Already canonical: keep the caller's tuple, so the flows of a farm that share a next hop share
            # one (host, port) instead of a copy each (about 100 bytes a flow).
            return nextHop
        return (normal, port)

    def _tryNextServer(self, resolution: _Resolution) -> None:
        if resolution.done:
            return
        if resolution.index >= len(resolution.servers):
            error: NATTraversalError = resolution.lastError or STUNTimeout(
                tuple(resolution.tried), self.reactor.seconds() - resolution.startedAt
            )
            self._finishResolution(resolution, Failure(error))
            return
        spec = resolution.servers[resolution.index]
        resolution.index += 1
        host, port = spec
        if isIPLiteral(host) and port is not None:
            self._startResolutionTransaction(resolution, (_normalHost(host), port))
            return
        lookup = self._lookupServer(host, port, resolution.sock)
        resolution.pendingLookup = lookup

        def found(address: HostPort) -> None:
            resolution.pendingLookup = None
            if not resolution.done:
                self._startResolutionTransaction(resolution, address)
                self._reschedule()

        def failed(reason: Failure) -> None:
            resolution.pendingLookup = None
            if reason.check(defer.CancelledError) or resolution.done:
                return
            _log.warn("cannot resolve STUN server {host}: {why}", host=host, why=reason.getErrorMessage(),
                      sipnat_event="stun.server.unresolved")
            self._tryNextServer(resolution)
            self._reschedule()

        lookup.addCallbacks(found, failed)

    def _startResolutionTransaction(self, resolution: _Resolution, server: HostPort) -> None:
        resolution.tried.append(server)
        try:
            resolution.txn = self._newTransaction(resolution.sock, server, resolution.settings, resolution)
        except ResourceLimitError as e:
            self._finishResolution(resolution, Failure(e))

    def _resolutionAnswered(self, resolution: _Resolution, txn: _Txn, message: Any, now: float) -> None:
        resolution.txn = None
        if message.messageClass == stun.SUCCESS:
            mapped = message.mappedAddress
            if mapped is None:
                _log.warn("Binding success from {server} without a mapped address", server=txn.server,
                          sipnat_event="stun.response.invalid")
                resolution.lastError = STUNErrorResponse(0, "success response without a mapped address", txn.server)
                self._tryNextServer(resolution)
                return
            host, port = mapped
            address = _publicAddress(host, port, txn.sock.shared.isStream)
            if resolution.observer is not None:
                memory = self._memory.setdefault(resolution.observer, _ObserverMemory())
                memory.resolved = address
                memory.viaNextHop = not resolution.settings.servers
            rtt = now - resolution.startedAt
            _log.info("public address {host}:{port} from STUN server {server[0]}:{server[1]} in {rtt:.3f} s",
                      host=host, port=port, server=txn.server, rtt=rtt, sipnat_event="public.address")
            self._finishResolution(resolution, address)
            return
        code, reason = message.errorCode or (0, "error response without ERROR-CODE")
        if code == TRY_ALTERNATE:
            alternate = message.alternateServer
            if alternate is not None and txn.server not in resolution.redirected:
                resolution.redirected.add(txn.server)
                target = (_normalHost(alternate[0]), alternate[1])
                resolution.redirected.add(target)  # one redirect per server: no ping-pong between two
                resolution.servers.insert(resolution.index, target)
                _log.info("STUN server {server} redirects to {target}", server=txn.server, target=target,
                          sipnat_event="stun.redirect")
                self._tryNextServer(resolution)
                return
        resolution.lastError = STUNErrorResponse(code, reason, txn.server)
        _log.info("STUN server {server} answered {code} {reason}", server=txn.server, code=code, reason=reason,
                  sipnat_event="stun.error")
        self._tryNextServer(resolution)

    def _retire(self, owner: Union[_Resolution, _Probe]) -> bool:
        """Mark a resolution or probe done and end its transaction; ``False`` if it was done already."""
        if owner.done:
            return False
        owner.done = True
        if owner.txn is not None:
            txn, owner.txn = owner.txn, None
            self._endTransaction(txn)
        return True

    @staticmethod
    def _fire(deferred: defer.Deferred[Any], result: Any) -> None:
        if isinstance(result, Failure):
            deferred.errback(result)
        else:
            deferred.callback(result)

    def _finishResolution(self, resolution: _Resolution, result: Union[PublicAddress, Failure]) -> None:
        if self._retire(resolution):
            self._resolutions.discard(resolution)
            self._fire(resolution.deferred, result)

    def _cancelResolution(self, resolution: _Resolution) -> None:
        """The Deferred's canceller: stop retransmitting; ``Deferred.cancel`` then errbacks ``CancelledError``."""
        if not self._retire(resolution):
            return
        self._resolutions.discard(resolution)
        if resolution.pendingLookup is not None:
            lookup, resolution.pendingLookup = resolution.pendingLookup, None
            lookup.cancel()
        self._forgetSocketIfUnused(resolution.sock)
        self._reschedule()

    # -- names ------------------------------------------------------------------------------------------------

    def lookupServer(self, host: str, port: Optional[int], socket: Any) -> defer.Deferred[HostPort]:
        """The IP address and port of a STUN server name as :meth:`resolvePublicAddress` finds it."""
        return self._lookupServer(host, port, self._socketState(socket))

    def localAddressOf(self, socket: Any) -> Any:
        """The local ``IAddress`` of a shared socket (``None`` if unknown)."""
        return self._socketState(socket).shared.localAddress()

    def _lookupServer(self, host: str, port: Optional[int], sock: _SocketState) -> defer.Deferred[HostPort]:
        """
        A STUN server's address: for a name without a port, DNS SRV ``_stun._udp.NAME`` first (RFC 8489 §8.1),
        then A/AAAA on 3478; otherwise the name's address, through the reactor's resolver.
        """
        if port is not None:
            return self._lookupHost(host, port, sock)
        srv = self._lookupSRV(host)

        def fromSRV(targets: List[HostPort]) -> Any:
            if not targets:
                return self._lookupHost(host, DEFAULT_STUN_PORT, sock)
            target, targetPort = targets[0]
            if isIPLiteral(target):
                return defer.succeed((_normalHost(target), targetPort))
            return self._lookupHost(target, targetPort, sock)

        def noSRV(reason: Failure) -> Any:
            if reason.check(defer.CancelledError):
                return reason
            return self._lookupHost(host, DEFAULT_STUN_PORT, sock)

        srv.addCallbacks(fromSRV, noSRV)
        return srv  # type: ignore[return-value]

    def _lookupSRV(self, host: str) -> defer.Deferred[List[HostPort]]:
        from twisted.names import client, dns

        if self._dnsResolver is None:
            self._dnsResolver = client.Resolver(servers=_nameServers(), reactor=self.reactor)

        def ordered(result: Any) -> List[HostPort]:
            answers, _, _ = result
            records = [a.payload for a in answers if a.type == dns.SRV]
            records.sort(key=lambda r: (r.priority, -r.weight))
            return [(str(r.target), r.port) for r in records if str(r.target) not in ("", ".")]

        d: defer.Deferred[List[HostPort]] = self._dnsResolver.lookupService(f"_stun._udp.{host}")
        d.addCallback(ordered)
        return d

    def _lookupHost(self, host: str, port: int, sock: _SocketState) -> defer.Deferred[HostPort]:
        from twisted.internet.interfaces import IReactorPluggableNameResolver

        wantIPv6 = self._isIPv6Socket(sock, None)
        if IReactorPluggableNameResolver.providedBy(self.reactor):
            return self._lookupWithNameResolver(host, port, wantIPv6)
        resolve = getattr(self.reactor, "resolve", None)
        if resolve is None:
            return defer.fail(NATTraversalError(f"cannot resolve {host!r}: the reactor has no name resolver"))
        d: defer.Deferred[str] = resolve(host)
        return d.addCallback(lambda ip: (ip, port))

    def _lookupWithNameResolver(self, host: str, port: int, wantIPv6: bool) -> defer.Deferred[HostPort]:
        from twisted.internet.interfaces import IResolutionReceiver

        result: defer.Deferred[HostPort] = defer.Deferred()
        found: List[HostPort] = []

        @implementer(IResolutionReceiver)
        class Receiver:
            def resolutionBegan(self, resolutionInProgress: Any) -> None:
                pass

            def addressResolved(self, address: Any) -> None:
                found.append((_normalHost(address.host), port))

            def resolutionComplete(self) -> None:
                if result.called:
                    return
                if found:
                    result.callback(found[0])
                else:
                    result.errback(NATTraversalError(f"{host!r} has no {'IPv6' if wantIPv6 else 'IPv4'} address"))

        family = IPv6Address if wantIPv6 else IPv4Address
        self.reactor.nameResolver.resolveHostName(  # type: ignore[attr-defined]
            Receiver(), host, port, addressTypes=[family], transportSemantics="UDP"
        )
        return result

    # -- single requests and RFC 5780 ---------------------------------------------------------------------------

    def sendBindingRequest(
        self,
        socket: Any,
        server: Any,
        attributes: Sequence[Any] = (),
        *,
        settings: Optional[NATSettings] = None,
        retransmissions: int = DEFAULT_RC,
        anySource: bool = False,
    ) -> defer.Deferred[Tuple[Any, Optional[HostPort]]]:
        """
        One Binding transaction from ``socket`` to ``server`` (an IP literal ``(host, port)``), with extra
        ``attributes`` (e.g. ``stun.ChangeRequest``).  Fires with ``(response, source)`` (success or error
        response, decoded and checked like every response), errbacks ``STUNTimeout`` after ``retransmissions``
        sends (RFC 8489 §6.2.1 timing), or ``CancelledError``.  ``anySource`` accepts the answer from any address
        (RFC 5780 CHANGE-REQUEST answers come from the server's other address); the transaction ID still has to
        match.  The building block of :meth:`discoverNATBehaviour`.
        """
        target = self._checkNextHop(server)
        if not isIPLiteral(target[0]):
            raise NATTraversalError(f"sendBindingRequest needs an IP literal, not {target[0]!r}")
        if settings is None:
            settings = self._settings or NATSettings()
        sock = self._socketState(socket)
        probe = _Probe()
        probe.deferred = defer.Deferred(lambda d: self._cancelProbe(probe))
        try:
            probe.txn = self._newTransaction(sock, target, settings, probe, extra=tuple(attributes) or (),
                                             rc=retransmissions, anySource=anySource)
        finally:
            self._reschedule()
        return probe.deferred

    def _finishProbe(self, probe: _Probe, result: Any) -> None:
        if self._retire(probe):
            self._fire(probe.deferred, result)

    def _cancelProbe(self, probe: _Probe) -> None:
        if self._retire(probe):
            self._reschedule()

    def discoverNATBehaviour(self, socket: Any, server: Any, *, retransmissions: int = DEFAULT_RC) -> Any:
        """
        RFC 5780 §4.3/§4.4: the NAT's mapping and filtering behaviour, seen from ``socket``, against a STUN
        server with two addresses (it must return OTHER-ADDRESS).  Fires with a
        :class:`~twisted_sipnat.discovery.NATBehaviour`; errbacks
        :class:`~twisted_sipnat.errors.NATTraversalError` when the server has no alternate address.  The
        filtering tests wait for answers that a filtering NAT drops: ``retransmissions`` bounds that wait.
        """
        from .discovery import discover

        return discover(self, socket, server, retransmissions=retransmissions)

    # -- keepalives -------------------------------------------------------------------------------------------

    def refreshNATBinding(
        self,
        socket: Any,
        observer: Any,
        nextHop: Any = None,
        flowTimer: Optional[float] = None,
        domain: Optional[str] = None,
    ) -> bool:
        """
        Keep the NAT binding of ``socket`` alive toward ``nextHop`` (or the one given at resolve), after the
        REGISTER 200 OK (RFC 5626 §4.4).

        ``flowTimer`` (the registrar's Flow-Timer or Via ``keep``) replaces the configured interval.  Every
        keepalive goes out after a fresh 80-100 % of the interval.  UDP: a STUN Binding transaction to the next
        hop (or a CRLFCRLF datagram with ``udpKeepaliveMethod="crlf"``); TCP/TLS: a CRLFCRLF ping whose CRLF pong
        must arrive within ``pongTimeout``.  Returns ``True`` when a periodic keepalive was started, ``False``
        when the transport's configured interval is ``0`` (keepalives disabled).  A second call for the same
        observer restarts its keepalives.
        """
        memory = self._memory.get(observer)
        if domain is None and memory is not None:
            domain = memory.domain
        settings = self.settingsFor(domain)
        sock = self._socketState(socket)
        stream = sock.shared.isStream
        configured = settings.tcpKeepaliveInterval if stream else settings.udpKeepaliveInterval
        if configured == 0:
            self._stopFlow(observer)
            return False
        if flowTimer is not None:
            if isinstance(flowTimer, bool) or not isinstance(flowTimer, (int, float)) or not flowTimer > 0:
                raise NATTraversalError(f"flowTimer must be a positive number of seconds, not {flowTimer!r}")
            base = float(flowTimer)
        else:
            base = configured
        hop: Optional[HostPort]
        if nextHop is not None:
            hop = self._checkNextHop(nextHop)
        elif memory is not None and memory.nextHop is not None:
            hop = memory.nextHop
        elif stream:
            hop = sock.shared.peerAddress()
        else:
            raise NATTraversalError("refreshNATBinding needs a nextHop (none was given at resolve either)")
        kind = ka.PING if stream else (ka.STUN if settings.udpKeepaliveMethod == "stun" else ka.CRLF)
        # Contract: the resolved address is the baseline only when the next hop was also the STUN server.
        baseline = None
        if kind == ka.STUN and memory is not None and memory.viaNextHop and memory.nextHop == hop:
            baseline = memory.resolved
        existing = self._flows.get(observer)
        if existing is not None:
            self._stopFlow(observer)
        elif len(self._flows) >= self.maxFlows:
            raise ResourceLimitError("keepalive contexts", self.maxFlows)
        now = self.reactor.seconds()
        flow = _Flow(kind, base, now, self.rng, settings.pongTimeout, baseline, observer, sock, hop, settings)
        self._flows[observer] = flow
        sock.flows[flow] = None
        if memory is None:
            memory = self._memory.setdefault(observer, _ObserverMemory())
        memory.domain = domain
        memory.nextHop = hop
        if hop is not None and not isIPLiteral(hop[0]):
            self._resolveFlowNextHop(flow, hop)
        self._scheduleFlow(flow)
        self._reschedule()
        _log.info("keepalives started toward {nextHop} every {low:.1f}-{high:.1f} s ({kind})", nextHop=hop,
                  low=base * ka.JITTER_LOW, high=base * ka.JITTER_HIGH, kind=kind, observer=observer,
                  sipnat_event="keepalive.started")
        return True

    def _resolveFlowNextHop(self, flow: _Flow, hop: HostPort) -> None:
        """UDP writes need IP literals: look the name up now; the first keepalive is at least 80 % away."""
        lookup = self._lookupHost(hop[0], hop[1], flow.sock)

        def found(address: HostPort) -> None:
            if not flow.stopped and flow.nextHop == hop:
                flow.nextHop = address

        def failed(reason: Failure) -> None:
            if not flow.stopped and flow.nextHop == hop:
                _log.warn("cannot resolve next hop {host}: {why}", host=hop[0], why=reason.getErrorMessage())
                flow.nextHop = None

        lookup.addCallbacks(found, failed)

    def _scheduleFlow(self, flow: _Flow) -> None:
        self._timers.schedule(flow, flow.nextTime)

    def _flowDue(self, flow: _Flow, now: float) -> None:
        if flow.stopped:
            return
        action = flow.fire(now)
        if action == ka.PONG_TIMEOUT:
            self._failFlow(flow, PongTimeout(flow.pongTimeout))
            return
        if action == ka.KEEPALIVE:
            self._sendKeepalive(flow, now)
        if not flow.stopped:
            self._scheduleFlow(flow)

    def _sendKeepalive(self, flow: _Flow, now: float) -> None:
        hop = flow.nextHop
        if hop is None and flow.kind != ka.PING:
            self.stats["keepalive.skipped.no-next-hop"] += 1
            return
        if flow.kind == ka.STUN:
            assert hop is not None
            flow.stunInFlight = True
            try:
                flow.txn = self._newTransaction(flow.sock, hop, flow.settings, flow, now=now)
            except ResourceLimitError:
                flow.stunInFlight = False
                self.stats["keepalive.skipped.limit"] += 1
                return
        else:
            payload = ka.PING_BYTES
            if self._offer(flow.sock, flow, payload):
                flow.sock.shared.writeKeepalive(payload, hop)
                self._flowKeepaliveWritten(flow, now)
        self.stats["keepalive.sent"] += 1
        if self.keepaliveEvents:
            _log.debug("keepalive ({kind}) due toward {nextHop}", kind=flow.kind, nextHop=hop, observer=flow.observer,
                       sipnat_event="keepalive.sent")

    def _flowKeepaliveWritten(self, flow: _Flow, now: float) -> None:
        if flow.kind == ka.PING:
            wasAwaiting = flow.awaitingPong
            flow.pingWritten(now)
            if not wasAwaiting:
                self._scheduleFlow(flow)

    def _keepaliveConfirmed(self, flow: _Flow, txn: _Txn) -> bool:
        """The next hop answered the flow's keepalive; ``False`` if the flow has been stopped meanwhile."""
        if flow.txn is txn:
            flow.txn = None
        flow.stunInFlight = False
        if flow.stopped:
            return False
        self.stats["keepalive.answered"] += 1
        return True

    def _keepaliveUnchanged(self, flow: _Flow, txn: _Txn) -> None:
        """An answer identical to the last one that confirmed the baseline (:class:`_AnswerMemo`)."""
        if self._keepaliveConfirmed(flow, txn) and self.keepaliveEvents:
            self._logKeepaliveAnswered(flow, txn, flow.baseline)

    def _logKeepaliveAnswered(self, flow: _Flow, txn: _Txn, address: Any) -> None:
        now = self.reactor.seconds()
        _log.debug("keepalive answered by {server}: public address {host}:{port}", server=txn.server,
                   host=address.host, port=address.port, observer=flow.observer,
                   rtt=now - (txn.startedAt or now), sipnat_event="keepalive.answered")

    def _keepaliveAnswered(self, flow: _Flow, txn: _Txn, message: Any, now: float, data: bytes) -> None:
        if not self._keepaliveConfirmed(flow, txn):
            return
        if message.messageClass != stun.SUCCESS:
            code, reason = message.errorCode or (0, "")
            # Contract: an error response still proves the path is alive; log it, do not fail the flow.
            _log.warn("keepalive answered with STUN error {code} {reason} by {server}", code=code, reason=reason,
                      server=txn.server, observer=flow.observer, sipnat_event="keepalive.error")
            return
        mapped = message.mappedAddress
        if mapped is None:
            _log.warn("keepalive answer from {server} without a mapped address", server=txn.server)
            return
        baseline = flow.baseline
        if baseline is not None and (baseline.host, baseline.port) == mapped:
            # The common case, every keepalive of a healthy flow: unchanged, no new address object to judge.
            address, first, change = baseline, False, None
        else:
            address = _publicAddress(mapped[0], mapped[1], False)
            first = baseline is None
            change = flow.judgeMappedAddress(address)
        if self.keepaliveEvents:
            self._logKeepaliveAnswered(flow, txn, address)
        if change is None and txn.integrityKey is None:
            fingerprinted = stun.endsWithValidFingerprint(data)
            if fingerprinted or not message.hasFingerprint:
                flow.lastAnswer = _AnswerMemo(_AnswerMemo.shapeOf(data, fingerprinted), fingerprinted, flow.baseline)
        if first:
            _log.info("public address {host}:{port} on the flow to {server}", host=address.host, port=address.port,
                      server=txn.server, observer=flow.observer, sipnat_event="public.address")
        if change is not None:
            old, new = change
            _log.warn("NAT rebinding: public address changed from {old.host}:{old.port} to {new.host}:{new.port}",
                      old=old, new=new, observer=flow.observer, sipnat_event="public.address.changed")
            self._failFlow(flow, MappedAddressChanged(old, new))

    def _failFlow(self, flow: _Flow, error: FlowFailure) -> None:
        """The flow failed: stop it completely, then tell its observer once (after the state is consistent)."""
        if flow.stopped:
            return
        self._stopFlow(flow.observer)
        self.stats["flow.failures"] += 1
        _log.warn("flow failed: {error}", error=str(error), observer=flow.observer, failure_type=type(error).__name__,
                  sipnat_event="flow.failure")
        notify = getattr(flow.observer, "flowFailure", None)
        if notify is None:
            return
        try:
            notify(Failure(error))
        except Exception:
            _log.failure("the observer's flowFailure raised")

    def _stopFlow(self, observer: Any) -> Optional[_Flow]:
        flow = self._flows.pop(observer, None)
        if flow is None:
            return None
        flow.stopped = True
        self._timers.unschedule(flow)
        flow.sock.shared.arbiter.withdraw(flow)
        if flow.txn is not None:
            txn, flow.txn = flow.txn, None
            self._endTransaction(txn)
        flow.sock.flows.pop(flow, None)
        self._forgetSocketIfUnused(flow.sock)
        return flow

    def updateNextHop(self, nextHop: Any, observer: Any) -> None:
        """
        Move the observer's keepalives to ``nextHop`` at once, including a STUN keepalive in flight: its
        retransmissions go to the new hop and its answer is accepted from there.  The new hop reports the
        mapping it sees, so it sets a new baseline for ``MappedAddressChanged``.
        """
        hop = self._checkNextHop(nextHop)
        memory = self._memory.setdefault(observer, _ObserverMemory())
        if memory.nextHop != hop:
            memory.viaNextHop = False
        memory.nextHop = hop
        flow = self._flows.get(observer)
        if flow is None or flow.nextHop == hop:
            return
        flow.nextHop = hop
        flow.baseline = None
        if flow.txn is not None:
            flow.txn.destination = hop
        if not isIPLiteral(hop[0]):
            self._resolveFlowNextHop(flow, hop)
        _log.info("keepalives moved to {nextHop}", nextHop=hop, observer=observer, sipnat_event="keepalive.moved")

    # -- socket arbitration -----------------------------------------------------------------------------------

    def socketIdle(self, idle: bool, socket: Any) -> None:
        """
        ``False``: the SIP stack is using ``socket``; nothing of the controller's is written to it until
        ``socketIdle(True)``, which writes what was held back, in order, at most one per context — synchronously,
        inside this call.
        """
        sock = self._socketState(socket)
        released = sock.shared.arbiter.sipIdle(bool(idle))
        try:
            self.writeReleased(sock.shared, released, write=True)
        finally:
            if idle:
                # nothing to hold and nothing riding on it: keep no state (a stack may report every connection)
                self._forgetSocketIfUnused(sock)
            self._reschedule()

    def writeReleased(self, shared: Any, released: List[Tuple[Any, bytes]], write: bool) -> None:
        """
        Keepalives the arbiter released: write them (``write=True``) or note that the shared socket already
        wrote them in place (a TCP ping placed between two SIP messages), and start their clocks.
        """
        if not released:
            return
        now = self.reactor.seconds()
        for key, payload in released:
            if type(key) is _Flow:
                flow = key
                if flow.stopped:
                    continue
                if flow.kind == ka.STUN:
                    txn = flow.txn
                    if txn is None:
                        continue
                    if write:
                        shared.writeKeepalive(payload, txn.destination)
                    self._txnWritten(txn, now)
                else:
                    if write:
                        shared.writeKeepalive(payload, flow.nextHop)
                    self._flowKeepaliveWritten(flow, now)
            elif type(key) is _Txn:
                if key.done:
                    continue
                if write:
                    shared.writeKeepalive(payload, key.destination)
                self._txnWritten(key, now)
        self._reschedule()

    def socketClosed(self, socket: Any, reason: Optional[Failure] = None) -> None:
        """
        ``socket`` was closed or its connection lost: every flow on it fails with
        :class:`~twisted_sipnat.errors.FlowConnectionLost` and pending resolutions on it fail too.
        :class:`~twisted_sipnat.protocols.SharedStreamProtocol` calls this itself; SIP stacks using bare sockets
        call it from their ``connectionLost``.
        """
        socket = self._canonicalSocket(socket)
        sock = self._sockets.get(id(socket))
        if sock is None or sock.socket is not socket:
            return
        why = reason.getErrorMessage() if reason is not None else "connection lost"
        for resolution in [r for r in self._resolutions if r.sock is sock]:
            self._finishResolution(resolution, Failure(FlowConnectionLost(why)))
        for flow in list(sock.flows):
            self._failFlow(flow, FlowConnectionLost(why))
        for txn in [t for t in self._pending.values() if t.sock is sock]:
            self._endTransaction(txn)
        if self._sockets.get(id(socket)) is sock:
            del self._sockets[id(socket)]
        self._reschedule()

    # -- cleanup ----------------------------------------------------------------------------------------------

    def freeResources(self, observer: Any = None) -> None:
        """
        Stop ``observer``'s keepalives and cancel its pending resolutions (their Deferreds errback
        ``CancelledError``); with no argument, every context and every resolution.  No timer of the controller
        is left in the reactor afterwards (for the whole controller; for one observer, none of its own).
        """
        if observer is None:
            for resolution in list(self._resolutions):
                resolution.deferred.cancel()
            for key in list(self._flows):
                self._stopFlow(key)
            for txn in list(self._pending.values()):
                self._endTransaction(txn)
            self._memory.clear()
            self._timers.clear()
            self._sockets.clear()
        else:
            for resolution in [r for r in self._resolutions if r.observer is observer]:
                resolution.deferred.cancel()
            self._stopFlow(observer)
            self._memory.pop(observer, None)
        self._reschedule()

    # -- introspection ----------------------------------------------------------------------------------------

    def isKeepingAlive(self, observer: Any) -> bool:
        """``True`` while ``observer`` has a running keepalive context."""
        return observer in self._flows

    @property
    def flowCount(self) -> int:
        return len(self._flows)

    @property
    def pendingTransactionCount(self) -> int:
        return len(self._pending)
