"""
The local address a shared socket is on, as :meth:`NATTraversalController.networkChanged
<twisted_sipnat.controller.NATTraversalController.networkChanged>` needs it.

A socket keeps the name it was bound to (``getHost()``) even when the host loses that address -- a DHCP lease
renewed with a new one, a VPN or a Wi-Fi network gone -- but it can no longer send from it: its NAT binding and,
on a stream, its connection are lost with the address (RFC 5626 §4.4: the flow must be re-created).  So the
address counts as *current* only while the host still has it; a wildcard bind (``0.0.0.0``, ``::``) always is,
since the system then picks the source per packet and a STUN keepalive shows what the NAT made of it.
"""

from __future__ import annotations

import errno
import socket as socketModule
from typing import Any, Callable, Optional, Tuple

from .core.addresses import normalHost

HostPort = Tuple[str, int]

#: Binds that leave the source address to the system.
WILDCARDS = ("0.0.0.0", "::", "")


def localHostPort(adapter: Any) -> Optional[HostPort]:
    """The ``(host, port)`` a shared socket's transport is bound to, or ``None`` when it has none (closed)."""
    try:
        local = adapter.localAddress()
    except Exception:  # noqa: BLE001 - a transport torn down under us has no address, whatever it raises
        return None
    host, port = getattr(local, "host", None), getattr(local, "port", None)
    if not isinstance(host, str) or not isinstance(port, int):
        return None
    return (normalHost(host) if host not in WILDCARDS else host, port)


def addressAssigned(host: str) -> bool:
    """
    Whether the host still has the IP address ``host``: a socket can bind to it (binding sends nothing).  Only
    ``EADDRNOTAVAIL`` means no; any other error is not evidence either way, so it counts as yes.
    """
    if host in WILDCARDS:
        return True
    family = socketModule.AF_INET6 if ":" in host else socketModule.AF_INET
    probe = socketModule.socket(family, socketModule.SOCK_DGRAM)
    try:
        probe.bind((host, 0))
    except OSError as e:
        return e.errno != errno.EADDRNOTAVAIL
    finally:
        probe.close()
    return True


def currentLocal(adapter: Any, assigned: Callable[[str], bool] = addressAssigned) -> Optional[HostPort]:
    """The socket's local address if the host still has it, else ``None`` (the flow's address is gone)."""
    local = localHostPort(adapter)
    if local is None or not assigned(local[0]):
        return None
    return local
