"""
The edge's SIP message handling, sans-IO: what to do with each message received, as a stateless proxy
(RFC 3261 §16.11) in front of the :class:`~twisted_sipnat.core.registrar.Registrar`.

Theory of operation
===================

:meth:`EdgeProxy.receive` takes the bytes of one message (a datagram, or one message a stream framer handed
out), the :class:`~twisted_sipnat.core.registrar.Flow` it came in on and ``now``, and returns an
:class:`Outcome`: what to send over which flow, and whether the connection must be closed.

Requests:

- a malformed one (:func:`~twisted_sipnat.core.sip.parse`, :func:`~twisted_sipnat.core.sip.checkRequest`, a top
  Via that does not parse) gets the 400 of :func:`~twisted_sipnat.core.sip.badRequest` when one can be formed;
  on a stream the connection is then closed (``Outcome.close``): nothing after it can be trusted, and a
  connection left open but deaf is the worst failure an edge can have;
- the top Via is stamped with ``received`` / ``rport`` (RFC 3261 §18.2.1, RFC 3581 §4) on every transport;
- a top ``Route`` naming the edge is removed (loose routing, §16.4);
- REGISTER goes to the registrar (which answers 404 for a foreign domain);
- a request for the edge itself (no user part in a served domain, or the edge's own host): OPTIONS is answered
  200; ACK is absorbed; other methods of RFC 3261 and its extensions get 405 with ``Allow``, unknown ones 501;
- ``Proxy-Require`` names an extension this proxy does not implement: 420 with ``Unsupported`` (§16.3 step 5);
- a request for a user of a served domain is proxied to the best current binding (highest q, newest): 404 when
  there is none, 430 Flow Failed when its RFC 5626 outbound flow is closed (RFC 5626 §5.3), 480 when a
  non-outbound binding's connection is closed; ``Max-Forwards: 0`` is 483 (§16.3 step 3);
- a request whose Request-URI is a registered Contact (an in-dialog request sent through the edge as outbound
  proxy) goes to that binding's flow the same way; anything else (a foreign domain) gets 404.

Proxying (§16.6): the Request-URI becomes the binding's Contact URI; Max-Forwards is decremented (70 is added
when it is missing); a Via with the edge's sent-by for the outgoing transport and a ``z9hG4bK`` branch goes on
top; the request goes over the flow the registration came in on (RFC 5626 §5.3: the NAT's public side, the only
address an edge can reach).  The branch is stateless (§16.11): a MAC over the incoming top Via (as stamped) and
the connection serial of the incoming flow, so a retransmission, the ACK of a non-2xx and a CANCEL get the same
branch as their INVITE, and a response can be checked without state.

Responses: the top Via must be one of ours, with a MAC that matches the Via below it (so the edge cannot be
made to reflect a forged response at a third party); it is removed and the response goes to the next Via
(§18.2.2: its ``received`` / ``rport``, else its sent-by) over UDP, or over the very connection the request came
in on for TCP.  Anything else is dropped.  ACK and CANCEL are forwarded statelessly like any other request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional

from .addresses import normalHost
from .registrar import Binding, Flow, Registrar, aorOf
from .sip import (
    DEFAULT_MAX_MESSAGE_SIZE,
    SIPURI,
    Headers,
    NameAddress,
    Request,
    Response,
    SIPParseError,
    Via,
    badRequest,
    checkRequest,
    parse,
    responseTo,
    setTopVia,
)

__all__ = ["BRANCH_PREFIX", "DEFAULT_SIP_BURST", "DEFAULT_SIP_RATE", "EdgeProxy", "KNOWN_METHODS", "Outcome", "Send"]

#: The per-source SIP rate limit's defaults (messages per second, burst): generous, since behind a carrier-grade
#: NAT hundreds of user agents share one source address, and each REGISTER refresh, call and MESSAGE counts.
DEFAULT_SIP_RATE = 200.0
DEFAULT_SIP_BURST = 400

#: RFC 3261 §8.1.1.7 magic cookie, then a mark of this proxy's stateless branches.
BRANCH_PREFIX = "z9hG4bK-sn"
#: Methods of RFC 3261 and its common extensions (RFC 3262, 3265/6665, 3311, 3428, 3515, 3903, 6086): for the
#: edge itself these get 405, anything else 501 (RFC 3261 §21.4.6, §21.5.2).
KNOWN_METHODS = frozenset(
    {"ACK", "BYE", "CANCEL", "INFO", "INVITE", "MESSAGE", "NOTIFY", "OPTIONS", "PRACK", "PUBLISH", "REFER",
     "REGISTER", "SUBSCRIBE", "UPDATE"}
)
#: What the edge itself accepts (the Allow of its 405 and OPTIONS 200).
ALLOW = "REGISTER, OPTIONS"
_DEFAULT_MAX_FORWARDS = 70


@dataclass(frozen=True)
class Send:
    """Bytes to write over ``flow`` (UDP: to its address; TCP: on its connection)."""

    data: bytes
    flow: Flow


@dataclass
class Outcome:
    """
    What one message led to.  ``kind``: ``"answered"`` (a request answered or forwarded), ``"malformed"`` (a 400
    or nothing), ``"response"`` (a response forwarded), ``"dropped"`` (a response or ACK with nowhere to go).
    ``close``: the stream must be closed after the sends.  ``registered`` / ``removed``: registrar changes.
    """

    kind: str
    sends: List[Send] = field(default_factory=list)
    close: bool = False
    reason: Optional[str] = None
    registered: List[Binding] = field(default_factory=list)
    removed: List[Binding] = field(default_factory=list)


class _Answer(Exception):
    def __init__(self, code: int, reason: Optional[str] = None, **headers: str) -> None:
        super().__init__(code)
        self.code = code
        self.reason = reason
        self.headers = headers


class EdgeProxy:
    """
    The edge's SIP side: ``registrar``, and the stateless proxy above it (module docstring).  ``host`` is the
    edge's sent-by host; ``ports`` its port per transport (``{"udp": 5060, "tcp": 5060, "tls": 5061}``); ``secret`` keys the
    branch MAC (random by default: branches of one process only, which is all a stateless proxy sends).
    """

    def __init__(
        self,
        registrar: Registrar,
        *,
        host: str,
        ports: Optional[Mapping[str, int]] = None,
        secret: Optional[bytes] = None,
        maxMessageSize: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self.registrar = registrar
        self.host = host
        self.ports: Dict[str, int] = dict(ports or {"udp": 5060})
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self.maxMessageSize = maxMessageSize

    @property
    def flowTimer(self) -> Optional[int]:
        return self.registrar.flowTimer

    # -- entry point --------------------------------------------------------------------------------------------

    def receive(self, data: bytes, flow: Flow, now: float, *, stream: bool = False) -> Outcome:
        """Handle one message from ``flow`` (module docstring)."""
        try:
            message = parse(data, stream=stream, maxSize=self.maxMessageSize)
            if isinstance(message, Response):
                return self._response(message)
            checkRequest(message)
            via = Via.parse(message.headers.get("Via") or "")
        except SIPParseError as e:
            answer = badRequest(e)
            # A response without Via has no way back (RFC 3261 §18.2.2): only a 400 that echoes one is sent.
            sends = [Send(answer.toBytes(), flow)] if answer is not None and "Via" in answer.headers else []
            return Outcome("malformed", sends, close=stream, reason=e.reason)
        setTopVia(message.headers, via.receivedFrom(flow.host, flow.port))
        try:
            return self._request(message, flow, now)
        except _Answer as e:
            if message.method == "ACK":
                return Outcome("dropped", reason=f"ACK answered {e.code}")
            response = responseTo(message, e.code, e.reason)
            for name, value in e.headers.items():
                response.headers.add(name.replace("_", "-"), value)
            return Outcome("answered", [Send(response.toBytes(), flow)], reason=str(e.code))
        except SIPParseError as e:
            if message.method == "ACK":
                return Outcome("dropped", reason=e.reason)
            response = responseTo(message, 400, f"Bad Request ({e.reason[:60]})")
            return Outcome("malformed", [Send(response.toBytes(), flow)], close=stream, reason=e.reason)

    # -- requests ---------------------------------------------------------------------------------------------

    def _request(self, request: Request, flow: Flow, now: float) -> Outcome:
        if request.method == "REGISTER":
            result = self.registrar.register(request, flow, now)
            return Outcome("answered", [Send(result.response.toBytes(), flow)], reason=str(result.response.code),
                           registered=result.registered, removed=result.removed)
        try:
            target = SIPURI.parse(request.uri)
        except SIPParseError:
            raise _Answer(416) from None
        self._popOwnRoute(request)
        if self._isSelf(target):
            return self._forSelf(request, flow)
        proxyRequire = request.headers.getAll("Proxy-Require")
        if proxyRequire:
            raise _Answer(420, Unsupported=", ".join(proxyRequire))
        if self.registrar.serves(target.host):
            bindings = self.registrar.lookup(aorOf(target), now)
            if not bindings:
                raise _Answer(404, "Not Found (not registered)")
            binding = bindings[0]
        else:
            found = self.registrar.byContact(target, now)
            if found is None:
                raise _Answer(404, "Not Found (not a domain of this edge)")
            binding = found
        if binding.flowGone:
            if binding.outbound:
                raise _Answer(430)  # RFC 5626 §5.3
            raise _Answer(480, "Temporarily Unavailable (connection closed)")
        return Outcome("answered", [Send(self._forwarded(request, binding, flow), binding.flow)], reason="proxied")

    def _isSelf(self, uri: SIPURI) -> bool:
        ownHost = normalHost(uri.host.lower()) == normalHost(self.host.lower())
        if uri.user is None:
            return ownHost or self.registrar.serves(uri.host)
        return ownHost and not self.registrar.serves(uri.host)

    def _popOwnRoute(self, request: Request) -> None:
        routes = request.headers.getAll("Route")
        if not routes:
            return
        try:
            top = NameAddress.parse(routes[0]).sipURI
        except SIPParseError:
            return
        if top.user is None and self._isSelf(top) or normalHost(top.host.lower()) == normalHost(self.host.lower()):
            request.headers.popFirst("Route")

    def _forSelf(self, request: Request, flow: Flow) -> Outcome:
        method = request.method
        if method == "ACK":
            return Outcome("dropped", reason="ACK for the edge")
        if method == "OPTIONS":
            response = responseTo(request, 200)
            response.headers.add("Allow", ALLOW)
            response.headers.add("Supported", "outbound")
            return Outcome("answered", [Send(response.toBytes(), flow)], reason="200")
        if method == "CANCEL":
            raise _Answer(481)  # no transaction of the edge's own to cancel (§9.2)
        if method in KNOWN_METHODS:
            raise _Answer(405, Allow=ALLOW)
        raise _Answer(501)

    def _forwarded(self, request: Request, binding: Binding, flow: Flow) -> bytes:
        """The copy of ``request`` for ``binding`` (RFC 3261 §16.6 steps 1-8)."""
        maxForwards = request.headers.get("Max-Forwards")
        if maxForwards is not None:
            if not maxForwards.strip().isdigit():
                raise SIPParseError("malformed Max-Forwards")
            hops = int(maxForwards)
            if hops == 0:
                raise _Answer(483)
            request.headers.set("Max-Forwards", str(min(hops, 255) - 1))
        else:
            request.headers.add("Max-Forwards", str(_DEFAULT_MAX_FORWARDS))
        incoming = request.headers.get("Via") or ""
        transport = binding.flow.transport
        ours = f"SIP/2.0/{transport.upper()} {_hostText(self.host)}:{self.ports.get(transport, 5060)}"
        branch = f"{BRANCH_PREFIX}{flow.connection:x}.{self._mac(flow.connection, incoming)}"
        headers = Headers([("Via", f"{ours};branch={branch}"), *request.headers])
        copy = Request(request.method, str(binding.uri), headers, request.body, request.version)
        return copy.toBytes()

    def _mac(self, connection: int, via: str) -> str:
        try:
            text = str(Via.parse(via))
        except SIPParseError:
            text = via
        message = f"{connection:x}|{text}".encode("utf-8", "surrogateescape")
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:20]

    # -- responses --------------------------------------------------------------------------------------------

    def _response(self, response: Response) -> Outcome:
        vias = response.headers.getAll("Via")
        if len(vias) < 2:
            return Outcome("dropped", reason="a response with no Via below the edge's")
        try:
            top = Via.parse(vias[0])
            below = Via.parse(vias[1])
        except SIPParseError as e:
            return Outcome("dropped", reason=e.reason)
        branch = top.branch or ""
        serial, dot, mac = branch[len(BRANCH_PREFIX):].partition(".")
        try:
            connection = int(serial, 16)
        except ValueError:
            return Outcome("dropped", reason="not a branch of this edge")
        if not (branch.startswith(BRANCH_PREFIX) and dot and hmac.compare_digest(mac, self._mac(connection, vias[1]))):
            return Outcome("dropped", reason="not a branch of this edge")
        response.headers.popFirst("Via")
        host = below.received or below.host
        try:
            port = below.rport or below.port or 5060
        except SIPParseError as e:
            return Outcome("dropped", reason=e.reason)
        transport = below.transport.lower()
        if transport == "udp":
            destination = Flow("udp", host, port)
        elif transport in ("tcp", "tls") and connection:
            destination = Flow(transport, host, port, connection)
        else:
            return Outcome("dropped", reason=f"no way back over {below.transport}")
        return Outcome("response", [Send(response.toBytes(), destination)])


def _hostText(host: str) -> str:
    return f"[{host}]" if ":" in host else host

