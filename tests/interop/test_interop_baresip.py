"""
baresip (a real RFC 5626 user agent) against the edge role on loopback, the client the issue found broken: it
registers with ``+sip.instance``, ``reg-id`` and ``Supported: outbound``, must get ``Require: outbound`` (without
it baresip sends no keepalives at all), then keeps its flow alive with STUN at the Flow-Timer's pace, receives
an OPTIONS proxied to it (the old edge sent requests without branch, which baresip dropped), and de-registers on
exit.  The edge runs in this process on the real reactor, so the test reads its registry and STUN counters.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any, List

import peerkit
import pytest
import pytest_twisted
from twisted.internet import defer, protocol, task

from twisted_sipnat.core.sip import Response, Via, parse
from twisted_sipnat.service.edge import EdgeRole

LOOPBACK = "127.0.0.1"
AOR = "sip:alice@example.com"
FLOW_TIMER = 2

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]


def _configure(directory: Path, sipPort: int, edgePort: int) -> None:
    (directory / "config").write_text(
        f"sip_listen\t{LOOPBACK}:{sipPort}\nmodule_path\t/usr/lib/baresip/modules\nmodule_tmp\tuuid.so\n"
        "module_tmp\taccount.so\nmodule\tg711.so\naudio_player\taufile,/dev/null\naudio_source\taufile,/dev/null\n"
    )
    (directory / "uuid").write_text(str(uuid.uuid4()))  # no newline: baresip puts it in the Contact verbatim
    (directory / "accounts").write_text(
        f'<{AOR};transport=udp>;outbound="sip:{LOOPBACK}:{edgePort};transport=udp";regint=120;sipnat=outbound;'
        "auth_pass=none\n"
    )


class _Collector(protocol.DatagramProtocol):
    def __init__(self) -> None:
        self.received: List[bytes] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.received.append(data)


async def _until(condition: Any, reactor: Any, timeout: float, what: str) -> None:
    waited = 0.0
    while not condition():
        await task.deferLater(reactor, 0.05, lambda: None)
        waited += 0.05
        assert waited < timeout, f"{what} did not happen within {timeout} s"


@pytest_twisted.ensureDeferred
async def test_baresipRegistersWithOutboundKeepsAliveAndReceivesAProxiedMessage(tmp_path: Path) -> None:
    from twisted.internet import reactor

    baresip = peerkit.requireTool("baresip", "baresip")
    edge = EdgeRole(reactor, udp=(0, LOOPBACK), domain="example.com", host=LOOPBACK, flowTimer=FLOW_TIMER)
    edge.startService()
    edgePort = edge.udp.address()[1]
    _configure(tmp_path, peerkit.freePort(LOOPBACK), edgePort)
    log = open(tmp_path / "baresip.log", "wb")
    agent = subprocess.Popen([baresip, "-f", str(tmp_path), "-t", "30"], stdin=subprocess.DEVNULL, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
    collector = _Collector()
    port = reactor.listenUDP(0, collector, interface=LOOPBACK)
    try:
        now = reactor.seconds
        await _until(lambda: edge.registry.lookup(AOR, now()), reactor, 10, "baresip's registration")
        binding = edge.registry.lookup(AOR, now())[0]
        assert binding.outbound, "keyed by +sip.instance and reg-id (RFC 5626 §6)"
        answered = edge.shared.stats["stun.requests.answered"]
        await _until(lambda: edge.shared.stats["stun.requests.answered"] >= answered + 2, reactor, 3 * FLOW_TIMER + 2,
                     "two STUN keepalives from baresip")
        me = port.getHost().port
        options = (
            f"OPTIONS {AOR} SIP/2.0\r\nVia: SIP/2.0/UDP {LOOPBACK}:{me};branch=z9hG4bKbs1;rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:bob@example.com>;tag=b1\r\nTo: <{AOR}>\r\nCall-ID: bs1@test\r\n"
            "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        port.write(options, (LOOPBACK, edgePort))
        await _until(lambda: collector.received, reactor, 5, "baresip's answer to the proxied OPTIONS")
        answer = parse(collector.received[0])
        assert isinstance(answer, Response) and answer.headers.get("Call-ID") == "bs1@test"
        assert answer.code == 200, answer.startLine
        assert "baresip" in (answer.headers.get("Server") or ""), "answered by baresip, not by the edge"
        assert [Via.parse(v).branch for v in answer.headers.getAll("Via")] == ["z9hG4bKbs1"], "the edge's Via popped"
        agent.terminate()  # baresip de-registers on the way out
        await _until(lambda: not edge.registry.lookup(AOR, now()), reactor, 10, "baresip's de-registration")
    finally:
        if agent.poll() is None:
            agent.kill()
        agent.wait()
        log.close()
        await defer.maybeDeferred(port.stopListening)
        await edge.stopService()
