"""
STUN long-term credentials (RFC 8489 §9.2) through the real netfilter NAT: the library's client in ``lan``
(drivers/natclient.py) resolves against coturn in ``pub`` run with ``--secure-stun --lt-cred-mech``
(conftest.labSecureCoturn).  With the right password the answer is the address and port conntrack allocated,
after exactly one 401 and one signed retry; with a wrong one the resolution fails with ``STUNErrorResponse``
401 after exactly two requests and nothing is sent after it (no loop).  The router's conntrack table and the
driver's datagram counts are the referees.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

import netlab
import peerkit
import pytest
from netlab import SECURE_COTURN_PORT, SECURE_USER, Driver, NetLab

pytestmark = [pytest.mark.lab, pytest.mark.timeout(90)]

SECURE = (netlab.PUB_ADDR, SECURE_COTURN_PORT)


def resolveEvent(client: Driver) -> Dict[str, Any]:
    client.send("resolve", nextHop=list(SECURE))
    return client.expect(lambda e: e["event"] in ("resolved", "resolveError"), 10.0, "a resolution")


def counts(client: Driver) -> Dict[str, int]:
    return client.call("stats", "stats")["counts"]


def longTerm(password: str) -> Dict[str, Any]:
    return {"stunServers": [list(SECURE)], "username": SECURE_USER[0], "password": password,
            "credentialMechanism": "long-term", "rto": 0.1}


@pytest.mark.parametrize("mode", ["eim", "random"])
def test_longTermResolveThroughTheNAT(
    lab: NetLab, labSecureCoturn: peerkit.RunningPeer, natClient: Callable[..., Driver], mode: str
) -> None:
    lab.setMode(mode)
    client = natClient(**longTerm(SECURE_USER[1]))
    result = resolveEvent(client)
    assert result["event"] == "resolved", result
    local = (result["local"][0], result["local"][1])
    entry = lab.mappingFor(local, SECURE)
    assert entry is not None, lab.snapshot()
    assert (result["host"], result["port"]) == entry.publicAddress and result["host"] == netlab.NAT_OUTSIDE
    seen = counts(client)
    key = f"{SECURE[0]}:{SECURE[1]}"
    assert seen[f"udpTx:{key}"] == 2 and seen[f"udpRx:{key}"] == 2  # unsigned -> 401, signed -> success


def test_wrongPasswordThroughTheNATIsA401AfterOneRetry(
    lab: NetLab, labSecureCoturn: peerkit.RunningPeer, natClient: Callable[..., Driver]
) -> None:
    client = natClient(**longTerm("not-" + SECURE_USER[1]))
    result = resolveEvent(client)
    assert result["event"] == "resolveError" and result["type"] == "STUNErrorResponse", result
    assert "401" in result["message"], result
    key = f"{SECURE[0]}:{SECURE[1]}"
    assert counts(client)[f"udpTx:{key}"] == 2
    # A second of the driver's own reactor (a loop would show as more sends, or another resolution event).
    assert [e for e in client.collect(1.0) if e["event"] in ("resolved", "resolveError")] == []
    after = counts(client)
    assert after[f"udpTx:{key}"] == 2 and after[f"udpRx:{key}"] == 2
