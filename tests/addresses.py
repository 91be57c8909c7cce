"""
The addresses every test layer uses, written once (RFC 5737 documentation ranges, so no test can reach a real
host by mistake): the next hop a flow keeps alive, the STUN server a resolution asks, a second server.

Import them as ``from tests.addresses import HOP, SERVER`` (the repository root is on the tests' path, see
``pythonpath`` in setup.cfg); the shared fixtures are in ``tests/conftest.py``.
"""

from __future__ import annotations

from typing import Tuple

HostPort = Tuple[str, int]

#: The SIP next hop (an RFC 5626 edge) a flow's keepalives go to.
HOP: HostPort = ("198.51.100.1", 5060)
#: The STUN server a resolution asks.
SERVER: HostPort = ("198.51.100.7", 3478)
#: A second STUN server, for failover.
OTHER_SERVER: HostPort = ("198.51.100.8", 3478)
