"""
One flow's registration, sans-IO: which REGISTER to send next and what a final response means (RFC 3261 §10.2,
§22; RFC 5626 §4.2; RFC 3581).

Why a machine of its own: a REGISTER rarely succeeds at the first try against a real registrar.  It is
challenged (401/407, answered once, a stale nonce answered again), asked for a longer lifetime (423), told
the first hop lacks outbound (439), or it succeeds with a ``received``/``rport`` that shows the Contact is
not the address the registrar sees.  Each of these is a retry, and each has to be bounded so that no answer,
forged or not, makes the UA loop.  The shell (:mod:`twisted_sipnat.service.sipclient`) keeps one of these per
flow and one RFC 3261 §17.1.2 transaction at a time; here are the rules.

Usage: :meth:`Registration.begin` at the start of each registration (first, refresh, after a failure), then
:meth:`Registration.request` for each REGISTER, and :meth:`Registration.final` with each final response:
:class:`Retry` (send :meth:`request` again, to :attr:`Retry.contact`), :class:`Registered` or
:class:`Refused`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

from .digest import Authenticator, Credentials
from .error import SIPParseError
from .fields import NameAddress, Via
from .headers import splitTopLevel
from .message import Request, Response
from .register import buildRegister, contactOf, grantedExpires, minExpires, registrarKeepalive
from .uri import SIPURI

__all__ = ["MAX_RETRIES", "Refused", "Registered", "Registration", "Retry", "reflexiveAddress"]

HostPort = Tuple[str, int]

#: Retries of one registration at most, whatever their reasons (two challenges, three stale nonces, a 423, a
#: 439, a Contact rewrite): the last line against a loop.
MAX_RETRIES = 8


@dataclass(frozen=True)
class Retry:
    """Send :meth:`Registration.request` again, binding :attr:`contact`; :attr:`why` is for the log."""

    why: str
    contact: HostPort


@dataclass(frozen=True)
class Registered:
    """
    A 2xx: the binding holds for :attr:`expires` seconds; :attr:`flowTimer` is the keepalive interval the
    registrar asked for (RFC 5626 §4.4.1, RFC 6223), :attr:`outbound` whether the registrar honoured outbound
    (RFC 5626 §4.2.1: ``Require: outbound`` in the 2xx), :attr:`reflexive` the address it saw us at (RFC 3581).
    """

    response: Response
    expires: int
    flowTimer: Optional[int]
    outbound: bool
    reflexive: Optional[HostPort]


@dataclass(frozen=True)
class Refused:
    """The registration failed with :attr:`code` (``None``: no final response) and :attr:`why`."""

    code: Optional[int]
    why: str


Decision = Union[Retry, Registered, Refused]


def reflexiveAddress(response: Response) -> Optional[HostPort]:
    """
    The address the registrar received our request from: the top Via's ``received`` (or its sent-by host) with
    its ``rport`` (RFC 3581 §4), or ``None`` when the registrar filled in no ``rport``.
    """
    top = response.headers.get("Via")
    if top is None:
        return None
    try:
        via = Via.parse(top)
        rport = via.rport
    except SIPParseError:
        return None
    if rport is None or not 0 < rport < 65536:
        return None
    return (via.received or via.host, rport)


def _requires(response: Response, option: str) -> bool:
    for value in response.headers.getAll("Require"):
        if option in (token.lower() for token in splitTopLevel(value, ",")):
            return True
    return False


class Registration:
    """
    The registration of one flow (module docstring).  ``instance`` (``urn:uuid:...``) and ``regId`` ask for RFC
    5626 outbound; ``credentials`` answer digest challenges; ``token`` returns fresh random text (branches,
    cnonces: the shell passes ``secrets.token_hex``).
    """

    def __init__(self, aor: SIPURI, *, expires: int, callId: str, fromTag: str, token: Callable[[], str],
                 credentials: Optional[Credentials] = None, instance: Optional[str] = None,
                 regId: Optional[int] = None, transport: str = "UDP") -> None:
        self.aor = aor
        #: The flow's transport (``UDP``, ``TCP``, ``TLS``): the top Via's and the Contact's (:func:`buildRegister`).
        self.transport = transport
        self.expires = expires
        self.callId = callId
        self.fromTag = fromTag
        self.cseq = 0
        self.instance = instance
        self.regId = regId
        self._token = token
        self.authenticator = Authenticator(credentials, token)
        #: ``False`` once a 439 said the first hop lacks outbound support (RFC 5626 §4.2.1).
        self.outboundAllowed = regId is not None and instance is not None
        #: The Contact URI of the last REGISTER.
        self.contact: Optional[SIPURI] = None
        self._contactAddress: Optional[HostPort] = None
        self._retries = 0
        self._raised = False
        self._rewritten = False
        #: ``(asked, used)``: the Contact the shell asks for and the one the registrar's Via showed instead, so
        #: that refreshes bind the rewritten address at once, not after another rewrite each time.
        self._rewrite: Optional[Tuple[HostPort, HostPort]] = None
        self._asked: Optional[HostPort] = None

    @property
    def outbound(self) -> bool:
        """Whether REGISTERs carry the RFC 5626 outbound parameters."""
        return self.outboundAllowed

    def begin(self) -> None:
        """A new registration (first, refresh, recovery): the retry bounds start again."""
        self._retries = 0
        self._raised = False
        self._rewritten = False
        self.authenticator.restart()

    def request(self, contact: HostPort, sentBy: HostPort) -> Request:
        """
        The next REGISTER, binding ``contact`` (or the address the registrar showed instead of it, once it has:
        see :meth:`final`), with a fresh branch, the CSeq one up, credentials if held.
        """
        self.cseq += 1
        self._asked = contact
        if self._rewrite is not None and self._rewrite[0] == contact:
            contact = self._rewrite[1]
        request = buildRegister(
            self.aor, contact, sentBy, callId=self.callId, cseq=self.cseq, branch=self._token(),
            fromTag=self.fromTag, expires=self.expires, instance=self.instance,
            regId=self.regId if self.outbound else None, transport=self.transport,
        )
        for name, value in self.authenticator.headers(request):
            request.headers.add(name, value)
        self.contact = contactOf(request)
        self._contactAddress = contact
        return request

    def _retry(self, why: str, contact: HostPort) -> Decision:
        self._retries += 1
        if self._retries > MAX_RETRIES:
            return Refused(None, f"gave up after {MAX_RETRIES} retries (the last: {why})")
        return Retry(why, contact)

    def final(self, response: Response) -> Decision:
        """What the final response to the last :meth:`request` means (module docstring)."""
        contact = self._contactAddress
        code = response.code
        if contact is None:
            return Refused(code, "no REGISTER was sent")
        if code in (401, 407):
            failed = self.authenticator.challenged(response)
            if failed is not None:
                return Refused(failed.code, failed.why)
            return self._retry(f"{code} challenge answered", contact)
        if code == 423:
            # RFC 3261 §10.2.8: ask again with at least Min-Expires, once (a registrar raising it again is refused)
            retry = minExpires(response)
            if retry is not None and retry > self.expires and not self._raised:
                self._raised = True
                self.expires = retry
                return self._retry(f"the registrar wants at least {retry} s (423)", contact)
        if code == 439 and self.outbound:
            # RFC 5626 §4.2.1: register again without outbound; keepalives go on all the same
            self.outboundAllowed = False
            return self._retry("first hop lacks outbound support (439): registering without outbound", contact)
        if code >= 300:
            return Refused(code, response.reason)
        self.authenticator.succeeded()
        reflexive = reflexiveAddress(response)
        if not self.outbound and reflexive is not None and reflexive != contact and not self._rewritten:
            # Without outbound the Contact must be the address the registrar reaches us at (RFC 3581): rewritten
            # once per registration, so that a registrar reporting a different address each time is no loop.
            self._rewritten = True
            self._rewrite = (self._asked or contact, reflexive)
            return self._retry(f"the registrar sees us at {reflexive[0]}:{reflexive[1]}: Contact rewritten",
                               reflexive)
        return Registered(response, self.grantedExpires(response), registrarKeepalive(response),
                          self.outbound and _requires(response, "outbound"), reflexive)

    def grantedExpires(self, response: Response) -> int:
        """
        Our binding's lifetime in a 2xx: with outbound the Contact with our ``+sip.instance`` and ``reg-id``
        (RFC 5626 §6: they, not the address, identify the binding), else by URI (:func:`grantedExpires`).
        """
        if self.outbound and self.instance is not None:
            for value in response.headers.getAll("Contact"):
                try:
                    address = NameAddress.parse(value)
                    if address.instance == f"<{self.instance}>" and address.regId == self.regId:
                        expires = address.expires
                        if expires is not None:
                            return min(expires, 2**32 - 1)
                except SIPParseError:
                    continue
        return grantedExpires(response, self.expires, self.contact)
