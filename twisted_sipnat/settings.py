"""
:class:`NATSettings`: the per-domain NAT traversal configuration (the seed's per-domain NAT settings).

Validated on construction, so a bad value is refused where it is written, with the key named, rather than
surfacing as a strange timer later.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple, Union

from ._version import __version__
from .core.addresses import isIPLiteral
from .errors import InvalidSettingsError, NATTraversalError

#: A STUN server after parsing: ``(host, port)``; ``port`` is ``None`` for a host name given without one,
#: which means "DNS SRV ``_stun._udp.host`` first, then A/AAAA on 3478" (RFC 8489 §8).
ServerSpec = Tuple[str, Optional[int]]
ServerEntry = Union[str, Tuple[str, int], Tuple[str, None]]

DEFAULT_STUN_PORT = 3478
DEFAULT_SOFTWARE = f"twisted_sipnat/{__version__}"
_UNSET = object()


def parseServer(entry: object, key: str = "stunServers") -> ServerSpec:
    """
    Normalise one ``stunServers`` entry: a ``(host, port)`` pair, or an RFC 7064 URI ``stun:host[:port]``
    (IPv6 hosts in brackets).  ``stuns:`` (STUN over TLS) is refused: this library speaks STUN over UDP on the
    SIP socket.  An IP literal without a port gets 3478, a name keeps ``None`` so SRV can be tried.
    """
    if isinstance(entry, str):
        text = entry.strip()
        scheme, sep, rest = text.partition(":")
        if not sep or scheme.lower() not in ("stun", "stuns"):
            raise InvalidSettingsError(key, entry, "expected (host, port) or a stun:host[:port] URI (RFC 7064)")
        if scheme.lower() == "stuns":
            raise InvalidSettingsError(key, entry, "stuns: (STUN over TLS) is not supported on a SIP socket")
        if rest.startswith("["):
            host, bracket, tail = rest[1:].partition("]")
            if not bracket:
                raise InvalidSettingsError(key, entry, "unterminated IPv6 bracket")
            portText = tail[1:] if tail.startswith(":") else ("" if not tail else None)
            if portText is None:
                raise InvalidSettingsError(key, entry, "junk after the IPv6 address")
        else:
            host, _, portText = rest.partition(":")
        port: Optional[int] = None
        if portText:
            if not portText.isdigit():
                raise InvalidSettingsError(key, entry, "the port is not a number")
            port = int(portText)
        return _checkedServer(host, port, entry, key)
    if isinstance(entry, (tuple, list)) and len(entry) == 2:
        host, port = entry
        if not isinstance(host, str):
            raise InvalidSettingsError(key, entry, "the host must be a string")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int)):
            raise InvalidSettingsError(key, entry, "the port must be an int")
        return _checkedServer(host, port, entry, key)
    raise InvalidSettingsError(key, entry, "expected (host, port) or a stun:host[:port] URI (RFC 7064)")


def _checkedServer(host: str, port: Optional[int], entry: object, key: str) -> ServerSpec:
    host = host.strip()
    if not host:
        raise InvalidSettingsError(key, entry, "empty host")
    if port is not None and not 0 < port < 65536:
        raise InvalidSettingsError(key, entry, "the port must be 1-65535")
    if isIPLiteral(host):
        host = str(ipaddress.ip_address(host))  # RFC 5952 form for IPv6
        if port is None:
            port = DEFAULT_STUN_PORT
    return (host, port)


def _positiveOrZero(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InvalidSettingsError(key, value, "must be a finite number of seconds >= 0")
    return float(value)


@dataclass(frozen=True, kw_only=True)
class NATSettings:
    """
    How to traverse the NAT for one SIP domain.

    ``stunServers`` are tried in order (failover on timeout or error); empty means the next hop itself answers
    STUN (an RFC 5626 edge proxy).  Keepalive intervals are the RFC 5626 §4.4.1 bases: each keepalive goes out
    after a fresh random 80-100 % of it; ``0`` disables keepalives on that transport.  ``udpKeepaliveMethod`` is
    ``"stun"`` (Binding requests to the next hop, §4.4.2), ``"crlf"`` (CRLFCRLF datagrams, no answer expected) or
    ``"auto"`` (STUN until a keepalive times out toward a hop that never answered STUN on the flow, then CRLF:
    many registrars without outbound support ignore STUN).  ``username`` and ``password`` are STUN short-term
    credentials (RFC 8489 §9.1), or long-term ones (§9.2: the first request unsigned, the server's 401 realm and
    nonce then used to sign) with ``credentialMechanism="long-term"``.  ``rto`` is the initial retransmission
    timeout (RFC 8489 §6.2.1, 500 ms).  ``stunFailureCacheTime`` > 0 remembers a resolution that failed on every
    server for that many seconds: resolutions for the domain fail at once with the same error meanwhile (``0``,
    the default, turns it off).
    """

    stunServers: Sequence[ServerEntry] = ()
    udpKeepaliveInterval: float = 25.0
    tcpKeepaliveInterval: float = 120.0
    udpKeepaliveMethod: str = "stun"
    pongTimeout: float = 10.0
    username: Optional[str] = None
    password: Optional[str] = None
    software: Optional[str] = DEFAULT_SOFTWARE
    rto: float = 0.5
    credentialMechanism: str = "short-term"
    stunFailureCacheTime: float = 0.0
    servers: Tuple[ServerSpec, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        entries = self.stunServers
        if isinstance(entries, (str, bytes)) or not isinstance(entries, (list, tuple)):
            raise InvalidSettingsError("stunServers", entries, "must be a sequence of servers")
        servers = tuple(parseServer(e) for e in entries)
        # Frozen settings are values: hashable and equal whether a pair came as a list (from JSON or TOML) or a
        # tuple.
        object.__setattr__(self, "stunServers", tuple(tuple(e) if isinstance(e, list) else e for e in entries))
        object.__setattr__(self, "servers", servers)
        for key in ("udpKeepaliveInterval", "tcpKeepaliveInterval"):
            object.__setattr__(self, key, _positiveOrZero(key, getattr(self, key)))
        pong = _positiveOrZero("pongTimeout", self.pongTimeout)
        if pong == 0:
            raise InvalidSettingsError("pongTimeout", self.pongTimeout, "must be > 0")
        object.__setattr__(self, "pongTimeout", pong)
        rto = _positiveOrZero("rto", self.rto)
        if rto == 0:
            raise InvalidSettingsError("rto", self.rto, "must be > 0")
        object.__setattr__(self, "rto", rto)
        if self.udpKeepaliveMethod not in ("stun", "crlf", "auto"):
            raise InvalidSettingsError("udpKeepaliveMethod", self.udpKeepaliveMethod, 'must be "stun", "crlf" or "auto"')
        if (self.username is None) != (self.password is None):
            raise InvalidSettingsError("username", self.username, "username and password go together")
        for key in ("username", "password", "software"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, str):
                raise InvalidSettingsError(key, value, "must be a string or None")
        if self.credentialMechanism not in ("short-term", "long-term"):
            raise InvalidSettingsError("credentialMechanism", self.credentialMechanism,
                                       'must be "short-term" or "long-term"')
        if self.credentialMechanism == "long-term" and (self.username is None or self.password is None):
            raise InvalidSettingsError("credentialMechanism", self.credentialMechanism,
                                       "long-term credentials need username and password")
        object.__setattr__(self, "stunFailureCacheTime",
                           _positiveOrZero("stunFailureCacheTime", self.stunFailureCacheTime))
        if self.software is not None and len(self.software.encode("utf-8")) > 763:
            raise InvalidSettingsError("software", self.software, "SOFTWARE is at most 763 bytes (RFC 8489 §14.14)")

    @property
    def hasCredentials(self) -> bool:
        """``True`` when requests are signed and responses must carry valid MESSAGE-INTEGRITY."""
        return self.username is not None


def settingsTable(settings: object) -> Tuple[Optional[NATSettings], Dict[str, NATSettings]]:
    """
    A controller's ``settings`` argument as ``(one for every domain, {domain: settings})``; raises
    :class:`~twisted_sipnat.errors.NATTraversalError` for anything but NATSettings or a mapping of them.
    """
    from collections.abc import Mapping

    if isinstance(settings, NATSettings):
        return settings, {}
    if isinstance(settings, Mapping):
        for domain, value in settings.items():
            if not isinstance(value, NATSettings):
                raise NATTraversalError(f"settings for domain {domain!r} must be NATSettings, not {value!r}")
        return None, dict(settings)
    raise NATTraversalError(f"settings must be NATSettings or a mapping of them, not {settings!r}")
