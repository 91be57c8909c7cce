"""
Resource bounds: every table and buffer that input from the network (or a misbehaving caller) can grow has a
limit, and reaching it is a clear :class:`ResourceLimitError` or a closed connection, never unbounded growth.

Bounds and their defaults (what the report lists):

- ``NATTraversalController(maxFlows=1_000_000)``: keepalive contexts; ``refreshNATBinding`` raises past it;
- ``NATTraversalController(maxTransactions=1_000_000)``: STUN transactions in flight; ``resolvePublicAddress``
  errbacks with it, ``sendBindingRequest`` raises it, a keepalive past it is skipped and counted;
- ``Arbiter(maxHeld=10_000)``: held keepalives per socket (one per context);
- ``SharedStreamFactory(maxMessageSize=65536)``: one SIP message on a stream, in and out; the connection is
  closed past it (so the incoming buffer never exceeds it);
- ``RateLimit(maxSources=65536)``: buckets of the STUN server's rate limit (tests/security/test_amplification.py).
"""

from __future__ import annotations

import random
from typing import Any, List, Tuple

import pytest
from fuzz.support import (
    DatagramRecorder,
    Observer,
    StreamRecorder,
    assertNoLoggedFailure,
    counts,
    watchingLogs,
)
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from tests.addresses import HOP, SERVER
from twisted_sipnat import (
    NATSettings,
    NATTraversalController,
    ResourceLimitError,
    SharedStreamFactory,
    STUNTimeout,
    stun,
)
from twisted_sipnat.core.arbitration import DEFAULT_MAX_HELD, Arbiter
from twisted_sipnat.protocols import DEFAULT_MAX_MESSAGE_SIZE
from twisted_sipnat.testing import answerAll, sharedDatagramSocket


def controllerWith(**kwargs: Any) -> Tuple[Clock, NATTraversalController]:
    clock = Clock()
    settings = kwargs.pop("settings", NATSettings(stunServers=[SERVER]))
    return clock, NATTraversalController(settings, reactor=clock, rng=random.Random(1), **kwargs)


def test_defaults() -> None:
    clock, controller = controllerWith()
    assert controller.maxFlows == 1_000_000 and controller.maxTransactions == 1_000_000
    assert DEFAULT_MAX_HELD == 10_000 and DEFAULT_MAX_MESSAGE_SIZE == 65536


def test_max_flows_raises_with_a_clear_message() -> None:
    clock, controller = controllerWith(maxFlows=3)
    shared, transport = sharedDatagramSocket(controller)
    observers = [Observer(str(i)) for i in range(4)]
    for observer in observers[:3]:
        assert controller.refreshNATBinding(shared, observer, HOP)
    with pytest.raises(ResourceLimitError, match="too many keepalive contexts: the limit is 3") as info:
        controller.refreshNATBinding(shared, observers[3], HOP)
    assert info.value.limit == 3 and controller.flowCount == 3
    assert controller.refreshNATBinding(shared, observers[0], HOP)  # a restart is not a new context
    controller.freeResources(observers[1])
    assert controller.refreshNATBinding(shared, observers[3], HOP)  # room again
    assert controller.flowCount == 3


def test_max_transactions_errbacks_resolve_and_raises_for_probes() -> None:
    clock, controller = controllerWith(maxTransactions=2, maxOutstandingPerServer=10)
    shared, transport = sharedDatagramSocket(controller)
    results: List[Any] = []
    for _ in range(3):
        controller.resolvePublicAddress(None, shared, HOP).addBoth(results.append)
    assert len(results) == 1 and results[0].check(ResourceLimitError)
    assert "too many pending STUN transactions: the limit is 2" in results[0].getErrorMessage()
    with pytest.raises(ResourceLimitError):
        controller.sendBindingRequest(shared, SERVER)
    assert controller.pendingTransactionCount == 2
    clock.advance(40)
    assert controller.pendingTransactionCount == 0 and clock.getDelayedCalls() == []
    assert all(r.check(ResourceLimitError, STUNTimeout) for r in results) and len(results) == 3


def test_keepalive_past_max_transactions_is_skipped_and_counted() -> None:
    clock, controller = controllerWith(maxTransactions=1, settings=NATSettings(udpKeepaliveInterval=10))
    shared, transport = sharedDatagramSocket(controller)
    a, b = Observer("a"), Observer("b")
    controller.refreshNATBinding(shared, a, HOP)
    controller.refreshNATBinding(shared, b, ("198.51.100.2", 5060))
    clock.advance(10)
    assert controller.pendingTransactionCount == 1
    assert controller.stats["keepalive.skipped.limit"] == 1
    assert a.failures == [] and b.failures == []
    controller.freeResources()
    assert clock.getDelayedCalls() == []


def test_arbiter_max_held() -> None:
    arbiter = Arbiter(stream=False, maxHeld=2)
    arbiter.sipIdle(False)
    assert arbiter.offer("a", b"x") is False and arbiter.offer("b", b"y") is False
    assert arbiter.offer("a", b"x2") is False  # a replacement is not a new entry
    with pytest.raises(ResourceLimitError, match="too many held keepalives: the limit is 2"):
        arbiter.offer("c", b"z")
    assert arbiter.held == 2 and [k.data for k in arbiter.sipIdle(True)] == [b"x2", b"y"]


def test_held_keepalives_past_max_held_are_refused_not_queued() -> None:
    clock, controller = controllerWith(settings=NATSettings(udpKeepaliveInterval=10, udpKeepaliveMethod="crlf"))
    shared, transport = sharedDatagramSocket(controller)
    shared.arbiter = Arbiter(stream=False, maxHeld=5)
    observers = [Observer(str(i)) for i in range(20)]
    for i, observer in enumerate(observers):
        controller.refreshNATBinding(shared, observer, ("198.51.100.9", 5000 + i))
    controller.socketIdle(False, shared)
    clock.advance(10)
    assert shared.arbiter.held == 5 and controller.stats["writes.refused"] == 15
    controller.socketIdle(True, shared)
    assert len(transport.written) == 5
    controller.freeResources()
    assert clock.getDelayedCalls() == []


def streamConnection(maxMessageSize: int, server: bool = False) -> Tuple[Any, StringTransport, NATTraversalController]:
    clock = Clock()
    controller = NATTraversalController(NATSettings(), reactor=clock)
    factory = SharedStreamFactory(Factory.forProtocol(StreamRecorder), controller=controller, pongResponder=server,
                                  maxMessageSize=maxMessageSize)
    shared = factory.buildProtocol(IPv4Address("TCP", *HOP))
    transport = StringTransport(peerAddress=IPv4Address("TCP", *HOP))
    shared.makeConnection(transport)
    return shared, transport, controller


@pytest.mark.parametrize("server", [False, True])
def test_endless_header_block_closes_the_connection(server: bool) -> None:
    shared, transport, controller = streamConnection(1024, server)
    with watchingLogs() as logs:
        shared.dataReceived(b"INVITE sip:a@b SIP/2.0\r\n")
        for _ in range(100_000):  # 1.6 MB of headers, never ending
            shared.dataReceived(b"X-Junk: 01234\r\n")
            if transport.disconnecting:
                break
    assert transport.disconnecting
    assert shared.splitter.buffered <= 1024
    assert shared.stats["framing.errors"] == 1
    assert logs.sipnatEvents("stream.framing-error")
    assertNoLoggedFailure(logs)
    shared.dataReceived(b"more" * 1000)  # after the close nothing is buffered or delivered
    assert len(shared.wrappedProtocol.received) <= 1024


def test_content_length_over_the_bound_closes_the_connection() -> None:
    shared, transport, controller = streamConnection(1024)
    shared.dataReceived(b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 5000\r\n\r\n" + b"x" * 100)
    assert transport.disconnecting and shared.wrappedProtocol.received == b""


@pytest.mark.parametrize("value", [b"-1", b"1e3", b"9" * 40, b"12, 13", b"0x10"])
def test_malformed_content_length_closes_the_connection(value: bytes) -> None:
    shared, transport, controller = streamConnection(DEFAULT_MAX_MESSAGE_SIZE)
    shared.dataReceived(b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: " + value + b"\r\n\r\nbody")
    assert transport.disconnecting


def test_outgoing_message_over_the_bound_closes_the_connection() -> None:
    shared, transport, controller = streamConnection(1024)
    sip = shared.wrappedProtocol
    sip.transport.write(b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 4000\r\n\r\n")
    assert transport.disconnecting
    before = transport.value()
    sip.transport.write(b"y" * 4000)  # the rest of it goes nowhere
    assert transport.value() == before


def test_flood_of_garbage_datagrams_leaves_every_table_bounded() -> None:
    clock, controller = controllerWith(settings=NATSettings(stunServers=[SERVER], udpKeepaliveInterval=3600))
    sip = DatagramRecorder()
    shared, transport = sharedDatagramSocket(controller, sip, stunResponder=True, clock=clock)
    controller.resolvePublicAddress(None, shared, HOP)
    observer = Observer()
    controller.refreshNATBinding(shared, observer, HOP)
    start = counts(controller)
    rng = random.Random(100)
    request = stun.Message(stun.BINDING, stun.REQUEST).encode()
    with watchingLogs() as logs:
        for i in range(100_000):
            kind = i % 4
            if kind == 0:
                data = rng.randbytes(rng.randrange(0, 64))
            elif kind == 1:  # STUN responses for no transaction
                data = stun.Message(stun.BINDING, stun.SUCCESS, rng.randbytes(12),
                                    [stun.XorMappedAddress("6.6.6.6", 6)]).encode()
            elif kind == 2:
                data = request
            else:
                data = b"\r\n\r\n"
            shared.datagramReceived(data, (f"10.0.{i >> 8 & 255}.{i & 255}", 1 + i % 65535))
            if i % 10_000 == 0:
                clock.advance(1)
                assert counts(controller) == start
    assertNoLoggedFailure(logs)
    assert counts(controller) == start
    assert shared.arbiter.held == 0
    controller.freeResources()
    assert clock.getDelayedCalls() == []


def test_flood_of_garbage_bytes_on_a_stream() -> None:
    """100k chunks of CRLFs and whole messages: nothing accumulates (no pong is owed, no partial header kept)."""
    shared, transport, controller = streamConnection(DEFAULT_MAX_MESSAGE_SIZE, server=True)
    message = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 0\r\n\r\n"
    for i in range(100_000):
        shared.dataReceived(b"\r\n" * (i % 5) + message)
    assert not transport.disconnecting
    assert shared.splitter.buffered == 0 and shared.arbiter.held == 0
    assert shared.stats["pings.received"] == sum((i % 5) // 2 for i in range(100_000))


def test_repeated_resolve_cancel_and_refresh_free_leave_nothing_behind() -> None:
    clock, controller = controllerWith(settings=NATSettings(stunServers=[SERVER], udpKeepaliveInterval=10))
    for i in range(2_000):
        shared, transport = sharedDatagramSocket(controller, port=10000 + i)
        observer = Observer()
        d = controller.resolvePublicAddress(None, shared, HOP, observer)
        d.addErrback(lambda f: None)
        controller.refreshNATBinding(shared, observer, HOP)
        clock.advance(10)
        answerAll(shared, transport)
        if i % 2:
            d.cancel()
        controller.freeResources(observer)
    assert counts(controller) == {"pending": 0, "flows": 0, "sockets": 0, "resolutions": 0, "memory": 0,
                                  "timers": 0}
    assert clock.getDelayedCalls() == []


def test_socket_idle_on_unused_sockets_keeps_nothing() -> None:
    clock, controller = controllerWith()
    for _ in range(10_000):
        transport = StringTransport()
        controller.socketIdle(False, transport)
        controller.socketIdle(True, transport)
    assert counts(controller)["sockets"] == 0
