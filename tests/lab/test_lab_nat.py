"""
The lab itself, proven with raw sockets and hand-built STUN (drivers/rawstun.py, no library code): the NAT maps
as configured, conntrack shows the mapping coturn reports, bindings expire after silence and survive with
traffic, unsolicited datagrams are filtered, and Kamailio and SIPp work through it.  If these fail, a failing
library test in this directory says nothing about the library.
"""

from __future__ import annotations

import subprocess
import sys
import time

import netlab
import peerkit
import pytest
from netlab import NetLab

pytestmark = [pytest.mark.lab, pytest.mark.timeout(90)]

COTURN = (netlab.PUB_ADDR, 3478)
KAMAILIO = (netlab.PUB_ADDR, 5060)


def test_topologyAndTimeouts(lab: NetLab) -> None:
    """Three namespaces, forwarding on, and a short UDP conntrack timeout in the router only."""
    assert {lab.lan, lab.nat, lab.pub} <= set(netlab.listNamespaces())
    assert lab.sysctl(lab.nat, "net.ipv4.ip_forward") == "1"
    assert lab.sysctl(lab.nat, "net.netfilter.nf_conntrack_udp_timeout") == str(lab.udpTimeout)
    assert lab.sysctl(lab.nat, "net.netfilter.nf_conntrack_udp_timeout_stream") == str(lab.udpTimeout)
    route = lab.run(lab.lan, ["ip", "route", "get", netlab.PUB_ADDR]).stdout
    assert f"via {netlab.NAT_INSIDE}" in route


@pytest.mark.parametrize("mode", ["eim", "random"])
def test_coturnSeesTheNATsMapping(lab: NetLab, labCoturn: peerkit.RunningPeer, runDriver, mode: str) -> None:
    """
    From ``lan``, coturn's XOR-MAPPED-ADDRESS is the router's outside address and the port conntrack allocated:
    the source port itself with port-preserving masquerade, a port in 20000-60000 with ``--random``.
    """
    lab.setMode(mode)
    raw = runDriver(lab.lan, "rawstun.py", ["--bind", f"{netlab.LAN_ADDR}:0"])
    raw.send("binding", server=list(COTURN), timeout=2)
    answer = raw.expect(lambda e: e["event"] in ("answer", "silence"), 5, "a Binding answer")
    assert answer["event"] == "answer", answer
    local = tuple(answer["local"])
    entry = lab.mappingFor(local, COTURN)
    assert entry is not None, lab.snapshot()
    assert tuple(answer["mapped"]) == entry.publicAddress
    assert entry.publicAddress[0] == netlab.NAT_OUTSIDE
    if mode == "eim":
        assert entry.publicAddress[1] == local[1]
    else:
        assert 20000 <= entry.publicAddress[1] <= 60000
    # coturn with two -L addresses advertises its RFC 5780 alternate.
    assert answer["otherAddress"] == [netlab.PUB_ADDR2, 3479]
    assert answer["responseOrigin"] == list(COTURN)


def test_randomModeGivesEachDestinationItsOwnPort(lab: NetLab, labCoturn: peerkit.RunningPeer, runDriver) -> None:
    """Address-and-port-dependent mapping: the same socket seen from coturn's two addresses has two ports."""
    lab.setMode("random")
    raw = runDriver(lab.lan, "rawstun.py", ["--bind", f"{netlab.LAN_ADDR}:0"])
    mapped = []
    for server in (COTURN, (netlab.PUB_ADDR2, 3478)):
        raw.send("binding", server=list(server), timeout=2)
        answer = raw.expect(lambda e: e["event"] in ("answer", "silence"), 5, "a Binding answer")
        assert answer["event"] == "answer", answer
        mapped.append(tuple(answer["mapped"]))
    assert mapped[0][0] == mapped[1][0] == netlab.NAT_OUTSIDE
    assert mapped[0][1] != mapped[1][1]


def test_bindingExpiresAfterSilenceAndSurvivesTraffic(
    lab: NetLab, labCoturn: peerkit.RunningPeer, runDriver, record_property
) -> None:
    """
    Random mode, UDP timeout T: Bindings every T/2 keep the port; after T + 2 s of silence the conntrack entry
    is gone and the next Binding gets a new port.  This is the expiry keepalives exist to prevent.
    """
    lab.setMode("random")
    raw = runDriver(lab.lan, "rawstun.py", ["--bind", f"{netlab.LAN_ADDR}:0"])

    def bind() -> tuple:
        raw.send("binding", server=list(COTURN), timeout=2)
        answer = raw.expect(lambda e: e["event"] in ("answer", "silence"), 5, "a Binding answer")
        assert answer["event"] == "answer", answer
        return tuple(answer["mapped"])

    first = bind()
    kept = []
    for _ in range(4):
        raw.collect(lab.udpTimeout / 2)
        kept.append(bind())
    assert set(kept) == {first}, "traffic every T/2 must keep the mapping"
    local = tuple(raw.history[0]["local"])
    # Silence: the entry disappears within T (+ conntrack's garbage collection slack).
    silentSince = time.monotonic()
    deadline = silentSince + lab.udpTimeout + 5
    while lab.mappingFor(local, COTURN) is not None:
        assert time.monotonic() < deadline, lab.snapshot()
        raw.collect(0.2)
    lifetime = time.monotonic() - silentSince
    record_property("bindingLifetimeAfterSilence", round(lifetime, 2))
    second = bind()
    assert second[0] == netlab.NAT_OUTSIDE
    assert second != first, "a binding re-created after expiry gets a new random port"
    assert lifetime >= lab.udpTimeout - 1.0


def test_unsolicitedDatagramsAreFiltered(lab: NetLab, labCoturn: peerkit.RunningPeer, runDriver) -> None:
    """
    A datagram from a pub address the lan host never talked to is not delivered (the router has no mapping for
    it); the same source after the lan host sent to it is.
    """
    raw = runDriver(lab.lan, "rawstun.py", ["--bind", f"{netlab.LAN_ADDR}:0"])
    raw.send("binding", server=list(COTURN), timeout=2)
    answer = raw.expect(lambda e: e["event"] in ("answer", "silence"), 5, "a Binding answer")
    public = answer["mapped"]
    stranger = (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        f"s.bind(('{netlab.PUB_ADDR2}', 40999)); s.sendto(b'hello', ('{public[0]}', {public[1]}))"
    )
    raw.send("listen", timeout=1.5)
    lab.run(lab.pub, [sys.executable, "-c", stranger])
    heard = raw.expect(lambda e: e["event"] in ("datagram", "silence"), 5, "listen result")
    assert heard["event"] == "silence", heard


def test_kamailioEdgeThroughTheNAT(lab: NetLab, labKamailio: peerkit.RunningPeer, runDriver) -> None:
    """Kamailio's stun module answers through the NAT with the public mapping and no FINGERPRINT."""
    raw = runDriver(lab.lan, "rawstun.py", ["--bind", f"{netlab.LAN_ADDR}:0"])
    raw.send("binding", server=list(KAMAILIO), timeout=2)
    answer = raw.expect(lambda e: e["event"] in ("answer", "silence"), 5, "a Binding answer")
    assert answer["event"] == "answer", answer
    entry = lab.mappingFor(tuple(answer["local"]), KAMAILIO)
    assert entry is not None and tuple(answer["mapped"]) == entry.publicAddress
    assert answer["fingerprint"] is False
    assert "kamailio" in (answer["software"] or "")


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_sippRegistersThroughTheNAT(lab: NetLab, labKamailio: peerkit.RunningPeer, tmp_path, transport: str) -> None:
    """SIPp in ``lan`` registers with the Kamailio edge in ``pub`` across the NAT (UDP and TCP)."""
    argv = peerkit.sippArgv(peerkit.SIPP_REGISTER, KAMAILIO, transport, netlab.LAN_ADDR, 15060)
    result = subprocess.run(lab.prefixFor(lab.lan) + argv, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"sipp exited {result.returncode}:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
