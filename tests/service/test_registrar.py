"""twisted_sipnat.service.registrar: what the edge adds to and fixes in Twisted's registrar."""

from __future__ import annotations

from typing import Any

from twisted_sipnat.service.registrar import ClockedRegistry, EdgeRegisterProxy


def test_edge_fills_a_bare_rport_behind_a_port_preserving_nat() -> None:
    """RFC 3581 §4: the 200 OK goes to the source port even when it equals the Via port (Twisted left it True)."""
    from twisted.protocols import sip

    proxy = EdgeRegisterProxy(host="203.0.113.20", port=5062)
    message = sip.Request("REGISTER", "sip:example.com")
    message.addHeader("via", "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK1;rport")
    proxy.fixupNAT(message, ("203.0.113.1", 5060))
    via = sip.parseViaHeader(message.headers["via"][0])
    assert (via.received, via.rport) == ("203.0.113.1", 5060)


def _registry(clock: Any) -> Any:
    return ClockedRegistry("example.com", clock)


def test_edge_registry_expires_registrations_and_takes_them_again() -> None:
    from twisted.internet.task import Clock
    from twisted.protocols import sip

    clock = Clock()
    registry = _registry(clock)
    aor, contact = sip.URL("example.com", "alice"), sip.URL("203.0.113.1", "alice", port=5060)
    registry.registerAddress(sip.URL("example.com"), aor, contact)
    clock.advance(3601)  # Twisted's own expiry raised AlreadyCalled here and kept the user
    assert "alice" not in registry.users
    registry.registerAddress(sip.URL("example.com"), aor, contact)  # and this raised on the dead timer
    assert "alice" in registry.users
    registry.clear()
    assert clock.getDelayedCalls() == []
