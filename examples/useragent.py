"""
A Twisted SIP user agent behind a NAT, using twisted_sipnat the way a real SIP stack would.

    python examples/useragent.py --registrar 127.0.0.1:5060 --aor alice@example.com

against, for example, the edge role::

    twistd -n sipnat edge --udp udp:5060:interface=127.0.0.1 --tcp none --domain example.com --flow-timer 10

What it does, in order (see docs/sequence.rst):

1. binds one UDP socket: a ``SharedDatagramProtocol`` wrapping the UA (a ``twisted.protocols.sip.Base``), so
   STUN and SIP share it;
2. learns its public address with ``resolvePublicAddress`` (the registrar answers STUN on its SIP port, so no
   separate STUN server is needed: ``stunServers=()``);
3. REGISTERs that address as its Contact, offering RFC 6223 ``;keep`` on its Via;
4. after the 200 OK calls ``refreshNATBinding`` with the registrar's Flow-Timer (or Via ``keep``), if any;
5. on ``flowFailure`` waits the RFC 5626 §4.5 backoff and goes back to 2;
6. on shutdown (Ctrl-C) unregisters (best effort) and frees every controller resource and the socket.

``--count N`` exits after N answered keepalives (used by the tests).
"""

from __future__ import annotations

import argparse
import secrets
import sys
from typing import Any, Callable, List, Optional, Tuple

from twisted.internet import defer, task
from twisted.logger import Logger, globalLogBeginner, globalLogPublisher, textFileLogObserver
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_sipnat import IBindingObserver, NATSettings, NATTraversalController, SharedDatagramProtocol
from twisted_sipnat.core.backoff import Backoff
from twisted_sipnat.core.sipheaders import addKeepToVia, keepaliveInterval

HostPort = Tuple[str, int]
log = Logger(namespace="useragent")


class RegisterFailed(Exception):
    def __init__(self, code: Optional[int], phrase: str) -> None:
        super().__init__(f"REGISTER failed: {code or ''} {phrase}".strip())
        self.code = code


def makeUserAgentClass() -> type:
    """Build the UA class on first use: ``twisted.protocols.sip`` imports the reactor when it is imported."""
    from twisted.protocols import sip

    @implementer(IBindingObserver)
    class UserAgent(sip.Base):  # type: ignore[misc]
        """A registering UA: one flow, one registration."""

        T1, T2, TIMER_F = 0.5, 4.0, 32.0

        def __init__(self, reactor: Any, controller: NATTraversalController, aor: str, registrar: HostPort,
                     expires: int = 300, backoff: Optional[Backoff] = None) -> None:
            sip.Base.__init__(self)
            self.reactor = reactor
            self.controller = controller
            self.user, self.domain = aor.removeprefix("sip:").split("@", 1)
            self.registrar = registrar
            self.expires = expires
            self.backoff = backoff or Backoff()
            #: How long to wait before trying again; the backoff by default (tests shorten it).
            self.retryDelay: Callable[[], float] = self.backoff.nextDelay
            self.shared: Optional[SharedDatagramProtocol] = None
            self.callId = secrets.token_hex(8) + "@useragent"
            self.cseq = 0
            self.publicAddress: Any = None
            self.flowTimer: Optional[int] = None
            self.registrations = 0
            self.failures = 0
            self._transaction: Optional[Tuple[int, defer.Deferred[Any], List[Any]]] = None
            self._retry: Any = None
            self._running: Optional[defer.Deferred[Any]] = None
            self.stopped = False

        # -- the cycle: resolve, register, keep alive ------------------------------------------------------

        def start(self, shared: SharedDatagramProtocol) -> None:
            self.shared = shared
            self._cycle()

        def _cycle(self) -> None:
            self._retry = None
            d = defer.ensureDeferred(self._resolveAndRegister())
            self._running = d
            d.addErrback(self._attemptFailed)

        async def _resolveAndRegister(self) -> None:
            assert self.shared is not None
            self.publicAddress = await self.controller.resolvePublicAddress(None, self.shared, self.registrar,
                                                                            observer=self)
            log.info("public address {host}:{port}", host=self.publicAddress.host, port=self.publicAddress.port)
            response = await self.register(self.expires)
            self.registrations += 1
            self.backoff.succeeded()
            self.flowTimer = keepaliveInterval(response)
            started = self.controller.refreshNATBinding(self.shared, self, nextHop=self.registrar,
                                                        flowTimer=self.flowTimer)
            log.info("registered {user}@{domain}; keepalives {state} (Flow-Timer {flowTimer})", user=self.user,
                     domain=self.domain, state="started" if started else "not needed", flowTimer=self.flowTimer)

        def _attemptFailed(self, reason: Failure) -> None:
            if self.stopped or reason.check(defer.CancelledError):
                return
            log.warn("attempt failed: {why}", why=reason.getErrorMessage())
            self._scheduleRetry()

        def flowFailure(self, reason: object) -> None:
            """IBindingObserver: the keepalives found the flow dead; re-register after the backoff."""
            self.failures += 1
            why = reason.getErrorMessage() if isinstance(reason, Failure) else str(reason)
            log.warn("flow failure: {why}", why=why)
            if not self.stopped:
                self._scheduleRetry()

        def _scheduleRetry(self) -> None:
            if self._retry is not None and self._retry.active():
                return
            delay = self.retryDelay()
            log.info("registering again in {delay:.1f} s", delay=delay)
            self._retry = self.reactor.callLater(delay, self._cycle)

        # -- REGISTER over UDP (RFC 3261 non-INVITE client transaction, Timers E and F) ----------------------

        def register(self, expires: int) -> defer.Deferred[Any]:
            self.cseq += 1
            local = self.transport.getHost()
            public = self.publicAddress
            request = sip.Request("REGISTER", f"sip:{self.domain}")
            via = sip.Via(local.host, local.port, rport=None, branch="z9hG4bK" + secrets.token_hex(8))
            request.addHeader("via", via.toString())
            request.addHeader("max-forwards", "70")
            request.addHeader("to", f"<sip:{self.user}@{self.domain}>")
            request.addHeader("from", f"<sip:{self.user}@{self.domain}>;tag={secrets.token_hex(4)}")
            request.addHeader("call-id", self.callId)
            request.addHeader("cseq", f"{self.cseq} REGISTER")
            request.addHeader("contact", f"<sip:{self.user}@{public.host}:{public.port}>")
            request.addHeader("expires", str(expires))
            request.addHeader("content-length", "0")
            addKeepToVia(request)  # RFC 6223: offer keepalives, the registrar may answer keep=N
            d: defer.Deferred[Any] = defer.Deferred(lambda _: self._endTransaction())
            timers: List[Any] = []
            self._transaction = (self.cseq, d, timers)
            destination = sip.URL(host=self.registrar[0], port=self.registrar[1])

            def send(interval: float) -> None:
                self.sendMessage(destination, request)
                timers[:1] = [self.reactor.callLater(interval, send, min(2 * interval, self.T2))]

            timers.append(None)
            timers.append(self.reactor.callLater(self.TIMER_F, self._timedOut))
            send(self.T1)
            return d

        def _endTransaction(self) -> Optional[defer.Deferred[Any]]:
            if self._transaction is None:
                return None
            _, d, timers = self._transaction
            self._transaction = None
            for call in timers:
                if call is not None and call.active():
                    call.cancel()
            return d

        def _timedOut(self) -> None:
            d = self._endTransaction()
            if d is not None:
                d.errback(RegisterFailed(None, "no response (Timer F)"))

        def datagramReceived(self, data: bytes, addr: Any) -> None:
            try:
                data.decode("utf-8")
                sip.Base.datagramReceived(self, data, addr)
            except Exception as e:  # noqa: BLE001 - one bad datagram must not stop the UA
                log.warn("dropped a datagram from {addr}: {why!r}", addr=addr, why=e)
                self.messages[:] = []

        def handle_response(self, message: Any, addr: Any) -> None:
            if self._transaction is None or message.code < 200:
                return
            cseq = message.headers.get("cseq", [""])[0].split()
            if message.headers.get("call-id", [None])[0] != self.callId or cseq[:1] != [str(self._transaction[0])]:
                return
            d = self._endTransaction()
            assert d is not None
            if message.code < 300:
                d.callback(message)
            else:
                d.errback(RegisterFailed(message.code, message.phrase))

        def handle_request(self, message: Any, addr: Any) -> None:
            # A UA that only registers answers requests with 501 (it is not the point of the example).
            self.deliverResponse(self.responseFromRequest(501, message))

        # -- shutdown ------------------------------------------------------------------------------------------

        async def stop(self) -> None:
            """Unregister (best effort, 2 s at most) and free every resource."""
            self.stopped = True
            if self._retry is not None and self._retry.active():
                self._retry.cancel()
            if self._running is not None and not self._running.called:
                self._running.cancel()
            self.controller.freeResources(self)
            if self.registrations and self.publicAddress is not None and self.transport is not None:
                d = self.register(0)
                d.addTimeout(2.0, self.reactor)
                try:
                    await d
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass
            self._endTransaction()

    return UserAgent


def parseArguments(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A Twisted SIP UA that registers through a NAT and keeps alive.")
    parser.add_argument("--registrar", default="127.0.0.1:5060", help="registrar / edge proxy IP:PORT")
    parser.add_argument("--aor", default="alice@example.com", help="address of record user@domain")
    parser.add_argument("--listen", default="127.0.0.1:0", help="local IP:PORT of the SIP socket")
    parser.add_argument("--interval", type=float, default=25.0, help="keepalive interval without a Flow-Timer")
    parser.add_argument("--count", type=int, default=None, help="exit after this many answered keepalives")
    return parser.parse_args(argv)


async def run(reactor: Any, args: argparse.Namespace) -> None:
    registrar = args.registrar.rsplit(":", 1)
    listenHost, listenPort = args.listen.rsplit(":", 1)
    controller = NATTraversalController(NATSettings(udpKeepaliveInterval=args.interval), reactor=reactor)
    agent = makeUserAgentClass()(reactor, controller, args.aor, (registrar[0], int(registrar[1])))
    shared = SharedDatagramProtocol(sipProtocol=agent, controller=controller)
    port = reactor.listenUDP(int(listenPort), shared, interface=listenHost)
    done: defer.Deferred[None] = defer.Deferred()
    answered: List[Any] = []

    def countKeepalives(event: Any) -> None:
        if event.get("sipnat_event") == "keepalive.answered" and event.get("observer") is agent:
            answered.append(event)
            print(f"keepalive {len(answered)} answered", flush=True)
            if args.count is not None and len(answered) >= args.count and not done.called:
                done.callback(None)

    globalLogPublisher.addObserver(countKeepalives)
    stopping = reactor.addSystemEventTrigger("before", "shutdown", lambda: defer.ensureDeferred(agent.stop()))
    agent.start(shared)
    try:
        await done  # Ctrl-C stops the reactor: the shutdown trigger above cleans up
        print(f"registered {args.aor} as {agent.publicAddress.host}:{agent.publicAddress.port}, "
              f"Flow-Timer {agent.flowTimer}", flush=True)
    finally:
        globalLogPublisher.removeObserver(countKeepalives)
        reactor.removeSystemEventTrigger(stopping)
        await agent.stop()
        await port.stopListening()


def main(argv: Optional[List[str]] = None) -> None:
    args = parseArguments(sys.argv[1:] if argv is None else argv)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, args)))


if __name__ == "__main__":
    main()
