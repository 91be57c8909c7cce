"""
The embedded default, ``twistd -n sipnat`` with no subcommand: a STUN role on 127.0.0.1 and a client role of it.

It needs no network and shows the whole cycle (resolve, keepalives, answers) in the log within seconds.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, cast

from twisted.application import service

from ..config import DEFAULT_SECTION
from ..settings import NATSettings
from .client import ClientRole
from .figures import FigureSources, IFigureSource
from .stunserver import STUNRole

__all__ = ["EMBEDDED_INTERVAL", "EmbeddedDefault"]

#: The embedded default keeps alive this often (seconds) so that a first run shows keepalives within seconds;
#: real deployments use the RFC 5626 25 s default or what the registrar asks for.
EMBEDDED_INTERVAL = 5.0


class EmbeddedDefault(service.MultiService, FigureSources):
    """
    STUN on 127.0.0.1 (any free port) as ``stun``, and a client of it on loopback as ``client``.  ``settings``
    (``{domain: NATSettings}``, its ``default`` section applies) replaces the :data:`EMBEDDED_INTERVAL` one.
    """

    def __init__(self, reactor: Any, settings: Optional[Mapping[str, NATSettings]] = None) -> None:
        service.MultiService.__init__(self)
        self.stun = STUNRole(reactor, udp=(0, "127.0.0.1"))
        self.stun.setServiceParent(self)
        if settings is None:
            settings = {DEFAULT_SECTION: NATSettings(udpKeepaliveInterval=EMBEDDED_INTERVAL)}
        self.client = ClientRole(reactor, self.stun.address, settings, DEFAULT_SECTION, listen=(0, "127.0.0.1"))
        self.client.setServiceParent(self)  # started after the STUN role, so stun.address() is known by then
        # The operator's figures: the client's flows and keepalives, and the STUN role's requests.
        self.addFigureSource(self.client)
        self.addFigureSource(cast(IFigureSource, self.stun))
