"""
The client role's RFC 3261 REGISTER client: one registration, sent over the shared SIP socket.

It is the ``sipProtocol`` of a :class:`~twisted_sipnat.protocols.SharedDatagramProtocol`, so its REGISTERs leave
from the very socket whose NAT binding the controller keeps alive, and its ``transport`` writes through the
socket arbitration.
"""

from __future__ import annotations

import re
import secrets
from typing import Any, Callable, Optional, Tuple, Union

from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.protocols import sip

from ..core.sipheaders import addKeepToVia
from ..errors import InvalidSettingsError, RegistrationError
from .sipmessages import parseDatagram

__all__ = ["RegisterClient", "grantedExpires"]

HostPort = Tuple[str, int]
NextHop = Union[HostPort, Callable[[], HostPort]]

log = Logger(namespace="twisted_sipnat.client")


def grantedExpires(response: Any, asked: int) -> int:
    """The registration lifetime a 2xx granted: Contact ``expires=`` (RFC 3261 §10.2.4), else Expires."""
    for contact in response.headers.get("contact", []):
        match = re.search(r";\s*expires\s*=\s*([0-9]{1,9})", contact, re.IGNORECASE)
        if match:
            return int(match.group(1))
    for value in response.headers.get("expires", []):
        if value.strip().isdigit() and len(value.strip()) < 10:
            return int(value.strip())
    return asked


def _hostText(host: str) -> str:
    """A host as it goes in a SIP URI or Via: IPv6 literals in brackets (RFC 3261 §25.1)."""
    return f"[{host}]" if ":" in host else host


class RegisterClient(protocol.DatagramProtocol):
    """
    The smallest useful UDP registering UA: sends REGISTER to the next hop and reports the final response.

    Retransmission follows RFC 3261 §17.1.2.2 (Timer E from T1 = 0.5 s doubling to T2 = 4 s, Timer F = 32 s);
    a 2xx fires the Deferred of :meth:`register` with the parsed ``twisted.protocols.sip.Response``, anything
    >= 300 or Timer F errbacks :class:`RegistrationError`.  The top Via offers RFC 6223 ``;keep`` and RFC 3581
    ``rport``.  ``nextHop`` is an ``(IP, port)`` or a callable returning one.
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
        localHost = str(local.host) if local is not None else ""
        viaHost = localHost if local is not None and localHost not in ("0.0.0.0", "::") else contact[0]
        viaPort = local.port if local is not None else contact[1]
        lines = [
            f"REGISTER sip:{domain} SIP/2.0",
            f"Via: SIP/2.0/UDP {_hostText(viaHost)}:{viaPort};branch=z9hG4bK{secrets.token_hex(8)};rport",
            "Max-Forwards: 70",
            f"To: <{self.aor}>",
            f"From: <{self.aor}>;tag={secrets.token_hex(4)}",
            f"Call-ID: {self.callId}",
            f"CSeq: {self.cseq} REGISTER",
            f"Contact: <sip:{user}@{_hostText(contact[0])}:{contact[1]}>",
            f"Expires: {self.expires}",
            "Content-Length: 0",
            "",
            "",
        ]
        data = addKeepToVia("\r\n".join(lines).encode("utf-8"))
        d: defer.Deferred[Any] = defer.Deferred(lambda _: self.stop())
        retransmit = self.reactor.callLater(self.T1, self._retransmit, self.T1)
        giveUp = self.reactor.callLater(self.TIMER_F, self._timeout)
        self._pending = (self.cseq, d, retransmit, giveUp, data)
        self._write(data)
        log.info("REGISTER {aor} sent to {host}:{port}", aor=self.aor, host=self.nextHop[0], port=self.nextHop[1])
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
        messages = parseDatagram(data)
        if messages is None:
            log.warn("dropped a SIP datagram from {addr} that is not UTF-8 or does not parse", addr=addr)
            return
        for message in messages:
            if isinstance(message, sip.Response):
                self._response(message)

    def _response(self, response: Any) -> None:
        # RFC 3261 §17.1.3: a response matches the client transaction by its Call-ID and CSeq (one REGISTER at a
        # time, so the branch is implied).
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
