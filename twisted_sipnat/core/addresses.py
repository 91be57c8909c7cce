"""
Host and address text, written once: IP literal checks, RFC 5952 normal form, ``(host, port)`` pairs.

Every layer compares addresses (a response's source against the server asked, a keepalive answer against the
next hop, a registrar's ``received`` against a Contact), and each comparison must treat ``2001:DB8::1`` and
``2001:db8::1`` (and a zone suffix) as one host, as RFC 5952 §4 asks of text forms.  Names are never resolved
here: they are returned as they are.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Optional, Tuple

from twisted_sipnat.errors import InvalidSettingsError

__all__ = ["HostPort", "isIPLiteral", "normalHost", "hostPortOf", "sameHostPort", "unmappedHost", "parseHostPort"]

HostPort = Tuple[str, int]


def isIPLiteral(host: str) -> bool:
    """``True`` for an IPv4 or IPv6 literal: those are used as they are, never resolved."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def normalHost(host: str) -> str:
    """RFC 5952 text for IPv6 (a ``%zone`` dropped), the literal for IPv4; names are returned as they are."""
    try:
        return str(ipaddress.ip_address(host.split("%", 1)[0]))
    except ValueError:
        return host


def hostPortOf(addr: Any) -> Optional[HostPort]:
    """``(host, port)`` from a UDP source tuple (IPv6 ones have four members) or an object with ``host``/``port``."""
    if addr is None:
        return None
    if isinstance(addr, tuple):
        return (addr[0], addr[1])
    host = getattr(addr, "host", None)
    port = getattr(addr, "port", None)
    if host is None or port is None:
        return None
    return (host, port)


def sameHostPort(a: HostPort, b: HostPort) -> bool:
    """The same transport address, whatever the text form of the host."""
    return a == b or (a[1] == b[1] and normalHost(a[0]) == normalHost(b[0]))


def unmappedHost(host: str) -> str:
    """An IPv4-mapped IPv6 source (from a dual-stack socket) as the IPv4 address the peer really has."""
    if host[:7].lower() == "::ffff:":
        try:
            mapped = ipaddress.IPv6Address(host).ipv4_mapped
        except ValueError:
            return host
        if mapped is not None:
            return str(mapped)
    return host


def parseHostPort(text: str, key: str, defaultPort: Optional[int] = None) -> HostPort:
    """
    ``HOST:PORT`` (``[V6]:PORT`` for IPv6) -> ``(host, port)``; the port may be omitted when ``defaultPort``
    is given.  IPv6 literals come back in RFC 5952 form.  Bad text raises :class:`InvalidSettingsError`
    naming ``key`` (the option or setting it came from).
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
        host = normalHost(host)
    return host, port
