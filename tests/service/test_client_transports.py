"""
The client role over TCP and TLS (``--transport``), on the simulated network with a test-made endpoint: it
registers first (no STUN inside a SIP stream), keeps the connection alive with CRLF pings, and a lost connection
is a flow failure the role recovers from with a new connection after the RFC 5626 §4.5 backoff.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pytest

from twisted_sipnat import NATSettings
from twisted_sipnat.errors import InvalidSettingsError
from twisted_sipnat.service.client import ClientRole
from twisted_sipnat.service.flowtransport import FlowTransport, serverIdentity, streamEndpoint
from twisted_sipnat.service.options import Options, clientArguments
from twisted_sipnat.service.sipclient import RegisterClient
from twisted_sipnat.service.sipstreamclient import StreamRegisterClient

from .streamkit import INSTANCE, REGISTRAR, Endpoint, answer
from .support import NetReactor


def tcpRole(net: NetReactor, transport: str = "tcp", instance: Optional[str] = INSTANCE) -> Any:
    settings = {"default": NATSettings(udpKeepaliveInterval=10.0)}
    role = ClientRole(net, REGISTRAR, settings, "default", listen=(0, "127.0.0.1"), register="alice@example.com",
                      instance=instance, random=lambda: 0.0, transport=FlowTransport(transport))
    client = role.registerClient
    assert isinstance(client, StreamRegisterClient)
    endpoint = Endpoint()
    client.endpointFor = endpoint
    return role, client, endpoint


def test_the_role_registers_over_tcp_first_and_keeps_the_connection_alive() -> None:
    net = NetReactor()
    role, client, endpoint = tcpRole(net)
    role.startService()
    conn = endpoint.last.accept()
    [request] = conn.requests()
    assert request.headers.get("Via", "").startswith("SIP/2.0/TCP ")
    assert not [d for d, _, dst in net.sent if dst == REGISTRAR], "nothing over UDP: no STUN inside a stream"
    conn.receive(answer(request, flowTimer=20, Require="outbound"))
    assert role.flowTimer == 20 and role.keepalivesStarted == 1 and role.ready.called
    assert role.controller.isKeepingAlive(role.observer)
    assert role.controller.flowCountByTransport()["tcp"] == 1
    net.advance(20)
    conn.requests()
    assert conn.pings == 1  # RFC 5626 §4.4.1: a CRLFCRLF ping on the very connection that registered
    conn.receive(b"\r\n")
    assert role.failures == 0
    role.stopService()
    assert conn.closed
    conn.lose()
    for port in list(net.ports.values()):
        port.stopListening()
    assert net.getDelayedCalls() == []


def test_a_lost_connection_is_a_flow_failure_recovered_with_a_new_connection() -> None:
    net = NetReactor()
    role, client, endpoint = tcpRole(net)
    role.startService()
    conn = endpoint.last.accept()
    conn.receive(answer(conn.requests()[0], flowTimer=20))
    conn.lose()
    assert role.failures == 1 and role.retryAt is not None  # FlowConnectionLost, from the controller
    net.advance(role.retryAt - net.seconds())
    assert len(endpoint.connections) == 2
    second = endpoint.last.accept(("10.0.0.2", 40002))
    second.receive(answer(second.requests()[0], flowTimer=20))
    assert role.keepalivesStarted == 2 and role.controller.isKeepingAlive(role.observer)
    role.stopService()
    second.lose()
    for port in list(net.ports.values()):
        port.stopListening()
    assert net.getDelayedCalls() == []


def test_a_pong_timeout_drops_the_connection_and_the_next_attempt_makes_a_new_flow() -> None:
    net = NetReactor()
    role, client, endpoint = tcpRole(net)
    role.startService()
    conn = endpoint.last.accept()
    conn.receive(answer(conn.requests()[0], flowTimer=20))
    net.advance(20)  # a ping ...
    net.advance(NATSettings().pongTimeout)  # ... and no pong
    assert role.failures == 1 and conn.closed, "RFC 5626 §4.4.1: a failed flow's connection is not used again"
    conn.lose()
    assert role.failures == 1  # the loss of a connection already failed is not a second failure
    net.advance(role.retryAt - net.seconds())
    assert len(endpoint.connections) == 2
    role.stopService()
    for port in list(net.ports.values()):
        port.stopListening()
    assert net.getDelayedCalls() == []


def test_without_outbound_a_stream_flow_still_registers_first() -> None:
    net = NetReactor()
    role, client, endpoint = tcpRole(net, instance=None)
    role.startService()
    conn = endpoint.last.accept()
    [request] = conn.requests()
    assert "reg-id" not in (request.headers.get("Contact") or "")
    conn.receive(answer(request, flowTimer=20))
    assert role.keepalivesStarted == 1
    role.stopService()
    conn.lose()
    for port in list(net.ports.values()):
        port.stopListening()


def test_udp_stays_the_datagram_client_on_the_shared_socket() -> None:
    net = NetReactor()
    settings = {"default": NATSettings()}
    role = ClientRole(net, REGISTRAR, settings, "default", listen=(0, "127.0.0.1"), register="alice@example.com")
    assert isinstance(role.registerClient, RegisterClient)
    assert role.flowTransport == FlowTransport("udp")


def test_a_stream_flow_needs_an_AOR() -> None:
    with pytest.raises(InvalidSettingsError) as info:
        ClientRole(NetReactor(), REGISTRAR, {"default": NATSettings()}, "default", transport=FlowTransport("tcp"))
    assert info.value.key == "transport"


def parse(*args: str) -> Any:
    options = Options()
    options.parseOptions(["client", "--next-hop", "192.0.2.1:5061", *args])
    return options


def test_the_transport_options() -> None:
    options = parse("--transport", "TLS", "--register", "alice@example.com", "--no-outbound")
    assert clientArguments(options, options.subOptions)["transport"] == FlowTransport("tls")
    options = parse("--transport", "tls", "--no-verify", "--register", "alice@example.com", "--no-outbound")
    assert clientArguments(options, options.subOptions)["transport"] == FlowTransport("tls", verify=False)
    options = parse()
    assert clientArguments(options, options.subOptions)["transport"] == FlowTransport("udp")


@pytest.mark.parametrize("args, key", [
    (("--transport", "sctp"), "transport"),
    (("--no-verify",), "no-verify"),
    (("--transport", "tcp", "--ca-certs", "ca.pem"), "ca-certs"),
    (("--transport", "tls", "--ca-certs", "ca.pem", "--no-verify"), "no-verify"),
])
def test_bad_transport_options_are_one_line(args: Any, key: str) -> None:
    options = parse(*args)
    with pytest.raises(InvalidSettingsError) as info:
        clientArguments(options, options.subOptions)
    assert info.value.key == key and "\n" not in str(info.value)


def test_a_ca_file_without_a_certificate_is_refused_at_start(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    for path in (str(bad), str(tmp_path / "missing.pem")):
        with pytest.raises(InvalidSettingsError) as info:
            streamEndpoint(NetReactor(), FlowTransport("tls", path), "example.com")
        assert info.value.key == "ca-certs"
    bad.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(InvalidSettingsError) as info:
        streamEndpoint(NetReactor(), FlowTransport("tls", str(bad)), "example.com")
    assert "does not load" in info.value.why


def test_the_server_identity_is_the_next_hops_name_else_the_AORs_domain() -> None:
    # RFC 5922 §4.1: the domain the client set out to reach
    assert serverIdentity(("192.0.2.1", 5061), "alice@example.com") == "example.com"
    assert serverIdentity(("edge.example.net", 5061), "alice@example.com") == "edge.example.net"
