"""
The connection table in the shell (``streamlimits``, ``SharedStreamFactory(limits=...)``, ``STUNStreamFactory``)
and in the roles, on a Clock with StringTransports: evictions abort, one timer for every connection, the
figures, the options and their one-line errors, the open-file limit.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from typing import Any, List, Tuple

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from twisted_sipnat import SharedStreamFactory
from twisted_sipnat.core.connections import ConnectionLimits
from twisted_sipnat.core.responder import BindingResponder
from twisted_sipnat.errors import InvalidSettingsError
from twisted_sipnat.service.figures import Figures
from twisted_sipnat.service.limits import FILE_RESERVE, connectionLimits, defaultMaxConnections
from twisted_sipnat.service.options import Options, connectionLimitArguments, edgeArguments, stunArguments
from twisted_sipnat.service.stunstream import STUN_STREAM_MAX_MESSAGE, STUNStreamFactory
from twisted_sipnat.streamlimits import RefusedConnection

REGISTER = (
    b"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.10:40000;branch=z9hG4bK1\r\n"
    b"From: <sip:alice@example.com>;tag=1\r\nTo: <sip:alice@example.com>\r\nCall-ID: c1@192.0.2.10\r\n"
    b"CSeq: 1 REGISTER\r\nContact: <sip:alice@192.0.2.10:40000;transport=tcp>\r\nContent-Length: 0\r\n\r\n"
)


class Recorder(Protocol):
    def __init__(self) -> None:
        self.received: List[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)


def connect(factory: Any, host: str = "192.0.2.10", port: int = 40000) -> Tuple[Any, StringTransport]:
    """What a listening port does with a new connection: buildProtocol, then makeConnection."""
    address = IPv4Address("TCP", host, port)
    transport = StringTransport(peerAddress=address, hostAddress=IPv4Address("TCP", "198.51.100.1", 5060))
    protocol = factory.buildProtocol(address)
    protocol.makeConnection(transport)
    return protocol, transport


def lose(protocol: Any) -> None:
    protocol.connectionLost(Failure(ConnectionDone()))


def sipFactory(clock: Clock, **limits: Any) -> SharedStreamFactory:
    return SharedStreamFactory(Factory.forProtocol(Recorder), pongResponder=True,
                               limits=ConnectionLimits(**limits), clock=clock)


def test_without_limits_there_is_no_table() -> None:
    factory = SharedStreamFactory(Factory.forProtocol(Recorder), pongResponder=True)
    assert factory.limiter is None
    protocols = [connect(factory, port=40000 + i)[0] for i in range(50)]
    assert all(p is not None for p in protocols)
    figures = Figures()
    factory.reportFigures(figures)
    assert figures.values == {}


def test_a_full_table_evicts_the_oldest_idle_connection_by_aborting_it(clock: Clock) -> None:
    factory = sipFactory(clock, maxConnections=3)
    clients = [connect(factory, port=40000 + i) for i in range(3)]
    first, _ = clients[0]
    first.dataReceived(REGISTER)  # completed a message: kept
    newcomer, _ = connect(factory, port=41000)
    assert newcomer is not None
    assert clients[1][1].disconnecting and not clients[0][1].disconnecting and not clients[2][1].disconnecting
    assert len(factory.limiter.table) == 3  # type: ignore[union-attr]
    for protocol, _ in clients:
        lose(protocol)
    lose(newcomer)
    assert clock.getDelayedCalls() == []


def test_refused_when_every_connection_completed_a_message(clock: Clock) -> None:
    factory = sipFactory(clock, maxConnections=2)
    clients = [connect(factory, port=40000 + i)[0] for i in range(2)]
    for protocol in clients:
        protocol.dataReceived(REGISTER)
    refused, refusedTransport = connect(factory, port=41000)
    assert isinstance(refused, RefusedConnection) and refusedTransport.disconnecting
    figures = Figures()
    factory.reportFigures(figures)
    assert figures.get("sipnat_connections", transport="tcp") == 2
    assert figures.get("sipnat_connections_refused_total", reason="max_connections") == 1
    assert figures.get("sipnat_connections_refused_total", reason="evicted") == 0
    for protocol in clients:
        lose(protocol)


def test_the_sip_bytes_still_reach_the_wrapped_protocol_and_pings_are_answered(clock: Clock) -> None:
    factory = sipFactory(clock)
    protocol, transport = connect(factory)
    protocol.dataReceived(b"\r\n\r\n" + REGISTER[:30])
    protocol.dataReceived(REGISTER[30:])
    assert b"".join(protocol.wrappedProtocol.received) == REGISTER
    assert transport.value() == b"\r\n"
    assert factory.limiter.table.isComplete(protocol)  # type: ignore[union-attr]
    lose(protocol)


def test_one_timer_for_all_connections_and_the_deadlines(clock: Clock) -> None:
    factory = sipFactory(clock, idleTimeout=60.0, handshakeTimeout=10.0)
    clients = [connect(factory, port=40000 + i) for i in range(100)]
    assert len(clock.getDelayedCalls()) == 1
    real, realTransport = clients[0]
    real.dataReceived(REGISTER)
    clock.advance(10)
    assert [t.disconnecting for _, t in clients].count(True) == 99
    assert not realTransport.disconnecting
    for protocol, _ in clients[1:]:
        lose(protocol)  # the aborts complete
    clock.advance(40)
    real.dataReceived(b"\r\n\r\n")  # a keepalive at 50 s: idle until 110 s
    clock.advance(59)
    assert not realTransport.disconnecting
    clock.advance(1)
    assert realTransport.disconnecting
    lose(real)
    figures = Figures()
    factory.reportFigures(figures)
    assert figures.get("sipnat_connections_refused_total", reason="handshake_timeout") == 99
    assert figures.get("sipnat_connections_refused_total", reason="idle_timeout") == 1
    assert clock.getDelayedCalls() == []


def test_partial_header_blocks_are_bounded_in_total(clock: Clock) -> None:
    factory = sipFactory(clock, maxBufferedBytes=100_000)
    clients = [connect(factory, port=40000 + i) for i in range(10)]
    partial = b"REGISTER sip:example.com SIP/2.0\r\nX-Pad: " + b"a" * 30_000
    for protocol, _ in clients:
        protocol.dataReceived(partial)
    table = factory.limiter.table  # type: ignore[union-attr]
    assert table.bufferedBytes <= 100_000
    held = sum(p.splitter.buffered for p, t in clients if not t.disconnecting)
    assert held <= 100_000
    assert [t.disconnecting for _, t in clients].count(True) == 7
    assert table.refused["buffer_limit"] == 7
    for protocol, _ in clients:
        lose(protocol)


def test_stopping_the_listener_leaves_no_timer(clock: Clock) -> None:
    factory = sipFactory(clock)
    factory.doStart()
    connect(factory)
    assert len(clock.getDelayedCalls()) == 1
    factory.doStop()
    assert clock.getDelayedCalls() == []


# -- STUN over TCP --------------------------------------------------------------------------------------------


def bindingRequest(transactionId: bytes = b"0123456789ab", length: int = 0) -> bytes:
    return struct.pack("!HHI", 0x0001, length, 0x2112A442) + transactionId


def stunFactory(clock: Clock, **limits: Any) -> STUNStreamFactory:
    return STUNStreamFactory(BindingResponder(), clock, ConnectionLimits(**limits))


def test_stun_stream_refuses_a_message_over_its_bound_at_the_length_field(clock: Clock) -> None:
    factory = stunFactory(clock)
    protocol, transport = connect(factory)
    protocol.dataReceived(bindingRequest(length=60_000))
    assert transport.disconnecting and protocol.framer.buffered == 0
    assert factory.limiter.table.refused["message_too_large"] == 1  # type: ignore[union-attr]
    lose(protocol)
    assert clock.getDelayedCalls() == []


def test_stun_stream_answers_and_counts_the_message_as_completed(clock: Clock) -> None:
    factory = stunFactory(clock)
    protocol, transport = connect(factory)
    protocol.dataReceived(bindingRequest())
    assert transport.value()[:2] == b"\x01\x01"
    assert factory.limiter.table.isComplete(protocol)  # type: ignore[union-attr]
    lose(protocol)


def test_stun_stream_partial_messages_time_out_and_are_evicted(clock: Clock) -> None:
    factory = stunFactory(clock, maxConnections=10, handshakeTimeout=5.0)
    clients = [connect(factory, port=40000 + i) for i in range(20)]
    for protocol, _ in clients:
        if protocol is not None:
            protocol.dataReceived(bindingRequest(length=4000)[:-1] + b"\x00" * 100)
    assert [t.disconnecting for _, t in clients].count(True) == 10  # evicted by the last ten
    clock.advance(5)
    assert all(t.disconnecting for _, t in clients)
    for protocol, _ in clients:
        lose(protocol)
    assert clock.getDelayedCalls() == []


def test_stun_stream_without_limits_still_bounds_one_message() -> None:
    factory = STUNStreamFactory(BindingResponder(), Clock())
    protocol, transport = connect(factory)
    protocol.dataReceived(bindingRequest(length=STUN_STREAM_MAX_MESSAGE))
    assert transport.disconnecting


# -- options, roles, the open-file limit ----------------------------------------------------------------------


def parse(*argv: str) -> Any:
    options = Options()
    options.parseOptions(list(argv))
    return options.subOptions


def test_options_reach_the_limits() -> None:
    sub = parse("edge", "--max-connections", "50", "--max-connections-per-source", "5", "--idle-timeout", "90",
                "--max-buffered-bytes", "1000000", "--handshake-timeout", "3.5")
    given = edgeArguments(sub, 1)["connectionLimits"]
    assert given == {"maxConnections": 50, "maxConnectionsPerSource": 5, "idleTimeout": 90.0,
                     "maxBufferedBytes": 1000000, "handshakeTimeout": 3.5}
    assert connectionLimits(given) == ConnectionLimits(**given)
    assert stunArguments(parse("stun", "--max-connections", "7"), 1)["connectionLimits"] == {"maxConnections": 7}


@pytest.mark.parametrize("option,value", [("--max-connections", "0"), ("--max-connections", "lots"),
                                          ("--idle-timeout", "-1"), ("--max-buffered-bytes", "1.5"),
                                          ("--max-connections-per-source", "0"), ("--handshake-timeout", "0")])
def test_bad_limit_values_are_one_line_errors(option: str, value: str) -> None:
    with pytest.raises(InvalidSettingsError) as e:
        connectionLimitArguments(parse("edge", option, value))
    assert e.value.key == option[2:]
    assert "\n" not in str(e.value)


def test_defaults_follow_the_flow_timer_and_the_file_limit() -> None:
    limits = connectionLimits({}, flowTimer=30)
    assert limits.idleTimeout == 70.0
    assert limits.maxConnections == defaultMaxConnections()
    assert defaultMaxConnections(1024) == 1024 - FILE_RESERVE
    assert defaultMaxConnections(1 << 20) == (1 << 20) - (1 << 17)
    assert defaultMaxConnections(-1) > 0


def test_edge_role_builds_its_table_from_the_options(clock: Clock) -> None:
    from twisted_sipnat.service.edge import EdgeRole

    edge = EdgeRole(clock, udp=(0, "127.0.0.1"), tcp="tcp:0:interface=127.0.0.1", domain="example.com",
                    flowTimer=20, connectionLimits={"maxConnections": 4})
    factory = edge.tcp.factory  # type: ignore[union-attr]
    assert factory.limiter.limits.maxConnections == 4
    assert factory.limiter.limits.idleTimeout == 50.0
    clients = [connect(factory, port=40000 + i)[0] for i in range(6)]
    figures = Figures()
    edge.reportFigures(figures)
    assert figures.get("sipnat_connections", transport="tcp") == 4
    assert figures.get("sipnat_connections_refused_total", reason="evicted") == 2
    for protocol in clients:
        lose(protocol)
    edge.registry.clear()


def test_stun_role_builds_its_table(clock: Clock) -> None:
    from twisted_sipnat.service.stunserver import STUNRole

    role = STUNRole(clock, udp=(0, "127.0.0.1"), tcp="tcp:0:interface=127.0.0.1",
                    connectionLimits={"maxConnectionsPerSource": 1})
    factory = role.tcp.factory  # type: ignore[union-attr]
    first, _ = connect(factory)
    first.dataReceived(bindingRequest())
    second, secondTransport = connect(factory, port=40001)
    assert isinstance(second, RefusedConnection) and secondTransport.disconnecting
    figures = Figures()
    role.reportFigures(figures)
    assert figures.get("sipnat_connections_refused_total", reason="max_per_source") == 1
    lose(first)


def test_every_role_raises_the_open_file_limit_and_logs_it_once() -> None:
    """In a child process whose soft limit is below its hard one: buildService raises it and says so once."""
    script = """
import resource
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted_sipnat.tap import Options, buildService
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
events = []
globalLogPublisher.addObserver(lambda e: events.append(e))
options = Options()
options.parseOptions(["stun", "--udp", "udp:0:interface=127.0.0.1"])
buildService(options, Clock())
lines = [e for e in events if e.get("sipnat_event") == "limits.nofile"]
print(resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard, len(lines), lines[0]["soft"], lines[0]["hard"])
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    raised, count, soft, hard = out.stdout.split()
    assert raised == "True" and count == "1" and soft == hard


def test_the_metric_label_follows_the_endpoint() -> None:
    from twisted_sipnat.service.edge import _transportOf

    assert _transportOf("tcp:5060") == "tcp"
    assert _transportOf("ssl:5061:privateKey=k.pem") == "tls"
    assert _transportOf("TLS:5061") == "tls"
