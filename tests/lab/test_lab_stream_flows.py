"""
The twistd client role's TCP flow through the real netfilter NAT: ``twistd sipnat client --transport tcp`` in
``lan`` against ``twistd sipnat edge --tcp ...`` in ``pub``, with the router's idle timeout for established TCP
connections cut to 3 s (the kernel's is five days; home routers' are minutes).

The client registers over the connection it made, the edge's 200 says ``Flow-Timer: 1``, and the CRLF pings every
0.8-1 s on that connection (RFC 5626 §4.4.1) keep the router's entry alive across several of its timeouts: the
same entry (the same public port) all along, every ping answered by a pong, no flow failure.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import netlab
import pytest
from netlab import Driver, NetLab

pytestmark = [pytest.mark.lab, pytest.mark.timeout(90)]

# Not 5060 (the session's Kamailio) nor 5062 (test_lab_roles' edge).
EDGE = (netlab.PUB_ADDR, 5064)
DOMAIN = "example.com"
TCP_TIMEOUT = 3


def _hostPort(text: str) -> Tuple[str, int]:
    host, _, port = text.rpartition(":")
    return (host.strip("[]"), int(port))


def _failures(events: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [e for e in events if e.get("event") in ("flow.failure", "sipnat.client.flowFailure", "sipnat.client.failed")
            or e.get("failure")]


def test_a_tcp_flow_survives_several_conntrack_timeouts_on_crlf_pings(
        lab: NetLab, runDriver: Callable[..., Driver], tmp_path: Path, record_property: Any) -> None:
    lab.setMode("random")
    lab.setTcpEstablishedTimeout(TCP_TIMEOUT)
    try:
        edge = runDriver(lab.pub, "twistdrole.py",
                         ["edge", "--udp", f"udp:{EDGE[1]}:interface={EDGE[0]}",
                          "--tcp", f"tcp:{EDGE[1]}:interface={EDGE[0]}", "--domain", DOMAIN, "--flow-timer", "1"],
                         name="twistd sipnat edge")
        client = runDriver(lab.lan, "twistdrole.py",
                           ["client", "--listen", f"udp:0:interface={netlab.LAN_ADDR}",
                            "--next-hop", f"{EDGE[0]}:{EDGE[1]}", "--register", f"alice@{DOMAIN}",
                            "--transport", "tcp", "--state-dir", str(tmp_path / "state"), "--backoff-base", "2"],
                           name="twistd sipnat client")
        connected = client.expect(lambda e: e.get("event") == "sipnat.client.connected", 10.0, "the TCP connection")
        local = _hostPort(connected["fields"]["local"])
        assert local[0] == netlab.LAN_ADDR, connected
        registered = client.expect(lambda e: e.get("event") == "sipnat.client.registered", 5.0, "the REGISTER 200")
        assert registered["fields"]["flowTimer"] == 1, registered
        stored = edge.expect(lambda e: e.get("event") == "sipnat.edge.registered", 2.0, "the edge's binding")
        assert stored["fields"]["contact"].endswith(";transport=tcp;ob"), stored
        entry = lab.mappingFor(local, EDGE, proto="tcp")
        assert entry is not None and entry.publicAddress[0] == netlab.NAT_OUTSIDE, lab.conntrackEntries("tcp")
        public = entry.publicAddress

        duration = 3 * TCP_TIMEOUT + 1.0
        pings = pongs = 0
        end = time.monotonic() + duration
        while time.monotonic() < end:
            events = client.collect(min(1.0, max(0.0, end - time.monotonic())))
            assert _failures(events) == [], events
            pings += sum(1 for e in events if e.get("event") == "keepalive.sent")
            pongs += sum(1 for e in events if e.get("event") == "keepalive.answered")
            now = lab.mappingFor(local, EDGE, proto="tcp")
            assert now is not None and now.publicAddress == public, lab.conntrackEntries("tcp")
        record_property("tcpPingsAnswered", pongs)
        assert pongs >= 3 * TCP_TIMEOUT, f"{pongs} pongs in {duration} s with Flow-Timer 1 ({pings} pings logged)"
    finally:
        lab.setTcpEstablishedTimeout(None)
