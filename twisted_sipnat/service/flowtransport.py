"""
What a client flow goes out on (``--transport udp|tcp|tls``) and the REGISTER client for it.

Why one place: the role builds one REGISTER client per flow and must not care which transport carries it.
:func:`openRegisterClient` is that seam: UDP gives the datagram
:class:`~twisted_sipnat.service.sipclient.RegisterClient` (the role makes it the ``sipProtocol`` of its shared
UDP socket), TCP and TLS give a :class:`~twisted_sipnat.service.sipstreamclient.StreamRegisterClient` with the
endpoint that makes its connection.

TLS verifies the next hop's certificate by default (RFC 5922 §7; RFC 5626 §5.2 leaves no room for an
unauthenticated edge): against the platform's trust store, or the ``--ca-certs`` file for a private CA, and
against the server identity the client expects, which is the next hop's host when it is a name, else the
domain of the address of record (RFC 5922 §4.1: the domain the client wants to reach; the REGISTER's
Request-URI).  ``--no-verify`` switches the check off, and says so in a warning line at every connection made.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple, Union

from twisted.logger import Logger

from ..core.addresses import isIPLiteral
from ..core.sip.digest import Credentials
from ..core.sip.register import parseAOR
from ..errors import InvalidSettingsError
from .sipclient import RegisterClient
from .sipstreamclient import DEFAULT_CONNECT_TIMEOUT, StreamRegisterClient

__all__ = ["TRANSPORTS", "FlowTransport", "clientTLSCreator", "openRegisterClient", "registerClientFactory",
           "serverIdentity", "streamEndpoint"]

HostPort = Tuple[str, int]
NextHop = Union[HostPort, Callable[[], HostPort]]
AnyRegisterClient = Union[RegisterClient, StreamRegisterClient]

#: ``--transport`` values.
TRANSPORTS = ("udp", "tcp", "tls")

log = Logger(namespace="twisted_sipnat.client")


@dataclass(frozen=True)
class FlowTransport:
    """
    The transport of the role's flows: ``name`` one of :data:`TRANSPORTS`; for TLS, ``caCerts`` (a PEM file of
    the CAs to trust instead of the platform's) and ``verify`` (``False``: no certificate check at all).
    """

    name: str = "udp"
    caCerts: Optional[str] = None
    verify: bool = True

    def __post_init__(self) -> None:
        if self.name not in TRANSPORTS:
            raise InvalidSettingsError("transport", self.name, f"must be one of {', '.join(TRANSPORTS)}")
        if self.name != "tls" and (self.caCerts is not None or not self.verify):
            option = "ca-certs" if self.caCerts is not None else "no-verify"
            raise InvalidSettingsError(option, self.caCerts if self.caCerts is not None else True,
                                       "is for --transport tls")
        if self.caCerts is not None and not self.verify:
            raise InvalidSettingsError("no-verify", True, "--ca-certs names CAs to verify with: give one of them")

    @property
    def stream(self) -> bool:
        return self.name != "udp"


def serverIdentity(nextHop: HostPort, aor: str) -> str:
    """The identity the next hop's certificate must name (module docstring; RFC 5922 §4.1)."""
    host = nextHop[0]
    return parseAOR(aor).host if isIPLiteral(host) else host


def _trustRoot(path: str) -> Any:
    """The CAs of a PEM file, as Twisted's trust root; a file without a usable certificate is one line."""
    from twisted.internet import ssl

    try:
        text = Path(path).read_text(encoding="ascii", errors="replace")
    except OSError as e:
        raise InvalidSettingsError("ca-certs", path, f"cannot be read: {e.strerror or e}") from None
    marker = "-----BEGIN CERTIFICATE-----"
    blocks = [marker + block for block in text.split(marker)[1:]]
    certificates: List[Any] = []
    for block in blocks:
        try:
            certificates.append(ssl.Certificate.loadPEM(block.encode("ascii", "replace")))
        except Exception as e:  # OpenSSL's errors are of several kinds: all mean the same here
            raise InvalidSettingsError("ca-certs", path, f"holds a certificate that does not load ({e})") from None
    if not certificates:
        raise InvalidSettingsError("ca-certs", path, "holds no PEM certificate")
    return ssl.trustRootFromCertificates(certificates)


def clientTLSCreator(serverName: str, transport: FlowTransport) -> Any:
    """
    The ``IOpenSSLClientConnectionCreator`` for a TLS flow: Twisted's ``optionsForClientTLS`` (certificate
    chain and ``serverName`` checked, SNI sent for a name), or with ``verify`` off a context that checks nothing.
    """
    from twisted.internet import ssl

    if not transport.verify:
        return ssl.CertificateOptions(verify=False)
    trustRoot = _trustRoot(transport.caCerts) if transport.caCerts is not None else None
    return ssl.optionsForClientTLS(serverName, trustRoot=trustRoot)


def streamEndpoint(reactor: Any, transport: FlowTransport, serverName: str,
                   timeout: float = DEFAULT_CONNECT_TIMEOUT) -> Callable[[HostPort], Any]:
    """
    ``endpointFor(nextHop)`` for a stream flow: TCP to the next hop's IP literal, TLS around it.  The TLS
    context is made once, here, so that a bad ``--ca-certs`` is an error at start, not at the first connection.
    """
    from twisted.internet import endpoints

    creator = clientTLSCreator(serverName, transport) if transport.name == "tls" else None

    def endpointFor(hop: HostPort) -> Any:
        host, port = hop
        cls = endpoints.TCP6ClientEndpoint if ":" in host else endpoints.TCP4ClientEndpoint
        tcp = cls(reactor, host, port, timeout=max(1, int(timeout)))
        if creator is None:
            return tcp
        if not transport.verify:
            log.warn("TLS to {host}:{port} without certificate verification (--no-verify): anyone on the path can "
                     "impersonate the registrar", host=host, port=port, sipnat_event="sipnat.client.tls.unverified")
        return endpoints.wrapClientTLS(creator, tcp)

    return endpointFor


def openRegisterClient(reactor: Any, transport: FlowTransport, aor: str, nextHop: NextHop, controller: Any,
                       *, credentials: Optional[Credentials] = None, instance: Optional[str] = None,
                       regId: Optional[int] = None, endpointFor: Optional[Callable[[HostPort], Any]] = None,
                       ) -> AnyRegisterClient:
    """
    The REGISTER client of one flow toward ``nextHop`` over ``transport`` (the role's seam, module docstring).

    UDP: a :class:`~twisted_sipnat.service.sipclient.RegisterClient`, to be the ``sipProtocol`` of the role's
    shared UDP socket.  TCP, TLS: a :class:`~twisted_sipnat.service.sipstreamclient.StreamRegisterClient`
    (an ``IService``: the role makes it its child, so that stopping closes the connection), connecting through
    ``endpointFor`` (tests) or the TCP/TLS endpoint for the next hop.  Both have ``register(contact)``,
    ``stop()``, ``dropFlow()``, ``socket`` (what ``refreshNATBinding`` takes for this flow), ``registered``,
    ``grantedExpires()`` and ``reportFigures()``.
    """
    if not transport.stream:
        return RegisterClient(reactor, aor, nextHop, credentials=credentials, instance=instance, regId=regId)
    if endpointFor is None:
        hop = nextHop() if callable(nextHop) else nextHop
        endpointFor = streamEndpoint(reactor, transport, serverIdentity(hop, aor))
    return StreamRegisterClient(reactor, aor, nextHop, endpointFor, controller, transport=transport.name,
                                credentials=credentials, instance=instance, regId=regId)


def registerClientFactory(transport: FlowTransport) -> Callable[[Any, int, NextHop, Optional[int]], AnyRegisterClient]:
    """
    :func:`openRegisterClient` as a role with one REGISTER client per flow calls it: ``factory(role, key, nextHop,
    regId)``, reading ``reactor``, ``aor``, ``controller``, ``credentials`` and ``instance`` off the role (``key``,
    the flow's name, does not change the client).
    """

    def factory(role: Any, key: int, nextHop: NextHop, regId: Optional[int]) -> AnyRegisterClient:
        return openRegisterClient(role.reactor, transport, role.aor, nextHop, role.controller,
                                  credentials=getattr(role, "credentials", None),
                                  instance=getattr(role, "instance", None), regId=regId)

    return factory
