"""
twisted_sipnat.service.listeners: SO_REUSEPORT sockets adopted by the reactor, and the stream listener's failures.
"""

from __future__ import annotations

import socket
from typing import Any, List, Optional, Tuple

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol

from twisted_sipnat.service.listeners import StreamListener, UDPListener, listenUDPReusePort, reusePortSocket

LOOPBACK = "127.0.0.1"


def test_two_sockets_share_a_port_only_with_so_reuseport() -> None:
    first = reusePortSocket(0, LOOPBACK)
    try:
        port = first.getsockname()[1]
        second = reusePortSocket(port, LOOPBACK)
        try:
            assert second.getsockname() == (LOOPBACK, port)
            assert not second.getblocking()
        finally:
            second.close()
        plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            with pytest.raises(OSError):
                plain.bind((LOOPBACK, port))
        finally:
            plain.close()
    finally:
        first.close()


def test_an_ipv6_interface_gives_an_ipv6_socket() -> None:
    try:
        sock = reusePortSocket(0, "::1")
    except OSError as e:  # a host without IPv6 loopback: say what happened, do not pretend
        pytest.fail(f"cannot bind ::1 on this host: {e}")
    try:
        assert sock.family == socket.AF_INET6
    finally:
        sock.close()


class Recorder(DatagramProtocol):
    def __init__(self) -> None:
        self.received: List[Tuple[bytes, Any]] = []
        self.arrived: Optional[defer.Deferred[None]] = None

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.received.append((datagram, addr))
        if self.arrived is not None and not self.arrived.called:
            self.arrived.callback(None)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_the_kernel_spreads_flows_over_adopted_ports_and_keeps_each_flow_on_one() -> None:
    from twisted.internet import reactor

    first, second = Recorder(), Recorder()
    portA = listenUDPReusePort(reactor, 0, first, LOOPBACK)
    number = portA.getHost().port
    portB = listenUDPReusePort(reactor, number, second, LOOPBACK)
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(64)]
    try:
        assert portB.getHost().port == number
        for _ in range(2):  # every flow twice: it must land where it landed the first time
            for i, sender in enumerate(senders):
                sender.sendto(b"flow %d" % i, (LOOPBACK, number))
        deadline = reactor.seconds() + 5
        while len(first.received) + len(second.received) < 128 and reactor.seconds() < deadline:
            d: defer.Deferred[None] = defer.Deferred()
            reactor.callLater(0.01, d.callback, None)
            await d
        assert len(first.received) + len(second.received) == 128
        assert first.received and second.received  # 64 flows on one socket alone: chance 2**-63
        flowsA = {data for data, _ in first.received}
        flowsB = {data for data, _ in second.received}
        assert not flowsA & flowsB
    finally:
        for sender in senders:
            sender.close()
        await defer.gatherResults([defer.maybeDeferred(portA.stopListening),
                                   defer.maybeDeferred(portB.stopListening)])


def test_edge_refuses_a_bad_tcp_description_and_fails_on_a_taken_port() -> None:
    import socket as _socket

    from twisted.internet import reactor as globalReactor

    from twisted_sipnat.errors import InvalidSettingsError

    with pytest.raises(InvalidSettingsError, match="tcp"):
        StreamListener(globalReactor, "bogus:1", None)
    taken = _socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        from twisted.internet.protocol import Factory, Protocol

        listener = StreamListener(globalReactor, f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1",
                                   Factory.forProtocol(Protocol))
        from twisted_sipnat.errors import ListenError

        with pytest.raises(ListenError, match="^--tcp tcp:[0-9]+:interface=127.0.0.1: port already in use$"):
            listener.startService()
        assert not listener.running and listener.port is None
    finally:
        taken.close()


# ---- UDPListener: Twisted's UDPServer on an explicit reactor -----------------------------------------------------


def test_udp_listener_binds_in_the_privileged_phase_once_and_closes_on_stop() -> None:
    from .support import NetReactor

    net = NetReactor()
    listener = UDPListener(net, 0, DatagramProtocol(), "127.0.0.1")
    assert listener.port is None
    listener.privilegedStartService()  # twistd binds here, before it drops privileges
    bound = listener.port
    assert bound is not None and listener.address() == ("127.0.0.1", bound.port)
    listener.startService()
    assert listener.port is bound and len(net.ports) == 1, "not bound a second time"
    listener.stopService()
    assert listener.port is None and net.ports == {}


def test_a_udp_port_in_use_raises_from_start_and_leaves_the_listener_stopped() -> None:
    from .support import NetReactor

    net = NetReactor()
    first = UDPListener(net, 5060, DatagramProtocol(), "127.0.0.1")
    first.startService()
    second = UDPListener(net, 5060, DatagramProtocol(), "127.0.0.1")
    from twisted_sipnat.errors import ListenError

    with pytest.raises(ListenError, match="^--udp udp:5060:interface=127.0.0.1: .*in use"):
        second.startService()
    assert not second.running and second.port is None
    with pytest.raises(RuntimeError):
        second.address()
    first.stopService()


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_a_reuse_port_listener_shares_its_port_with_another() -> None:
    from twisted.internet import reactor

    first = UDPListener(reactor, 0, DatagramProtocol(), LOOPBACK, reusePort=True)
    first.startService()
    try:
        second = UDPListener(reactor, first.address()[1], DatagramProtocol(), LOOPBACK, reusePort=True)
        second.startService()
        try:
            assert second.address() == first.address()
        finally:
            await defer.maybeDeferred(second.stopService)
    finally:
        await defer.maybeDeferred(first.stopService)
