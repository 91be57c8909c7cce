"""
SIP over TCP at the edge: enough for an RFC 5626 client to register and keep its flow alive.

It sits behind :class:`~twisted_sipnat.protocols.SharedStreamFactory` with ``pongResponder=True``, which has
already taken the CRLFCRLF pings out of the stream (and answered them, RFC 5626 §4.4.1).

``twisted.protocols.sip`` imports the global reactor when it loads, so importing this module does too.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import protocol
from twisted.logger import Logger
from twisted.protocols import sip

from ..core.sipheaders import answerKeep
from .registrar import GRANTED_EXPIRES
from .sipmessages import responseTo, utf8Prefix

__all__ = ["SIPStreamFactory", "SIPStreamProtocol"]

log = Logger(namespace="twisted_sipnat.edge")


class SIPStreamProtocol(protocol.Protocol):
    """
    Minimal SIP over TCP for the edge.

    Messages are framed by ``twisted.protocols.sip.MessagesParser`` (header block + Content-Length).  A REGISTER
    is entered in ``registry`` (the same one as the UDP side) and answered ``200 OK`` (with ``Flow-Timer`` when
    configured); a Contact ``expires=0`` or ``Expires: 0`` removes the binding (RFC 3261 §10.2.2); OPTIONS is
    answered ``200 OK``; any other request ``501 Not Implemented``; responses are ignored.  It is not a proxy:
    nothing is forwarded over TCP.
    """

    def __init__(self, registry: Any, flowTimer: Optional[int]) -> None:
        self.registry = registry
        self.flowTimer = flowTimer
        self.parser = sip.MessagesParser(self._message)
        self._partialCharacter = b""

    def dataReceived(self, data: bytes) -> None:
        data = self._partialCharacter + data
        whole = utf8Prefix(data)
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
        if not isinstance(message, sip.Request):
            return
        transport: Any = self.transport
        if message.method == "REGISTER":
            response = self._register(message, transport.getPeer())
        elif message.method == "OPTIONS":
            response = responseTo(message, 200)
        else:
            response = responseTo(message, 501)
        response.addHeader("content-length", "0")
        transport.write(response.toString().encode("utf-8"))

    def _register(self, message: Any, peer: Any) -> Any:
        """RFC 3261 §10.3, in the small: add or remove the binding, answer 200 (or 400 for a malformed one)."""
        response = responseTo(message, 200)
        contact = message.headers.get("contact", [None])[0]
        try:
            _, toURL, _ = sip.parseAddress(message.headers["to"][0], clean=1)
            if contact is not None:
                _, contactURL, params = sip.parseAddress(contact, host=peer.host, port=peer.port)
                expires = params.get("expires", message.headers.get("expires", [str(GRANTED_EXPIRES)])[0])
                if str(expires).strip() == "0":  # RFC 3261 §10.2.2: removing a binding
                    self.registry.unregisterAddress(message.uri, toURL, contactURL).addErrback(lambda _: None)
                else:
                    self.registry.registerAddress(message.uri, toURL, contactURL).addErrback(lambda _: None)
                    response.addHeader("contact", contactURL.toString())
                    response.addHeader("expires", str(GRANTED_EXPIRES))
        except Exception:  # noqa: BLE001 - a malformed REGISTER gets 400, never a traceback
            return responseTo(message, 400)
        if self.flowTimer is not None:
            response.addHeader("flow-timer", str(self.flowTimer))
            answerKeep(response, self.flowTimer)
        return response


class SIPStreamFactory(protocol.Factory):
    """Builds a :class:`SIPStreamProtocol` per connection, all sharing one registry."""

    noisy = False

    def __init__(self, registry: Any, flowTimer: Optional[int]) -> None:
        self.registry = registry
        self.flowTimer = flowTimer

    def buildProtocol(self, addr: Any) -> SIPStreamProtocol:
        p = SIPStreamProtocol(self.registry, flowTimer=self.flowTimer)
        p.factory = self
        return p
