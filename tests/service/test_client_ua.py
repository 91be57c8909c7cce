"""
The client role as an RFC 5626 user agent: digest authentication, outbound registration before any STUN, the 439
fallback, a wrong password, on the simulated network (a ``task.Clock``).
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet.address import IPv4Address

from twisted_sipnat import NATSettings
from twisted_sipnat.core.sip import NameAddress, Request
from twisted_sipnat.core.sip.digest import Credentials
from twisted_sipnat.service.client import ClientRole

from .registrarkit import DigestRegistrar
from .support import NetReactor

INSTANCE = "urn:uuid:6f1c3c1e-8b8e-4d2e-9a55-0d4f3f0c2a11"
REGISTRAR = ("127.0.0.1", 5070)


def roleWith(net: NetReactor, registrar: DigestRegistrar, password: str = "secret", method: str = "crlf",
             **kw: Any) -> ClientRole:
    net.listenUDP(REGISTRAR[1], registrar, "127.0.0.1")
    settings = {"default": NATSettings(udpKeepaliveInterval=10.0, udpKeepaliveMethod=method)}
    return ClientRole(net, REGISTRAR, settings, "default", listen=(0, "127.0.0.1"), register="alice@example.com",
                      credentials=Credentials("alice", password), random=lambda: 0.0, **kw)


def registers(net: NetReactor) -> List[bytes]:
    return [d for d, src, dst in net.sent if dst == REGISTRAR and d.startswith(b"REGISTER ")]


def cseqs(registrar: DigestRegistrar) -> List[int]:
    """The CSeq numbers of the REGISTERs received, retransmissions counted once."""
    return sorted({int((r.headers.get("CSeq") or "0").split()[0]) for r in registrar.requests})


def stop(net: NetReactor, role: ClientRole) -> None:
    role.stopService()
    for port in list(net.ports.values()):
        port.stopListening()
    assert net.getDelayedCalls() == []


def test_registersWithDigestAndOutboundBeforeAnySTUNThenKeepsAlive() -> None:
    net = NetReactor()
    registrar = DigestRegistrar(nat=("203.0.113.7", 41000))
    role = roleWith(net, registrar, instance=INSTANCE, method="stun")
    role.startService()
    net.run(1)
    first, second = registrar.requests[:2]
    assert "Authorization" not in first.headers and "Authorization" in second.headers
    assert registrar.stunRequests == 0, "the REGISTER goes first: STUN only on the registered flow (ejabberd)"
    contact = NameAddress.parse(second.headers.get("Contact") or "")
    assert (contact.instance, contact.regId, contact.sipURI.params) == (f"<{INSTANCE}>", 1, (("ob", None),))
    assert role.registerClient is not None and role.registerClient.registered is not None
    assert role.registerClient.registered.outbound, "Require: outbound: the registrar honoured outbound"
    assert role.flowTimer == 15 and role.keepalivesStarted == 1
    assert role.publicAddress == IPv4Address("UDP", "203.0.113.7", 41000), "from the 200's received/rport"
    net.run(31, step=0.5)
    assert registrar.stunRequests >= 2 and role.failures == 0, "STUN keepalives every 12-15 s, answered"
    stop(net, role)


def test_crlfKeepalivesOnTheRegisteredFlowAndNoFailure() -> None:
    net = NetReactor()
    registrar = DigestRegistrar()
    role = roleWith(net, registrar, instance=INSTANCE)
    role.startService()
    net.run(1)
    net.run(60, step=0.5)
    assert registrar.pings >= 4, "a CRLF ping every 12-15 s (the Flow-Timer)"
    assert role.failures == 0 and cseqs(registrar) == [1, 2]
    stop(net, role)


def test_wrongPasswordFailsAfterOneRetryAndBacksOff() -> None:
    net = NetReactor()
    registrar = DigestRegistrar(password="other")
    role = roleWith(net, registrar, instance=INSTANCE, backoffBase=30.0)
    role.startService()
    net.run(1)
    assert cseqs(registrar) == [1, 2], "one REGISTER, one retry with credentials, then it gives up"
    retryAt = role.retryAt
    assert retryAt is not None and retryAt >= 15.0, "the next attempt waits for the §4.5 backoff"
    net.run(retryAt, step=0.5)
    assert cseqs(registrar) == [1, 2, 3, 4]  # one more attempt of two, not a loop
    stop(net, role)


def test_439RegistersAgainWithoutOutboundAndKeepsAliveAnyway() -> None:
    net = NetReactor()
    registrar = DigestRegistrar(refuseOutbound=True)
    role = roleWith(net, registrar, instance=INSTANCE)
    role.startService()
    net.run(1)
    net.run(30, step=0.5)
    last: Request = registrar.requests[-1]
    assert NameAddress.parse(last.headers.get("Contact") or "").regId is None
    assert cseqs(registrar) == [1, 2, 3]
    assert role.keepalivesStarted == 1 and role.failures == 0
    assert registrar.pings >= 2, "keepalives go on without outbound (RFC 5626 §4.2.1)"
    stop(net, role)


def test_withoutOutboundTheContactIsTheReflexiveAddressOnceAndRefreshesKeepIt() -> None:
    net = NetReactor()
    # STUN first shows another address than the registrar's received/rport: the Contact is rewritten once
    registrar = DigestRegistrar(nat=("203.0.113.7", 41000), stunShowsNat=False)
    role = roleWith(net, registrar, method="crlf")  # no instance: plain RFC 3261, STUN first
    role.startService()
    net.run(1)
    contacts = [r.headers.get("Contact") or "" for r in registrar.requests]
    assert "203.0.113.7:41000" not in contacts[0] and "203.0.113.7:41000" in contacts[-1]
    assert len(registrar.requests) == 3, "401, 200 showing another address, the rewritten REGISTER's 200"
    net.run(0.9 * 600 + 1, step=5.0)
    assert len(registrar.requests) == 4 and "203.0.113.7:41000" in (registrar.requests[-1].headers.get("Contact")
                                                                      or ""), "a refresh: no second rewrite"
    stop(net, role)


def test_aRefreshThatChangesTheFlowTimerKeepsTheRegistrarsAddressAsTheBaseline() -> None:
    """
    The keepalives restart at a refresh's new Flow-Timer with the same baseline (the 200's received/rport), so
    a rebinding between that refresh and the next keepalive answer is still seen and registered at once.
    """
    net = NetReactor()
    registrar = DigestRegistrar(nat=("203.0.113.7", 41000))
    role = roleWith(net, registrar, instance=INSTANCE, method="stun")
    role.startService()
    net.run(1)
    registered = len(registrar.requests)
    registrar.flowTimer = 20
    while len(registrar.requests) == registered:  # up to the refresh at 90 % of the 600 s granted
        net.run(5, step=0.5)
    net.run(0.5)
    assert role.flowTimer == 20 and role.failures == 0
    registrar.nat = ("203.0.113.7", 41001)  # the NAT rebinds before the first keepalive at the new interval
    net.run(25, step=0.5)
    assert role.failures == 1, "the new mapping is a MappedAddressChanged, not a new baseline"
    assert len(registrar.requests) > registered + 1, "the rebound flow registered again at once"
    stop(net, role)
