"""
Issue 6 item 5: the twistd **client role** in ``lan`` against the twistd **edge role** in ``pub``, through the
real netfilter NAT: register, keep alive, survive a NAT rebinding by registering again.

Both roles run as real ``twistd -n sipnat client|edge ...`` processes (drivers/twistdrole.py: exactly the
operator's command line, plus a ``--logger`` that writes each log event as a JSON line).  What the test knows, it
reads from the two processes' structured logs — the edge's ``sipnat.edge.registered`` (its registry took the
Contact), the client's ``sipnat.client.*`` events and the controller's ``keepalive.answered`` /
``public.address.changed`` / ``flow.failure`` — and from the router's conntrack table, which must agree.

A rebinding is registered again at once; the client still runs with ``--backoff-base 2`` so that a real failure
would be retried after 2-4 s instead of the RFC 5626 §4.5 30-60 s.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import netlab
import pytest
from netlab import Driver, NetLab

pytestmark = [pytest.mark.lab, pytest.mark.timeout(90)]

# Not 5060: the session's Kamailio (conftest.labKamailio) holds 203.0.113.20:5060.
EDGE = (netlab.PUB_ADDR, 5062)
CLIENT = (netlab.LAN_ADDR, 5060)
DOMAIN = "example.com"
AOR = f"alice@{DOMAIN}"
FLOW_TIMER = 1
BACKOFF_BASE = 2

# Found by this module (fixed then in the edge's Twisted-based registrar; today core.sip.Via.receivedFrom, which
# the edge's own proxy stamps every request's top Via with): twisted.protocols.sip's
# Base._fixupNAT leaves a bare ``rport`` (RFC 3581) unfilled when the source port equals the Via port but the host
# differs — exactly what a port-preserving NAT produces — so deliverResponse sent the 200 OK to port ``True``, i.e. 1.
RPORT_BUG = (
    "edge role (its top-Via stamping, core.sip.Via.receivedFrom): behind a "
    "port-preserving NAT "
    "the Via keeps a bare ';rport' (received= is set, rport= is not, because the port did not change), and "
    "deliverResponse sends the REGISTER 200 OK to port True == 1, so the client never registers"
)

RoleEvent = Dict[str, Any]


class ResponseSentToPortOne(AssertionError):
    """The REGISTER 200 never reached the client, and the router shows the edge sent it to port 1 (RPORT_BUG)."""


def startEdge(runDriver: Callable[..., Driver], lab: NetLab) -> Driver:
    return runDriver(
        lab.pub,
        "twistdrole.py",
        ["edge", "--udp", f"udp:{EDGE[1]}:interface={EDGE[0]}", "--tcp", "none", "--domain", DOMAIN,
         "--flow-timer", str(FLOW_TIMER)],
        name="twistd sipnat edge",
    )


def startClient(runDriver: Callable[..., Driver], lab: NetLab) -> Driver:
    return runDriver(
        lab.lan,
        "twistdrole.py",
        ["client", "--listen", f"udp:{CLIENT[1]}:interface={CLIENT[0]}", "--next-hop", f"{EDGE[0]}:{EDGE[1]}",
         "--register", AOR, "--interval", "1", "--backoff-base", str(BACKOFF_BASE), "--no-outbound"],
        name="twistd sipnat client",
    )


def named(name: str) -> Callable[[RoleEvent], bool]:
    return lambda e: e.get("event") == name


def hostPort(event: RoleEvent) -> Tuple[str, int]:
    fields = event["fields"]
    return (fields["host"], fields["port"])


def failuresIn(events: List[RoleEvent]) -> List[RoleEvent]:
    return [e for e in events if e.get("event") in ("flow.failure", "sipnat.client.flowFailure", "sipnat.client.failed")
            or e.get("failure")]


def registration(client: Driver, edge: Driver, lab: NetLab, timeout: float) -> Tuple[str, int]:
    """
    One full registration as both logs and the router tell it: the client's public address (from STUN on the
    edge's SIP port), the edge's registry entry for exactly that Contact, the client's 200 with the edge's
    Flow-Timer, keepalives started; and conntrack's mapping for client → edge is that public address.
    """
    public = hostPort(client.expect(named("sipnat.client.publicAddress"), timeout, "the client's public address"))
    assert public[0] == netlab.NAT_OUTSIDE
    try:
        registered = client.expect(named("sipnat.client.registered"), 4.0, "the client's REGISTER 200")
    except AssertionError as e:
        misdirected = [c for c in lab.conntrackEntries() if c.origSrc == EDGE and c.origDst == (netlab.NAT_OUTSIDE, 1)]
        if misdirected:
            raise ResponseSentToPortOne(f"the edge answered REGISTER to port 1: {misdirected}") from None
        raise AssertionError(f"{e}\nrouter: {lab.snapshot()}") from None
    assert registered["fields"]["flowTimer"] == FLOW_TIMER, registered
    client.expect(named("sipnat.client.keepalive.started"), 2.0, "keepalives started")
    stored = edge.expect(named("sipnat.edge.registered"), 2.0, "the edge's registry entry")
    assert stored["fields"]["aor"] == f"sip:{AOR}"
    assert stored["fields"]["contact"] == f"sip:alice@{public[0]}:{public[1]}", stored
    entry = lab.mappingFor(CLIENT, EDGE)
    assert entry is not None and entry.publicAddress == public, lab.snapshot()
    return public


def keepalivesAnswered(client: Driver, lab: NetLab, public: Tuple[str, int], duration: float) -> int:
    """
    Watch ``duration`` seconds of SIP silence: every keepalive is answered by the edge with ``public`` as the
    mapped address, nothing fails, and the router keeps the very same mapping (it would expire after
    ``lab.udpTimeout`` without the keepalives).  Returns how many keepalives were answered.
    """
    answered = 0
    end = time.monotonic() + duration
    while time.monotonic() < end:
        events = client.collect(min(1.0, max(0.0, end - time.monotonic())))
        assert failuresIn(events) == [], events
        for event in events:
            if event.get("event") == "keepalive.answered":
                assert hostPort(event) == public, event
                answered += 1
        entry = lab.mappingFor(CLIENT, EDGE)
        assert entry is not None and entry.publicAddress == public, lab.snapshot()
    return answered


@pytest.mark.parametrize(
    ("mode", "rebind"),
    [
        ("random", "flush"),
        ("eim", "modeChange"),  # port-preserving: the case RPORT_BUG broke
    ],
)
def test_clientRoleRegistersKeepsAliveAndReregistersAfterRebinding(
    lab: NetLab, runDriver: Callable[..., Driver], record_property: Any, mode: str, rebind: str
) -> None:
    """
    ``twistd sipnat client --register alice@example.com --next-hop 203.0.113.20:5062 --interval 1`` in ``lan``,
    ``twistd sipnat edge --udp udp:5062:interface=203.0.113.20 --flow-timer 1`` in ``pub``:

    1. the client learns its public address from the edge's SIP port (the edge answers STUN there), REGISTERs it,
       the edge's registry stores exactly that Contact, and the 200's Flow-Timer (1 s) sets the keepalive
       interval; conntrack's mapping is that public address;
    2. for more than one conntrack timeout (3 s) of SIP silence, STUN keepalives every 0.8-1 s are answered with
       the same mapped address, and the router keeps the same mapping;
    3. the router rebinds — ``conntrack -F`` with random ports, or a switch from port-preserving to random
       masquerade — and the next keepalive sees a new mapped address: ``MappedAddressChanged`` (the client logs
       the flow failure) within about one keepalive interval;
    4. the path works, only the mapping moved, so the client REGISTERs the new address at once (issue 14: no
       backoff, ``sipnat.client.rebound``) — the edge's registry is updated to it — and its keepalives are
       answered from the new mapping, which is what conntrack holds.

    ``--no-outbound``: this is the role without RFC 5626 outbound (a STUN answer first, the public address as
    the Contact); tests/lab/test_lab_kamailio_ua.py runs it with outbound.

    ``eim`` is the port-preserving NAT that ``RPORT_BUG`` broke.
    """
    lab.setMode(mode)
    edge = startEdge(runDriver, lab)
    client = startClient(runDriver, lab)

    first = registration(client, edge, lab, timeout=5.0)
    if mode == "eim":
        assert first[1] == CLIENT[1], "port-preserving masquerade keeps the source port"
    answered = keepalivesAnswered(client, lab, first, duration=lab.udpTimeout + 0.5)
    assert answered >= 3, f"{answered} keepalives answered in {lab.udpTimeout + 0.5} s with Flow-Timer 1"

    if rebind == "flush":
        lab.flushConntrack()
    else:
        lab.setMode("random")
    reboundAt = time.monotonic()
    changed = client.expect(named("public.address.changed"), FLOW_TIMER + 1.0, "the rebinding seen by a keepalive")
    detectedAfter = changed["t"] - reboundAt
    record_property("rolesRebindingDetectedAfter", round(detectedAfter, 3))
    assert detectedAfter <= FLOW_TIMER + 0.3
    old, new = changed["fields"]["old"], changed["fields"]["new"]
    assert tuple(old) == first and tuple(new) != first, changed
    failure = client.expect(named("flow.failure"), 1.0, "the flow failure")
    assert failure["fields"]["failure_type"] == "MappedAddressChanged", failure
    client.expect(named("sipnat.client.flowFailure"), 1.0, "the client role's flow failure")
    # Issue 14: a changed public address is registered at once (no backoff: the path works, only the mapping
    # moved), once, with the new address as the Contact.
    rebound = client.expect(named("sipnat.client.rebound"), 1.0, "the re-registration of the new address")
    assert (rebound["fields"]["host"], rebound["fields"]["port"]) == tuple(new), rebound
    second = registration(client, edge, lab, timeout=2.0)
    reregisteredAfter = time.monotonic() - reboundAt
    record_property("rolesReregisteredAfter", round(reregisteredAfter, 2))
    assert second != first and second == tuple(new)
    assert reregisteredAfter <= FLOW_TIMER + 2.0, "registered again within the detection and one round trip"
    # Keepalives resume from the new mapping: answered with it, and conntrack holds it.
    assert keepalivesAnswered(client, lab, second, duration=2.5) >= 2


#: The second address the host gets in ``test_clientRoleHearsANetworkChange`` (the "network change").
NEW_ADDRESS = "192.0.2.13"


def test_clientRoleHearsANetworkChangeAndRegistersTheRebindingAtOnce(
    lab: NetLab, runDriver: Callable[..., Driver], tmp_path: Path, record_property: Any
) -> None:
    """
    Issue 14: "a rebinding is noticed only at the next keepalive, up to 25 s later".  The client role with
    outbound (the default) and ``--network-poll 0.5`` against the edge role with ``--flow-timer 20`` (keepalives
    every 16-20 s).  The host's network changes (an address is added in ``lan``) while the router rebinds
    (``conntrack -F`` with random ports): the watcher calls ``networkChanged()``, the flow's STUN keepalive goes
    out at once, its answer shows the new mapping, and the role registers the new flow at once: within the poll
    and a few round trips, not at the next scheduled keepalive.
    """
    lab.setMode("random")
    runDriver(lab.pub, "twistdrole.py",
                     ["edge", "--udp", f"udp:{EDGE[1]}:interface={EDGE[0]}", "--tcp", "none", "--domain", DOMAIN,
                      "--flow-timer", "20"], name="twistd sipnat edge")
    client = runDriver(lab.lan, "twistdrole.py",
                       ["client", "--listen", f"udp:{CLIENT[1]}:interface={CLIENT[0]}", "--next-hop",
                        f"{EDGE[0]}:{EDGE[1]}", "--register", AOR, "--state-dir", str(tmp_path / "state"),
                        "--network-poll", "0.5"], name="twistd sipnat client")
    first = client.expect(named("sipnat.client.registered"), 5.0, "the REGISTER 200")
    assert first["fields"]["flowTimer"] == 20, first
    client.expect(named("sipnat.client.keepalive.started"), 2.0, "keepalives started")
    before = lab.mappingFor(CLIENT, EDGE)
    assert before is not None, lab.snapshot()
    time.sleep(1.0)  # well inside the 16-20 s until the next scheduled keepalive
    lab.flushConntrack()
    lab.run(lab.lan, ["ip", "addr", "add", f"{NEW_ADDRESS}/24", "dev", lab.lanIf])
    changedAt = time.monotonic()
    try:
        heard = client.expect(named("sipnat.netwatch.changed"), 2.0, "the watcher's change")
        changed = client.expect(named("public.address.changed"), 2.0, "the rebinding, seen at once")
        client.expect(named("sipnat.client.rebound"), 1.0, "the new flow registered at once")
        again = client.expect(named("sipnat.client.registered"), 2.0, "the REGISTER 200 of the new flow")
        reregisteredAfter = time.monotonic() - changedAt
    finally:
        lab.run(lab.lan, ["ip", "addr", "del", f"{NEW_ADDRESS}/24", "dev", lab.lanIf], check=False)
    record_property("rolesNetworkChangeHeardAfter", round(heard["t"] - changedAt, 3))
    record_property("rolesNetworkChangeReregisteredAfter", round(reregisteredAfter, 2))
    assert tuple(changed["fields"]["old"]) == before.publicAddress, (changed, before)
    assert tuple(changed["fields"]["new"]) != before.publicAddress, changed
    assert again["fields"]["flow"] == 1 and reregisteredAfter < 3.0, (again, reregisteredAfter)
    after = lab.mappingFor(CLIENT, EDGE)
    assert after is not None and after.publicAddress == tuple(changed["fields"]["new"]), lab.snapshot()
