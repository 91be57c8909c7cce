"""
RFC 5780 NAT behaviour discovery through the lab's real netfilter NAT (issue 6): ``discoverNATBehaviour`` from
a socket in ``lan`` (drivers/discoverer.py) against two servers in ``pub`` that have two addresses each —

- our own ``twistd sipnat stun --udp udp:5478:interface=203.0.113.20 --alternate 203.0.113.21:5479`` (four
  sockets: both IPs × both ports, CHANGE-REQUEST answered from the socket it names), and
- coturn listening on 203.0.113.20 and .21 (OTHER-ADDRESS 203.0.113.21:3479);

and for each of the router's two masquerade variants, the answer must name what netfilter really does.

What netfilter does (and therefore what RFC 4787 / RFC 5780 call it):

*Mapping.*  A NAT mapping is a conntrack entry; each new 5-tuple (lan address:port → remote address:port) gets
its own entry, and MASQUERADE picks the entry's public port in ``get_unique_tuple``:

- ``eim`` (plain ``MASQUERADE``): the source port is kept whenever the resulting reply tuple is unused — and it
  is, because each remote address:port makes the reply tuple distinct.  So every destination sees the same
  public address:port: **endpoint-independent** mapping (as long as no other lan host holds that port toward
  the same remote; none does here).
- ``random`` (``MASQUERADE --to-ports 20000-60000 --random``): ``NF_NAT_RANGE_PROTO_RANDOM`` skips the
  "keep the port" shortcut, so every new conntrack entry — every new remote address *or* port — gets a fresh
  random port: tests II (other IP) and III (other IP and port) each see a different port, which RFC 5780 §4.3
  names **address-and-port-dependent** mapping.

*Filtering.*  Linux NAT has no filtering knob: an inbound datagram is translated to the lan host only when it
matches the reply tuple of an existing conntrack entry, i.e. comes from exactly the remote address *and* port
the lan host sent to.  Anything else is addressed to the router itself (no socket there: dropped with an ICMP
port unreachable) and leaves an ``[UNREPLIED]`` conntrack entry behind.  So both CHANGE-REQUEST answers (from
the other IP and port, and from the same IP with the other port) are dropped in both modes:
**address-and-port-dependent** filtering.  An endpoint-independent ("full cone") filter would need an
out-of-tree module; address-dependent filtering cannot be configured with iptables MASQUERADE at all.

The tests check more than the verdict: the mapped addresses the library saw are the ones conntrack allocated,
the router's ``[UNREPLIED]`` entries prove the server did send both CHANGE-REQUEST answers (so "filtered" is the
router's doing, not a server that ignores CHANGE-REQUEST — the no-NAT control shows the same answers arriving),
and the driver's receive counters show which of the server's addresses got through.

``retransmissions=3`` with ``rto=0.1``: a filtered probe gives up after 0.3 + 16 × 0.1 = 1.9 s (RFC 8489
§6.2.1 timing), so one discovery through the NAT takes about 4 s.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, Tuple

import netlab
import pytest
from netlab import Driver, NetLab

pytestmark = [pytest.mark.lab, pytest.mark.timeout(90)]

EI = "endpoint-independent"
AD = "address-dependent"
APD = "address-and-port-dependent"

RETRANSMISSIONS = 3
RTO = 0.1
# A filtered probe's wait: sends at 0, RTO, 3 RTO, then Rm = 16 RTOs (RFC 8489 §6.2.1).
PROBE_BUDGET = 3 * RTO + 16 * RTO

HostPort = Tuple[str, int]

SERVERS: Dict[str, Tuple[HostPort, HostPort]] = {
    # name: (primary, OTHER-ADDRESS)
    "twistd-stun": ((netlab.PUB_ADDR, 5478), (netlab.PUB_ADDR2, 5479)),
    "coturn": ((netlab.PUB_ADDR, 3478), (netlab.PUB_ADDR2, 3479)),
}

# What the router does in each mode (module docstring): (mapping, filtering).
NAT_BEHAVIOUR = {"eim": (EI, APD), "random": (APD, APD)}


def startServer(name: str, lab: NetLab, runDriver: Callable[..., Driver], request: pytest.FixtureRequest) -> None:
    """Make sure server ``name`` runs in ``pub`` (coturn: the session fixture; our stun role: a twistd process)."""
    if name == "coturn":
        request.getfixturevalue("labCoturn")
        return
    primary, other = SERVERS[name]
    runDriver(
        lab.pub,
        "twistdrole.py",
        ["stun", "--udp", f"udp:{primary[1]}:interface={primary[0]}", "--alternate", f"{other[0]}:{other[1]}",
         "--software", "twisted_sipnat lab"],
        name="twistd sipnat stun",
    )


def discover(runDriver: Callable[..., Driver], ns: str, bindHost: str, server: HostPort) -> Tuple[Driver, Dict[str, Any]]:
    """Run one discovery from a fresh socket in ``ns``; returns the driver and its ``discovered`` event."""
    driver = runDriver(ns, "discoverer.py", ["--bind", f"{bindHost}:0", "--settings", json.dumps({"rto": RTO})])
    driver.send("discover", server=list(server), retransmissions=RETRANSMISSIONS)
    result = driver.expect(lambda e: e["event"] in ("discovered", "discoverError"), 30.0, "the discovery result")
    assert result["event"] == "discovered", result
    return driver, result


@pytest.mark.parametrize("server", sorted(SERVERS))
@pytest.mark.parametrize("mode", ["eim", "random"])
def test_discoveryNamesTheNATsBehaviour(
    lab: NetLab, runDriver: Callable[..., Driver], request: pytest.FixtureRequest, record_property: Any,
    mode: str, server: str,
) -> None:
    """
    ``eim`` → mapping endpoint-independent, filtering address-and-port-dependent; ``random`` → mapping and
    filtering address-and-port-dependent (why: module docstring), and the router's table agrees with every
    address the discovery saw.
    """
    lab.setMode(mode)
    # Keep the [UNREPLIED] entries the filtered answers leave for the whole run (they are the evidence that the
    # server sent them); the autouse reset restores the 3 s timeout.
    lab.setUdpTimeout(30)
    startServer(server, lab, runDriver, request)
    primary, other = SERVERS[server]
    driver, result = discover(runDriver, lab.lan, netlab.LAN_ADDR, primary)
    record_property(f"discovery[{mode}-{server}]", f"{result['mapping']} / {result['filtering']}")
    record_property(f"discoverySeconds[{mode}-{server}]", round(result["duration"], 2))

    local = tuple(result["localAddress"])
    mapped = tuple(result["mappedAddress"])
    assert result["natPresent"] is True and local[0] == netlab.LAN_ADDR, result
    assert tuple(result["otherAddress"]) == other, result
    expectedMapping, expectedFiltering = NAT_BEHAVIOUR[mode]
    assert (result["mapping"], result["filtering"]) == (expectedMapping, expectedFiltering), (result, lab.snapshot())

    # Mapping, as the router allocated it: test I's mapped address is conntrack's for local → primary ...
    testI = lab.mappingFor(local, primary)
    assert testI is not None and testI.publicAddress == mapped, lab.snapshot()
    # ... test II (other IP, primary port) got the same port with eim, another with random ...
    testII = lab.mappingFor(local, (other[0], primary[1]))
    assert testII is not None, lab.snapshot()
    testIII = lab.mappingFor(local, other)
    if mode == "eim":
        assert mapped[1] == local[1], "port-preserving masquerade keeps the source port"
        assert testII.publicAddress == mapped, lab.snapshot()
        assert testIII is None, "test III is not needed once tests I and II agree (RFC 5780 §4.3)"
    else:
        assert testII.publicAddress != mapped, lab.snapshot()
        # ... and test III (other IP and port) yet another one.
        assert testIII is not None, lab.snapshot()
        assert testIII.publicAddress not in (mapped, testII.publicAddress), lab.snapshot()

    # Filtering: both CHANGE-REQUEST answers reached the router, addressed to test I's mapping, and stopped there.
    dropped = {e.origSrc for e in lab.conntrackEntries() if e.origDst == mapped and "UNREPLIED" in e.flags}
    assert other in dropped, f"no change-IP-and-port answer from {other} reached the router: {lab.snapshot()}"
    assert (primary[0], other[1]) in dropped, f"no change-port answer reached the router: {lab.snapshot()}"
    received = driver.call("received", "received")["sources"]
    heardFrom = {tuple(key.rsplit(":", 1)) for key in received}
    expectedSources = {primary, (other[0], primary[1])} | ({other} if mode == "random" else set())
    assert heardFrom == {(h, str(p)) for h, p in expectedSources}, received


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_withoutANATTheSameServersAnswerEveryChangeRequest(
    lab: NetLab, runDriver: Callable[..., Driver], request: pytest.FixtureRequest, server: str
) -> None:
    """
    The control: discovery from ``pub`` itself (no NAT on the path) reports no NAT, endpoint-independent mapping
    and endpoint-independent filtering — both servers really answer CHANGE-REQUEST from the address it names, so
    the address-and-port-dependent filtering seen through the router is the router's.
    """
    startServer(server, lab, runDriver, request)
    primary, other = SERVERS[server]
    driver, result = discover(runDriver, lab.pub, netlab.PUB_ADDR, primary)
    assert result["natPresent"] is False, result
    assert tuple(result["mappedAddress"]) == tuple(result["localAddress"])
    assert (result["mapping"], result["filtering"]) == (EI, EI), result
    # Filtering test II was answered from OTHER-ADDRESS, so test III was not needed (RFC 5780 §4.4).
    assert f"{other[0]}:{other[1]}" in driver.call("received", "received")["sources"]
    assert result["duration"] < PROBE_BUDGET, "no probe had to time out"


def test_discoveryRefusesAServerWithoutAnAlternateAddress(lab: NetLab, runDriver: Callable[..., Driver], responder: Driver) -> None:
    """
    Our responder role with one address (``SharedDatagramProtocol(stunResponder=True)`` on 203.0.113.20:4478)
    sends no OTHER-ADDRESS: discovery through the NAT fails at once with a ``NATTraversalError`` that says so,
    instead of probing and guessing.
    """
    driver = runDriver(lab.lan, "discoverer.py", ["--bind", f"{netlab.LAN_ADDR}:0", "--settings", json.dumps({"rto": RTO})])
    driver.send("discover", server=[netlab.PUB_ADDR, 4478], retransmissions=RETRANSMISSIONS)
    result = driver.expect(lambda e: e["event"] in ("discovered", "discoverError"), 10.0, "the discovery result")
    assert result["event"] == "discoverError", result
    assert result["type"] == "NATTraversalError" and "OTHER-ADDRESS" in result["message"], result
    assert result["duration"] < 1.0, "refused after test I, without waiting for probes"
