"""
The edge registrar: Twisted's ``sip.RegisterProxy`` and ``sip.InMemoryRegistry``, with what an RFC 5626 edge
adds to them and the fixes they need.

- :class:`ClockedRegistry`: expiry timers on the role's reactor (Twisted's use the global reactor and wall time),
  all cancelled when the role stops, and an expiry that really forgets the user.
- :class:`EdgeRegisterProxy`: ``Flow-Timer`` on REGISTER 2xx (RFC 5626 §5.4 / §8.2), the RFC 6223 ``;keep``
  answer, a bare ``;rport`` always filled (RFC 3581 §4), and no traceback for a malformed datagram.

``twisted.protocols.sip`` imports the global reactor when it loads, so importing this module does too.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.protocols import sip

from ..core.sipheaders import answerKeep
from .sipmessages import utf8Prefix

__all__ = ["ClockedRegistry", "EdgeRegisterProxy", "GRANTED_EXPIRES"]

log = Logger(namespace="twisted_sipnat.edge")

#: What every registration is granted, whatever it asked (``RegisterProxy`` grants 3600 s).
GRANTED_EXPIRES = 3600


class ClockedRegistry(sip.InMemoryRegistry):  # type: ignore[misc]
    """
    ``InMemoryRegistry`` whose expiry timers use the role's reactor (the stock one uses the global reactor
    and wall time) and can all be cancelled when the role stops (:meth:`clear`).
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
            call.reset(GRANTED_EXPIRES)
        else:
            call = self.reactor.callLater(GRANTED_EXPIRES, self._expireRegistration, logicalURL.username)
        self.users[logicalURL.username] = (call, physicalURL)
        log.info("registered {aor} at {contact}", aor=logicalURL.toString(), contact=physicalURL.toString(),
                 sipnat_event="sipnat.edge.registered")
        return defer.succeed(sip.Registration(GRANTED_EXPIRES, physicalURL))

    def _expireRegistration(self, username: str) -> None:
        # Twisted's version cancels the very call that is running it (AlreadyCalled), so the user was never
        # forgotten and every later REGISTER for it failed on the dead timer.
        entry = self.users.pop(username, None)
        if entry is not None and entry[0].active():
            entry[0].cancel()
        log.info("registration of {user} expired", user=username, sipnat_event="sipnat.edge.expired")

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
        """Forget every registration and cancel its expiry timer."""
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
    registry: Any = None  # the edge's ClockedRegistry (RegisterProxy's own attribute, typed None there)
    locator: Any = None

    def _fixupNAT(self, message: Any, sourcePeer: Any) -> None:
        # twisted.protocols.sip.Base calls this hook for every request it receives
        self.fixupNAT(message, sourcePeer)

    def fixupNAT(self, message: Any, sourcePeer: Any) -> None:
        """Stamp the top Via with ``received`` and ``rport`` for ``sourcePeer`` (RFC 3261 §18.2.1, RFC 3581 §4)."""
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
        if utf8Prefix(data) != len(data):
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
