"""
The three services behind ``twistd sipnat``: client, edge and stun.

Each role is a :class:`twisted.application.service.MultiService` that takes its reactor as an argument and owns
everything it opens: stopping it closes every port and cancels every timer it started, so a test with a
``task.Clock`` (or the real reactor) sees nothing left behind.

- :class:`ClientRole` is what a SIP UA behind a NAT does: bind the SIP socket (a
  :class:`~twisted_sipnat.protocols.SharedDatagramProtocol`), learn the public address with STUN, optionally
  REGISTER with the next hop, keep the binding alive toward it, and on a flow failure start again after the
  RFC 5626 §4.5 backoff.
- :class:`EdgeRole` is the other side: ``twisted.protocols.sip.RegisterProxy`` behind the shared UDP socket,
  answering STUN keepalives on the SIP port, plus SIP over TCP answering CRLF pings (RFC 5626 §5.4, §4.4.1).
- :class:`STUNRole` is a standalone STUN Binding server (RFC 8489 §6.3), with RFC 5780 alternate addresses
  when asked.

``twisted.protocols.sip`` imports the global reactor at module top, so it is imported here only inside the
functions that need it: importing this module (or the twistd plugin) never installs a reactor.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from functools import cache
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .core.addresses import isIPLiteral
from .core.backoff import Backoff
from .core.sipheaders import addKeepToVia, answerKeep, keepaliveInterval
from .errors import InvalidSettingsError, NATTraversalError
from .interfaces import IBindingObserver
from .settings import NATSettings

__all__ = [
    "ClientRole",
    "EdgeRole",
    "RegistrationError",
    "STUNRole",
    "UDPListener",
    "parseHostPort",
    "parseUDPDescription",
]

HostPort = Tuple[str, int]
NextHop = Union[HostPort, Callable[[], HostPort]]

log = Logger(namespace="sipnat.roles")

_UDP = re.compile(r"udp:(?:port=)?(?P<port>[0-9]+)(?::interface=(?P<interface>.+))?", re.IGNORECASE)


def parseUDPDescription(text: str, key: str = "listen") -> Tuple[int, str]:
    """
    ``udp:PORT[:interface=ADDR]`` -> ``(port, interface)``; ``interface`` is ``""`` for every interface.

    Twisted has no ``udp:`` endpoint strings (UDP is not a stream), so this is a small syntax of our own in the
    same spirit: ``udp:5060``, ``udp:0`` (any free port), ``udp:5060:interface=127.0.0.1``,
    ``udp:5060:interface=::1``.  Errors are :class:`InvalidSettingsError` naming ``key``.
    """
    match = _UDP.fullmatch(text.strip())
    if match is None:
        raise InvalidSettingsError(key, text, "expected udp:PORT[:interface=ADDR]")
    port = int(match.group("port"))
    if port > 65535:
        raise InvalidSettingsError(key, text, "the port must be 0-65535")
    interface = match.group("interface") or ""
    if interface:
        interface = interface.strip("[]")
        if not isIPLiteral(interface):
            raise InvalidSettingsError(key, text, "the interface must be an IP address")
    return port, interface


def parseHostPort(text: str, key: str, defaultPort: Optional[int] = None) -> HostPort:
    """
    ``HOST:PORT`` (``[V6]:PORT`` for IPv6) -> ``(host, port)``; the port may be omitted when ``defaultPort``
    is given.  IPv6 literals come back in RFC 5952 form.
    """
    value = text.strip()
    host: str
    portText: Optional[str]
    if value.startswith("["):
        host, bracket, tail = value[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise InvalidSettingsError(key, text, "expected [IPv6]:PORT")
        portText = tail[1:] or None
    elif value.count(":") > 1 and isIPLiteral(value):
        host, portText = value, None
    else:
        host, _, portText = value.partition(":")
        portText = portText or None
    if not host:
        raise InvalidSettingsError(key, text, "empty host")
    if portText is None:
        if defaultPort is None:
            raise InvalidSettingsError(key, text, "expected HOST:PORT")
        port = defaultPort
    else:
        if not portText.isdigit() or not 0 < int(portText) < 65536:
            raise InvalidSettingsError(key, text, "the port must be 1-65535")
        port = int(portText)
    if isIPLiteral(host):
        host = str(ipaddress.ip_address(host))
    return host, port


def _utf8Prefix(data: bytes) -> Optional[int]:
    """
    How much of ``data`` is whole UTF-8 characters: ``len(data)``, or less when the last character is cut
    off (a stream may split one between two reads), or ``None`` when it is not UTF-8 at all.  Twisted's
    ``MessagesParser`` decodes every chunk it is given and logs a traceback for bytes it cannot.
    """
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.reason == "unexpected end of data" and len(data) - e.start < 4:
            return e.start
        return None
    return len(data)


def _hostOf(address: Any) -> str:
    return str(address.host)


class _PortService(service.Service):
    """A service that owns one listening port: stopping the service closes it."""

    port: Any = None

    def stopService(self) -> Any:
        service.Service.stopService(self)
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None


class UDPListener(_PortService):
    """
    One UDP port as a service: listens on start, stops listening on stop.

    The twistd equivalent of ``strports.service`` for UDP, which Twisted does not provide.  ``port`` is the
    ``IListeningPort`` while running (``port.getHost().port`` is the real number after ``udp:0``).
    ``reusePort`` binds with ``SO_REUSEPORT`` so worker processes can share the port
    (:mod:`~twisted_sipnat.reuseport`).
    """

    def __init__(self, reactor: Any, portNumber: int, proto: protocol.AbstractDatagramProtocol, interface: str = "",
                 reusePort: bool = False) -> None:
        self.reactor = reactor
        self.portNumber = portNumber
        self.protocol = proto
        self.interface = interface
        self.reusePort = reusePort
        self.port: Any = None

    def startService(self) -> None:
        # Bind before marking running, so a bind error surfaces from startService (twistd reports it).
        if self.reusePort:
            from .reuseport import listenUDPReusePort

            self.port = listenUDPReusePort(self.reactor, self.portNumber, self.protocol, self.interface)
        else:
            self.port = self.reactor.listenUDP(self.portNumber, self.protocol, interface=self.interface)
        service.Service.startService(self)


    def address(self) -> HostPort:
        """The bound ``(host, port)``; a wildcard interface reads as the loopback address of its family."""
        if self.port is None:
            raise RuntimeError("not listening")
        host = self.port.getHost()
        name = host.host
        if name in ("0.0.0.0", ""):
            name = "127.0.0.1"
        elif name == "::":
            name = "::1"
        return name, host.port


class _StreamListener(_PortService):
    """
    A stream endpoint as a service, keeping the port so that stopping closes it.  A description the endpoint
    parser refuses is an :class:`InvalidSettingsError` at construction; a listen that fails at start-up (the port
    is taken) raises from ``startService``, as a UDP port does, instead of leaving the role running half-up.
    """

    def __init__(self, reactor: Any, description: str, factory: Any) -> None:
        from twisted.internet import endpoints

        self.reactor = reactor
        self.description = description
        self.factory = factory
        self.port: Any = None
        try:
            self.endpoint = endpoints.serverFromString(reactor, description)
        except Exception as e:  # noqa: BLE001 - the parser raises ValueError, KeyError, TypeError ...
            raise InvalidSettingsError("tcp", description, f"not a stream endpoint description ({e})") from None

    def startService(self) -> None:
        service.Service.startService(self)
        outcome: List[Any] = []
        d = self.endpoint.listen(self.factory)
        d.addBoth(outcome.append)
        if outcome and isinstance(outcome[0], Failure):
            service.Service.stopService(self)
            outcome[0].raiseException()  # tcp:/ssl: listen at once: the port is taken, say so now

        def listening(port: Any) -> None:
            self.port = port
            log.info("listening on {description}", description=self.description)

        if outcome:
            listening(outcome[0])
        else:  # an endpoint that listens later: a failure can only be logged
            d.addCallbacks(listening, lambda f: log.failure("cannot listen on {description}", f,
                                                            description=self.description))


# ---- the client role -------------------------------------------------------------------------------------


class RegistrationError(NATTraversalError):
    """A REGISTER got a final error response (``code``, ``phrase``) or no answer (``code`` is ``None``)."""

    def __init__(self, code: Optional[int], phrase: str) -> None:
        super().__init__(f"REGISTER failed: {code} {phrase}" if code is not None else f"REGISTER failed: {phrase}")
        self.code = code
        self.phrase = phrase


class RegisterClient(protocol.DatagramProtocol):
    """
    The smallest useful UDP registering UA: sends REGISTER to the next hop and reports the final response.

    It is the ``sipProtocol`` of a :class:`~twisted_sipnat.protocols.SharedDatagramProtocol`, so its REGISTERs
    leave from the very socket whose binding the controller keeps alive, and its ``transport`` writes through
    the socket arbitration.  Retransmission follows RFC 3261 §17.1.2.2 (Timer E from T1 = 0.5 s doubling to
    T2 = 4 s, Timer F = 32 s); a 2xx fires the Deferred of :meth:`register` with the parsed
    ``twisted.protocols.sip.Response``, anything >= 300 or Timer F errbacks :class:`RegistrationError`.  The
    top Via offers RFC 6223 ``;keep`` and RFC 3581 ``rport``.
    """

    T1 = 0.5
    T2 = 4.0
    TIMER_F = 32.0

    def __init__(self, reactor: Any, aor: str, nextHop: NextHop, expires: int = 3600) -> None:
        self.reactor = reactor
        self.aor = aor if aor.startswith(("sip:", "sips:")) else "sip:" + aor
        if "@" not in self.aor:
            raise InvalidSettingsError("register", aor, "expected an address of record user@domain")
        self._nextHop = nextHop
        self.expires = expires
        self.callId = secrets.token_hex(8)
        self.cseq = 0
        self._pending: Optional[Tuple[int, defer.Deferred[Any], Any, Any, bytes]] = None

    @property
    def nextHop(self) -> HostPort:
        hop = self._nextHop
        return hop() if callable(hop) else hop

    def register(self, contact: HostPort) -> defer.Deferred[Any]:
        """Send one REGISTER binding ``contact`` (the public address) to the AOR; cancels an earlier one."""
        self.stop()
        self.cseq += 1
        user, domain = self.aor.split(":", 1)[1].split("@", 1)
        local = self.transport.getHost() if self.transport is not None else None
        viaHost = _hostOf(local) if local is not None and _hostOf(local) not in ("0.0.0.0", "::") else contact[0]
        viaPort = local.port if local is not None else contact[1]
        host = f"[{contact[0]}]" if ":" in contact[0] else contact[0]
        viaText = f"[{viaHost}]" if ":" in viaHost else viaHost
        lines = [
            f"REGISTER sip:{domain} SIP/2.0",
            f"Via: SIP/2.0/UDP {viaText}:{viaPort};branch=z9hG4bK{secrets.token_hex(8)};rport",
            "Max-Forwards: 70",
            f"To: <{self.aor}>",
            f"From: <{self.aor}>;tag={secrets.token_hex(4)}",
            f"Call-ID: {self.callId}",
            f"CSeq: {self.cseq} REGISTER",
            f"Contact: <sip:{user}@{host}:{contact[1]}>",
            f"Expires: {self.expires}",
            "Content-Length: 0",
            "",
            "",
        ]
        data = addKeepToVia("\r\n".join(lines).encode("utf-8"))
        d: defer.Deferred[Any] = defer.Deferred(lambda _: self.stop())
        started = self.reactor.seconds()
        retransmit = self.reactor.callLater(self.T1, self._retransmit, self.T1)
        give_up = self.reactor.callLater(self.TIMER_F, self._timeout)
        self._pending = (self.cseq, d, retransmit, give_up, data)
        self._write(data)
        log.info("REGISTER {aor} sent to {host}:{port}", aor=self.aor, host=self.nextHop[0], port=self.nextHop[1],
                 started=started)
        return d

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data, self.nextHop)

    def _retransmit(self, interval: float) -> None:
        if self._pending is None:
            return
        cseq, d, _, giveUp, data = self._pending
        self._write(data)
        interval = min(interval * 2, self.T2)
        self._pending = (cseq, d, self.reactor.callLater(interval, self._retransmit, interval), giveUp, data)

    def _timeout(self) -> None:
        pending = self._finish()
        if pending is not None:
            pending.errback(RegistrationError(None, f"no response within {self.TIMER_F:g} s (RFC 3261 Timer F)"))

    def _finish(self) -> Optional[defer.Deferred[Any]]:
        if self._pending is None:
            return None
        _, d, retransmit, giveUp, _ = self._pending
        self._pending = None
        for call in (retransmit, giveUp):
            if call.active():
                call.cancel()
        return d

    def stop(self) -> None:
        """Forget the REGISTER in progress and cancel its timers (its Deferred is left unfired if not cancelled)."""
        d = self._finish()
        if d is not None and not d.called:
            d.cancel()

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        from twisted.protocols import sip

        if _utf8Prefix(data) != len(data):
            # MessagesParser would log a traceback for this; bytes off the wire never earn one.
            log.warn("dropped a non-UTF-8 datagram from {addr}", addr=addr)
            return
        messages: List[Any] = []
        parser = sip.MessagesParser(messages.append)
        try:
            parser.dataReceived(data)
            parser.dataDone()
        except Exception:  # noqa: BLE001 - bytes off the wire never stop the protocol
            log.warn("unparsable SIP datagram from {addr}", addr=addr)
            return
        for message in messages:
            if isinstance(message, sip.Response):
                self._response(message)

    def _response(self, response: Any) -> None:
        if self._pending is None:
            return
        callIds = response.headers.get("call-id", [])
        cseqs = response.headers.get("cseq", [])
        if callIds[:1] != [self.callId] or not cseqs or cseqs[0].split()[:1] != [str(self._pending[0])]:
            return
        if response.code < 200:
            return
        d = self._finish()
        assert d is not None
        if response.code < 300:
            d.callback(response)
        else:
            d.errback(RegistrationError(response.code, response.phrase))


def _grantedExpires(response: Any, asked: int) -> int:
    """The registration lifetime a 2xx granted: Contact ``expires=`` (RFC 3261 §10.2.4), else Expires."""
    for contact in response.headers.get("contact", []):
        match = re.search(r";\s*expires\s*=\s*([0-9]{1,9})", contact, re.IGNORECASE)
        if match:
            return int(match.group(1))
    for value in response.headers.get("expires", []):
        if value.strip().isdigit() and len(value.strip()) < 10:
            return int(value.strip())
    return asked


@implementer(IBindingObserver)
class _Flow:
    """The client role's observer for its one flow: contexts in the controller are keyed by it."""

    def __init__(self, role: ClientRole) -> None:
        self.role = role

    def flowFailure(self, reason: object) -> None:
        self.role._flowFailed(reason)


class ClientRole(service.MultiService):
    """
    A SIP UA's NAT traversal as a service: bind, resolve, (register), keep alive, recover.

    ``nextHop`` is an ``(IP, port)`` or a callable returning one (the embedded default asks its STUN role for
    the port it bound).  ``settings`` is a ``{domain: NATSettings}`` mapping as the controller takes it, and
    ``domain`` the key to use.  ``register`` is an AOR (``alice@example.com``) to REGISTER with the next hop
    after the address is known; its 200 OK's Flow-Timer (or Via ``keep``) becomes the keepalive interval.
    ``random`` feeds the RFC 5626 §4.5 backoff; ``backoffBase`` replaces its base-time (30 s).

    Attributes a test or an operator reads: ``publicAddress`` (the last resolved ``IPv4Address``/``IPv6Address``),
    ``flowTimer`` (what the registrar asked for), ``failures`` (flow failures so far), ``keepalivesStarted``.
    """

    def __init__(
        self,
        reactor: Any,
        nextHop: NextHop,
        settings: Mapping[str, NATSettings],
        domain: str,
        listen: Tuple[int, str] = (5060, ""),
        register: Optional[str] = None,
        random: Optional[Callable[[], float]] = None,
        controller: Any = None,
        backoffBase: Optional[float] = None,
    ) -> None:
        service.MultiService.__init__(self)
        from . import NATTraversalController, SharedDatagramProtocol

        if domain not in settings:
            raise InvalidSettingsError("domain", domain, f"no settings for it (have: {', '.join(sorted(settings))})")
        self.reactor = reactor
        self.domain = domain
        self._nextHop = nextHop
        self.controller = controller if controller is not None else NATTraversalController(dict(settings), reactor=reactor)
        self.aor = register
        self.registerClient = RegisterClient(reactor, register, nextHop) if register is not None else None
        self.shared = SharedDatagramProtocol(sipProtocol=self.registerClient, controller=self.controller, clock=reactor)
        self.listener = UDPListener(reactor, listen[0], self.shared, listen[1])
        self.listener.setServiceParent(self)
        self.observer = _Flow(self)
        self.backoff = Backoff(random, backoffBase)
        self.publicAddress: Union[IPv4Address, IPv6Address, None] = None
        self.flowTimer: Optional[int] = None
        self.failures = 0
        self.keepalivesStarted = 0
        self._retry: Any = None
        self._refresh: Any = None
        self._pending: Optional[defer.Deferred[Any]] = None
        self.ready: defer.Deferred[Any] = defer.Deferred()

    @property
    def nextHop(self) -> HostPort:
        hop = self._nextHop
        return hop() if callable(hop) else hop

    def startService(self) -> None:
        service.MultiService.startService(self)
        self._attempt()

    def _attempt(self) -> None:
        self._retry = None
        hop = self.nextHop
        d = self.controller.resolvePublicAddress(self.domain, self.shared, hop, observer=self.observer)
        self._pending = d
        d.addCallback(self._resolved, hop)
        d.addErrback(self._failed)

    def _resolved(self, address: Union[IPv4Address, IPv6Address], hop: HostPort) -> Any:
        self.publicAddress = address
        log.info(
            "public address {host}:{port} (next hop {nhost}:{nport})",
            host=address.host, port=address.port, nhost=hop[0], nport=hop[1],
            log_event="sipnat.client.publicAddress",
        )
        if self.registerClient is None:
            self._keepAlive(hop, None)
            return None
        d = self.registerClient.register((address.host, address.port))
        self._pending = d
        d.addCallback(self._registered, hop)
        return d

    def _registered(self, response: Any, hop: HostPort) -> None:
        interval = keepaliveInterval(response)
        self.flowTimer = interval
        granted = _grantedExpires(response, self.registerClient.expires if self.registerClient else 3600)
        log.info("registered {aor} for {expires} s; registrar keepalive interval {flowTimer}", aor=self.aor,
                 expires=granted, flowTimer=interval, log_event="sipnat.client.registered")
        self._keepAlive(hop, interval)
        self._scheduleRefresh(granted, hop)

    def _scheduleRefresh(self, granted: int, hop: HostPort) -> None:
        """Refresh the registration before it lapses (RFC 3261 §10.2.4); a failed refresh is a failed flow."""
        self._cancelRefresh()
        self._refresh = self.reactor.callLater(max(1.0, 0.9 * granted), self._refreshRegistration, hop)

    def _refreshRegistration(self, hop: HostPort) -> None:
        self._refresh = None
        if self.registerClient is None or self.publicAddress is None:
            return
        d = self.registerClient.register((self.publicAddress.host, self.publicAddress.port))
        self._pending = d
        d.addCallback(self._refreshed, hop)
        d.addErrback(self._refreshFailed)

    def _refreshed(self, response: Any, hop: HostPort) -> None:
        self._pending = None
        interval = keepaliveInterval(response)
        if interval != self.flowTimer:
            self.flowTimer = interval
            self.controller.refreshNATBinding(self.shared, self.observer, nextHop=hop, flowTimer=interval)
        granted = _grantedExpires(response, self.registerClient.expires if self.registerClient else 3600)
        self._scheduleRefresh(granted, hop)

    def _refreshFailed(self, reason: Failure) -> None:
        self._pending = None
        if reason.check(defer.CancelledError) or not self.running:
            return
        self.controller.freeResources(self.observer)
        self._flowFailed(reason)

    def _keepAlive(self, hop: HostPort, flowTimer: Optional[int]) -> None:
        self._pending = None
        started = self.controller.refreshNATBinding(self.shared, self.observer, nextHop=hop, flowTimer=flowTimer)
        self.keepalivesStarted += 1
        self.backoff.succeeded()
        log.info("keepalives toward {host}:{port}: {state}", host=hop[0], port=hop[1],
                 state="started" if started else "not needed", log_event="sipnat.client.keepalive.started")
        if not self.ready.called:
            self.ready.callback(self.publicAddress)

    def _failed(self, reason: Failure) -> None:
        self._pending = None
        if reason.check(defer.CancelledError) or not self.running:
            return
        log.warn("NAT traversal attempt failed: {why}", why=reason.getErrorMessage(), log_event="sipnat.client.failed")
        self._scheduleRetry()

    def _flowFailed(self, reason: object) -> None:
        self._cancelRefresh()
        # a refresh REGISTER in flight belongs to the failed flow: stop it, or its 200 would revive that flow
        pending, self._pending = self._pending, None
        if pending is not None and not pending.called:
            pending.cancel()
        if self.registerClient is not None:
            self.registerClient.stop()
        self.failures += 1
        why = reason.getErrorMessage() if isinstance(reason, Failure) else str(reason)
        log.warn("flow failure: {why}", why=why, log_event="sipnat.client.flowFailure")
        if self.running:
            self._scheduleRetry()

    def _scheduleRetry(self) -> None:
        if self._retry is not None and self._retry.active():
            return
        delay = self.backoff.nextDelay(allFlowsFailed=True)
        log.info("trying again in {delay:.1f} s (RFC 5626 §4.5 backoff)", delay=delay, log_event="sipnat.client.retry")
        self._retry = self.reactor.callLater(delay, self._attempt)

    def _cancelRefresh(self) -> None:
        if self._refresh is not None and self._refresh.active():
            self._refresh.cancel()
        self._refresh = None

    def stopService(self) -> Any:
        self._cancelRefresh()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        pending, self._pending = self._pending, None
        if pending is not None and not pending.called:
            pending.cancel()
        if self.registerClient is not None:
            self.registerClient.stop()
        self.controller.freeResources()
        return service.MultiService.stopService(self)


# ---- the edge role ---------------------------------------------------------------------------------------


@cache
def _registrarClasses() -> Tuple[type, type]:
    """``(EdgeRegisterProxy, ClockedRegistry)``, built on first use so ``twisted.protocols.sip`` loads late."""
    from twisted.protocols import sip

    class ClockedRegistry(sip.InMemoryRegistry):  # type: ignore[misc]
        """
        ``InMemoryRegistry`` whose expiry timers use the role's reactor (the stock one uses the global reactor
        and wall time) and can all be cancelled when the role stops.
        """

        def __init__(self, domain: str, reactor: Any) -> None:
            sip.InMemoryRegistry.__init__(self, domain)
            self.reactor = reactor

        def registerAddress(self, domainURL: Any, logicalURL: Any, physicalURL: Any) -> Any:
            if domainURL.host != self.domain or logicalURL.host != self.domain:
                return defer.fail(sip.RegistrationError(404))
            known = self.users.get(logicalURL.username)
            if known is not None and known[0].active():
                call = known[0]
                call.reset(3600)
            else:
                call = self.reactor.callLater(3600, self._expireRegistration, logicalURL.username)
            self.users[logicalURL.username] = (call, physicalURL)
            log.info("registered {aor} at {contact}", aor=logicalURL.toString(), contact=physicalURL.toString(),
                     log_event="sipnat.edge.registered")
            return defer.succeed(sip.Registration(3600, physicalURL))

        def _expireRegistration(self, username: str) -> None:
            # Twisted's version cancels the very call that is running it (AlreadyCalled), so the user was never
            # forgotten and every later REGISTER for it failed on the dead timer.
            entry = self.users.pop(username, None)
            if entry is not None and entry[0].active():
                entry[0].cancel()
            log.info("registration of {user} expired", user=username, log_event="sipnat.edge.expired")

        def unregisterAddress(self, domainURL: Any, logicalURL: Any, physicalURL: Any) -> Any:
            entry = self.users.get(logicalURL.username)
            if entry is None or entry[1] != physicalURL:
                return defer.fail(sip.RegistrationError(404))
            self._expireRegistration(logicalURL.username)
            return defer.succeed(sip.Registration(0, physicalURL))

        def getRegistrationInfo(self, userURI: Any) -> Any:
            if userURI.host != self.domain or userURI.username not in self.users:
                return defer.fail(LookupError("no such user"))
            call, url = self.users[userURI.username]
            return defer.succeed(sip.Registration(int(call.getTime() - self.reactor.seconds()), url))

        def clear(self) -> None:
            for call, _ in self.users.values():
                if call.active():
                    call.cancel()
            self.users.clear()

    class EdgeRegisterProxy(sip.RegisterProxy):  # type: ignore[misc]
        """
        ``RegisterProxy`` that, given a ``flowTimer``, adds ``Flow-Timer`` (RFC 5626 §5.4 / §8.2) to its 2xx
        REGISTER responses and answers an RFC 6223 ``;keep`` offer with ``;keep=N``.
        """

        flowTimer: Optional[int] = None

        def _fixupNAT(self, message: Any, sourcePeer: Any) -> None:
            # RFC 3581 §4: a bare ";rport" always gets the source port.  Twisted fills it only when the port
            # differs from the Via's, so behind a port-preserving NAT it stayed True and the response went to
            # port 1.
            sip.RegisterProxy._fixupNAT(self, message, sourcePeer)
            via = sip.parseViaHeader(message.headers["via"][0])
            if via.rport is True:
                via.received = sourcePeer[0]
                via.rport = sourcePeer[1]
                message.headers["via"][0] = via.toString()

        def datagramReceived(self, data: bytes, addr: Any) -> None:
            # Twisted's parser logs a traceback for non-UTF-8 input and raises for a message without a Via;
            # bytes off the wire get one log line here instead.
            if _utf8Prefix(data) != len(data):
                log.warn("dropped a non-UTF-8 datagram from {addr}", addr=addr)
                return
            try:
                sip.RegisterProxy.datagramReceived(self, data, addr)
            except Exception as e:  # noqa: BLE001
                log.warn("dropped a malformed SIP datagram from {addr}: {why!r}", addr=addr, why=e)
                self.messages[:] = []
                self.parser.reset()

        def deliverResponse(self, responseMessage: Any) -> None:
            if self.flowTimer is not None and 200 <= responseMessage.code < 300:
                cseq = responseMessage.headers.get("cseq", [""])[0]
                if cseq.split()[-1:] == ["REGISTER"]:
                    responseMessage.headers["flow-timer"] = [str(self.flowTimer)]
                    answerKeep(responseMessage, self.flowTimer)  # RFC 6223: ;keep offered -> ;keep=N
            sip.RegisterProxy.deliverResponse(self, responseMessage)

    return EdgeRegisterProxy, ClockedRegistry


class SIPStreamProtocol(protocol.Protocol):
    """
    Minimal SIP over TCP for the edge: enough for an RFC 5626 client to register and keep its flow alive.

    Messages are framed by ``twisted.protocols.sip.MessagesParser`` (header block + Content-Length); the
    wrapping ``SharedStreamProtocol`` has already taken out the CRLF pings (and answered them).  A REGISTER is
    entered in the same registry as the UDP side and answered ``200 OK`` (with ``Flow-Timer`` when configured);
    OPTIONS is answered ``200 OK``; any other request ``501 Not Implemented``; responses are ignored.  It is
    not a proxy: nothing is forwarded over TCP.
    """

    def __init__(self, registry: Any, flowTimer: Optional[int]) -> None:
        from twisted.protocols import sip

        self.registry = registry
        self.flowTimer = flowTimer
        self.parser = sip.MessagesParser(self._message)
        self._partialCharacter = b""

    def dataReceived(self, data: bytes) -> None:
        data = self._partialCharacter + data
        whole = _utf8Prefix(data)
        if whole is None:
            log.warn("closing SIP/TCP connection: non-UTF-8 data")
            transport: Any = self.transport
            transport.loseConnection()
            return
        # a character split between two reads waits for the rest of it
        self._partialCharacter = data[whole:]
        if whole:
            self.parser.dataReceived(data[:whole])

    def _message(self, message: Any) -> None:
        from twisted.protocols import sip

        if not isinstance(message, sip.Request):
            return
        response: Any = sip.Response(200)
        for name in ("via", "to", "from", "call-id", "cseq"):
            response.headers[name] = list(message.headers.get(name, []))
        transport: Any = self.transport
        if message.method == "REGISTER":
            peer = transport.getPeer()
            contact = message.headers.get("contact", [None])[0]
            try:
                _, toURL, _ = sip.parseAddress(message.headers["to"][0], clean=1)
                if contact is not None:
                    _, contactURL, params = sip.parseAddress(contact, host=peer.host, port=peer.port)
                    expires = params.get("expires", message.headers.get("expires", ["3600"])[0])
                    if str(expires).strip() == "0":  # RFC 3261 §10.2.2: removing a binding
                        self.registry.unregisterAddress(message.uri, toURL, contactURL).addErrback(lambda _: None)
                    else:
                        self.registry.registerAddress(message.uri, toURL, contactURL).addErrback(lambda _: None)
                        response.addHeader("contact", contactURL.toString())
                        response.addHeader("expires", "3600")
            except Exception:  # noqa: BLE001 - a malformed REGISTER gets 400, never a traceback
                response = sip.Response(400)
                for name in ("via", "to", "from", "call-id", "cseq"):
                    response.headers[name] = list(message.headers.get(name, []))
            if self.flowTimer is not None and response.code == 200:
                response.addHeader("flow-timer", str(self.flowTimer))
                answerKeep(response, self.flowTimer)
        elif message.method != "OPTIONS":
            response.code, response.phrase = 501, "Not Implemented"
        response.addHeader("content-length", "0")
        transport.write(response.toString().encode("utf-8"))


class _SIPStreamFactory(protocol.Factory):
    def __init__(self, registry: Any, flowTimer: Optional[int]) -> None:
        self.registry = registry
        self.flowTimer = flowTimer

    def buildProtocol(self, addr: Any) -> SIPStreamProtocol:
        p = SIPStreamProtocol(self.registry, self.flowTimer)
        p.factory = self
        return p


class EdgeRole(service.MultiService):
    """
    An RFC 5626 edge registrar: ``twisted.protocols.sip.RegisterProxy`` + in-memory registry, on UDP behind
    ``SharedDatagramProtocol(stunResponder=True)`` (so STUN keepalives on the SIP port are answered) and, when
    ``tcp`` is an endpoint description, SIP over TCP behind ``SharedStreamFactory(pongResponder=True)`` (so
    CRLFCRLF pings get a CRLF pong).  ``flowTimer`` adds ``Flow-Timer: N`` to REGISTER 200s.  ``host`` is what
    the proxy writes in its Via (default: the UDP interface, else 127.0.0.1).  ``reusePort`` binds the UDP
    socket with ``SO_REUSEPORT`` (``--workers``).
    """

    def __init__(
        self,
        reactor: Any,
        udp: Tuple[int, str] = (5060, ""),
        tcp: Optional[str] = None,
        domain: str = "localhost",
        host: Optional[str] = None,
        flowTimer: Optional[int] = None,
        reusePort: bool = False,
    ) -> None:
        service.MultiService.__init__(self)
        from . import SharedDatagramProtocol, SharedStreamFactory

        if flowTimer is not None and flowTimer <= 0:
            raise InvalidSettingsError("flow-timer", flowTimer, "must be a positive number of seconds")
        proxyClass, registryClass = _registrarClasses()
        self.reactor = reactor
        self.registry = registryClass(domain, reactor)
        self.proxy = proxyClass(host=host or udp[1] or "127.0.0.1", port=udp[0])
        self.proxy.flowTimer = flowTimer
        self.proxy.registry = self.registry
        self.proxy.locator = self.registry
        self.shared = SharedDatagramProtocol(sipProtocol=self.proxy, stunResponder=True, clock=reactor)
        self.udp = UDPListener(reactor, udp[0], self.shared, udp[1], reusePort=reusePort)
        self.udp.setServiceParent(self)
        self.tcp: Optional[_StreamListener] = None
        if tcp:
            factory = SharedStreamFactory(_SIPStreamFactory(self.registry, flowTimer), pongResponder=True)
            self.tcp = _StreamListener(reactor, tcp, factory)
            self.tcp.setServiceParent(self)

    def startService(self) -> None:
        service.MultiService.startService(self)
        if self.proxy.port == 0:
            self.proxy.port = self.udp.address()[1]
        log.info("edge registrar for {domain} on UDP {host}:{port}", domain=self.registry.domain,
                 host=self.udp.address()[0], port=self.udp.address()[1])

    def stopService(self) -> Any:
        self.registry.clear()
        return service.MultiService.stopService(self)


# ---- the stun role ---------------------------------------------------------------------------------------


class _STUNStreamProtocol(protocol.Protocol):
    """STUN over TCP (RFC 8489 §6.2.2): frames by the header's length, answers each request in order."""

    def __init__(self, role: STUNRole) -> None:
        self.role = role
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        transport: Any = self.transport
        self.buffer += data
        while len(self.buffer) >= 20:
            length = 20 + int.from_bytes(self.buffer[2:4], "big")
            if self.buffer[0] & 0xC0 or length > 65535:
                transport.loseConnection()
                return
            if len(self.buffer) < length:
                return
            message, self.buffer = self.buffer[:length], self.buffer[length:]
            peer, local = transport.getPeer(), transport.getHost()
            reply = self.role.responder.respond(message, (peer.host, peer.port), receivedOn=(local.host, local.port),
                                                now=self.role.reactor.seconds())
            if reply is not None:
                transport.write(reply.data)


class _STUNStreamFactory(protocol.Factory):
    def __init__(self, role: STUNRole) -> None:
        self.role = role

    def buildProtocol(self, addr: Any) -> _STUNStreamProtocol:
        return _STUNStreamProtocol(self.role)


class STUNRole(service.MultiService):
    """
    A standalone STUN Binding server (RFC 8489 §6.3): UDP on ``udp``, optionally TCP on the endpoint ``tcp``.

    ``alternate`` (``(IP, port)``) enables RFC 5780: the role also listens on the primary IP with the alternate
    port and on the alternate IP with both ports, and the responder adds OTHER-ADDRESS / RESPONSE-ORIGIN and
    honours CHANGE-REQUEST by answering from the socket it asks for.  The alternate IP must be an address of
    this machine, and the primary interface must be given (a wildcard cannot be an OTHER-ADDRESS).
    ``rateLimit`` is ``(perSourceRate, burst)`` or ``None`` to switch it off (on by default: 20/s, burst 40),
    so the server cannot be used to amplify floods.  ``reusePort`` binds every UDP socket with ``SO_REUSEPORT``
    (``--workers``).
    """

    def __init__(
        self,
        reactor: Any,
        udp: Tuple[int, str] = (3478, ""),
        tcp: Optional[str] = None,
        alternate: Optional[HostPort] = None,
        rateLimit: Optional[Tuple[float, int]] = (20.0, 40),
        software: Optional[str] = None,
        reusePort: bool = False,
    ) -> None:
        service.MultiService.__init__(self)
        from .core.responder import BindingResponder, RateLimit

        if alternate is not None and not udp[1]:
            raise InvalidSettingsError("alternate", alternate, "RFC 5780 needs the primary interface given (udp:PORT:interface=IP)")
        if alternate is not None and not udp[0]:
            raise InvalidSettingsError("alternate", alternate, "RFC 5780 needs a fixed primary port, not udp:0")
        self.reactor = reactor
        self.reusePort = reusePort
        limit = RateLimit(rateLimit[0], rateLimit[1]) if rateLimit is not None else None
        primary = (udp[1], udp[0]) if alternate is not None else None
        self.responder = BindingResponder(software=software, primary=primary, alternate=alternate, rateLimit=limit)
        self.sockets: Dict[HostPort, UDPListener] = {}
        self.listener = self._listen(udp[0], udp[1])
        if alternate is not None:
            for host, port in ((udp[1], alternate[1]), (alternate[0], udp[0]), (alternate[0], alternate[1])):
                self._listen(port, host)
        self.tcp: Optional[_StreamListener] = None
        if tcp:
            self.tcp = _StreamListener(reactor, tcp, _STUNStreamFactory(self))
            self.tcp.setServiceParent(self)

    def _listen(self, port: int, interface: str) -> UDPListener:
        from . import SharedDatagramProtocol

        shared = SharedDatagramProtocol(stunResponder=True, responder=self.responder, clock=self.reactor)
        listener = UDPListener(self.reactor, port, shared, interface, reusePort=self.reusePort)
        listener.setServiceParent(self)
        self.sockets[(interface, port)] = listener
        return listener

    def startService(self) -> None:
        service.MultiService.startService(self)
        # RFC 5780 CHANGE-REQUEST: each socket must be able to answer from any of the others.
        transports = {address: listener.port for address, listener in self.sockets.items()}
        for listener in self.sockets.values():
            listener.protocol.alternateSockets.update(transports)  # type: ignore[attr-defined]
        host, port = self.address()
        log.info("STUN server on UDP {host}:{port}{alt}", host=host, port=port,
                 alt=" with RFC 5780 alternates" if len(self.sockets) > 1 else "")

    def stopService(self) -> Any:
        for listener in self.sockets.values():
            listener.protocol.alternateSockets.clear()  # type: ignore[attr-defined]
        return service.MultiService.stopService(self)

    def address(self) -> HostPort:
        """The primary socket's ``(host, port)`` while running."""
        return self.listener.address()
