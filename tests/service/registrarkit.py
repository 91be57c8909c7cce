"""A registrar with digest authentication on the simulated network: the client role's tests answer with it."""

from __future__ import annotations

import hashlib
from typing import Any, List, Optional, Tuple

from twisted.internet import protocol

from twisted_sipnat import stun
from twisted_sipnat.core.responder import BindingResponder
from twisted_sipnat.core.sip import Request, Response, Via, parse, responseTo

HostPort = Tuple[str, int]


def _params(value: str) -> dict[str, str]:
    """The parameters of an Authorization value as :func:`authorizationValue` writes them."""
    out = {}
    for piece in value[len("Digest "):].split(", "):
        name, _, raw = piece.partition("=")
        out[name] = raw.strip('"')
    return out


class DigestRegistrar(protocol.DatagramProtocol):
    """
    Answers REGISTER: without credentials (or with a wrong response) a 401 carrying ``challenge``; with a
    right MD5 ``qop=auth`` response a 200 with ``Require: outbound`` (when the Contact asked for it and
    ``outbound``), ``Flow-Timer``, the Contact echoed with ``expires``, and the top Via stamped with
    ``received``/``rport`` as a NAT in front of the UA would have it (``nat``, else the real source), which is
    also the mapped address of its STUN answers unless ``stunShowsNat`` is false (a STUN answer that disagrees
    with the REGISTER's Via, as from an address-dependent NAT).
    ``refuseOutbound`` answers an outbound REGISTER with 439.  Each CRLF ping is counted.
    """

    def __init__(self, password: str = "secret", realm: str = "example.com", flowTimer: int = 15,
                 nat: Optional[HostPort] = None, refuseOutbound: bool = False, outbound: bool = True,
                 stunShowsNat: bool = True) -> None:
        self.password = password
        self.realm = realm
        self.flowTimer = flowTimer
        self.nat = nat
        self.stunShowsNat = stunShowsNat
        self.refuseOutbound = refuseOutbound
        self.outbound = outbound
        self.requests: List[Request] = []
        self.pings = 0
        self.nonces = 0
        self.issued: set[str] = set()
        #: Binding requests (keepalives) seen, and whether they are answered (Kamailio's stun module).
        self.stunRequests = 0
        self.answersSTUN = True
        self.responder = BindingResponder()

    def challenge(self, request: Request, stale: bool = False) -> Response:
        self.nonces += 1
        self.issued.add(f"n{self.nonces}")
        response = responseTo(request, 401)
        response.headers.add("WWW-Authenticate", f'Digest realm="{self.realm}", nonce="n{self.nonces}", qop="auth"'
                             + (", stale=true" if stale else ""))
        return response

    def verified(self, request: Request) -> bool:
        value = request.headers.get("Authorization")
        if value is None:
            return False
        p = _params(value)
        ha1 = hashlib.md5(f"{p['username']}:{self.realm}:{self.password}".encode()).hexdigest()
        ha2 = hashlib.md5(f"REGISTER:{p['uri']}".encode()).hexdigest()
        expected = hashlib.md5(f"{ha1}:{p['nonce']}:{p['nc']}:{p['cnonce']}:auth:{ha2}".encode()).hexdigest()
        return p["response"] == expected and p["nonce"] in self.issued

    def answer(self, request: Request, source: HostPort) -> Response:
        contact = request.headers.get("Contact") or ""
        asksOutbound = ";ob>" in contact
        if asksOutbound and self.refuseOutbound:
            return responseTo(request, 439)
        if not self.verified(request):
            return self.challenge(request)
        response = responseTo(request, 200)
        seen = self.nat or source
        response.headers.set("Via", str(Via.parse(response.headers.get("Via") or "").receivedFrom(*seen)))
        if asksOutbound and self.outbound:
            response.headers.add("Require", "outbound")
            response.headers.add("Flow-Timer", str(self.flowTimer))
        response.headers.add("Contact", contact + ";expires=600")
        return response

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if stun.isSTUN(data):
            self.stunRequests += 1
            # the mapped address is what the NAT in front of the UA shows, as in the REGISTER's received/rport
            mapped = self.nat if self.nat is not None and self.stunShowsNat else addr
            reply = self.responder.respond(data, mapped) if self.answersSTUN else None
            if reply is not None:
                self.transport.write(reply.data, addr)
            return
        if not data.strip(b"\r\n"):
            self.pings += 1
            return
        request = parse(data)
        if not isinstance(request, Request):
            return
        self.requests.append(request)
        self.transport.write(self.answer(request, addr).toBytes(), addr)


__all__ = ["DigestRegistrar"]
