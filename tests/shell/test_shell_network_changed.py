"""
``NATTraversalController.networkChanged()`` and ``udpKeepaliveMethod="auto"`` through the shell: a Clock and
fake transports, every clause of the contract ("Network changes, keepalive fallback").
"""

from __future__ import annotations

import random
from typing import Any, Dict, List, Set, Tuple

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

from tests.addresses import HOP
from twisted_sipnat import (
    FlowConnectionLost,
    InvalidSettingsError,
    MappedAddressChanged,
    NATSettings,
    NATTraversalController,
    PongTimeout,
    SharedStreamFactory,
    STUNTimeout,
)
from twisted_sipnat.config import parseConfigText
from twisted_sipnat.localaddress import addressAssigned
from twisted_sipnat.service.figures import Figures
from twisted_sipnat.service.flowfigures import ControllerFigures
from twisted_sipnat.testing import RecordingObserver, answerAll, bindingResponse, sharedDatagramSocket

MAPPED = ("203.0.113.1", 40000)
HOP2 = ("198.51.100.2", 5060)


def setup(present: Set[str] = frozenset({"192.0.2.10"}), **settings: Any) -> Tuple[Clock, NATTraversalController,
                                                                                      Any, Any, RecordingObserver]:
    clock = Clock()
    controller = NATTraversalController(NATSettings(**settings), reactor=clock, rng=random.Random(14))
    controller.addressAssigned = lambda host: host in present  # type: ignore[method-assign]
    shared, transport = sharedDatagramSocket(controller)
    return clock, controller, shared, transport, RecordingObserver()


def advance(clock: Clock, seconds: float, step: float = 0.1) -> None:
    """Advance in steps, as a reactor would run (one big ``advance`` runs every due call at its end)."""
    end = clock.seconds() + seconds
    while clock.seconds() < end - 1e-9:
        clock.advance(min(step, end - clock.seconds()))


def untilWritten(clock: Clock, transport: Any) -> None:
    while not transport.written:
        clock.advance(0.01)


def test_a_stun_keepalive_goes_out_at_once_and_a_rebinding_fails_the_flow_within_the_round_trip() -> None:
    clock, controller, shared, transport, observer = setup()
    controller.refreshNATBinding(shared, observer, HOP)
    untilWritten(clock, transport)
    answerAll(shared, transport, MAPPED)  # the baseline
    clock.advance(3)
    controller.networkChanged()
    (request, addr), = transport.stunRequests()  # written inside the call
    assert addr == HOP
    clock.advance(0.03)
    shared.datagramReceived(bindingResponse(request, ("203.0.113.1", 40001)), HOP)
    (failure,) = observer.failures
    assert failure.check(MappedAddressChanged)
    assert failure.value.old == IPv4Address("UDP", *MAPPED) and failure.value.new.port == 40001
    assert clock.getDelayedCalls() == []


def test_the_schedule_restarts_from_the_out_of_schedule_keepalive() -> None:
    clock, controller, shared, transport, observer = setup()
    controller.refreshNATBinding(shared, observer, HOP)
    clock.advance(10)
    controller.networkChanged()
    changedAt = clock.seconds()
    assert answerAll(shared, transport, MAPPED) == 1
    untilWritten(clock, transport)
    assert 20 - 0.02 <= clock.seconds() - changedAt <= 25 + 0.02
    assert observer.failures == []
    controller.freeResources()


def test_an_unanswered_out_of_schedule_keepalive_is_a_stun_timeout() -> None:
    clock, controller, shared, transport, observer = setup()
    controller.refreshNATBinding(shared, observer, HOP)
    clock.advance(1)
    controller.networkChanged()
    clock.advance(39.4)
    assert observer.failures == []
    clock.advance(0.2)
    (failure,) = observer.failures
    assert failure.check(STUNTimeout)


def test_a_keepalive_in_flight_is_not_doubled_and_its_answer_is_judged() -> None:
    clock, controller, shared, transport, observer = setup()
    controller.refreshNATBinding(shared, observer, HOP)
    untilWritten(clock, transport)
    (request, _), = transport.stunRequests()
    transport.clear()
    controller.networkChanged()
    assert transport.written == []
    shared.datagramReceived(bindingResponse(request, MAPPED), HOP)
    assert observer.failures == [] and controller.baselineOf(observer) == IPv4Address("UDP", *MAPPED)
    controller.freeResources()


def test_a_crlf_flow_sends_nothing_and_keeps_its_schedule() -> None:
    times: Dict[bool, List[float]] = {}
    for change in (False, True):
        clock, controller, shared, transport, observer = setup(udpKeepaliveMethod="crlf")
        controller.refreshNATBinding(shared, observer, HOP)
        clock.advance(5)
        if change:
            controller.networkChanged()
            assert transport.written == []
        untilWritten(clock, transport)
        times[change] = [clock.seconds()]
        controller.freeResources()
    assert times[True] == times[False]


class SIPRecorder(Protocol):
    pass


def tcpSetup(**settings: Any) -> Tuple[Clock, NATTraversalController, Any, StringTransport, RecordingObserver]:
    clock = Clock()
    controller = NATTraversalController(NATSettings(**settings), reactor=clock, rng=random.Random(1))
    controller.addressAssigned = lambda host: host == "192.0.2.10"  # type: ignore[method-assign]
    factory = SharedStreamFactory(Factory.forProtocol(SIPRecorder), controller=controller)
    shared = factory.buildProtocol(IPv4Address("TCP", *HOP))
    transport = StringTransport(hostAddress=IPv4Address("TCP", "192.0.2.10", 40123),
                                peerAddress=IPv4Address("TCP", *HOP))
    shared.makeConnection(transport)
    return clock, controller, shared, transport, RecordingObserver()


def test_a_stream_flow_pings_at_once_and_no_pong_is_a_pong_timeout() -> None:
    clock, controller, shared, transport, observer = tcpSetup()
    controller.refreshNATBinding(shared, observer)
    clock.advance(7)
    controller.networkChanged()
    assert transport.value() == b"\r\n\r\n"
    clock.advance(9.99)
    assert observer.failures == []
    clock.advance(0.02)
    (failure,) = observer.failures
    assert failure.check(PongTimeout)


def test_a_stream_flow_answered_by_a_pong_stays_up() -> None:
    clock, controller, shared, transport, observer = tcpSetup()
    controller.refreshNATBinding(shared, observer)
    clock.advance(7)
    controller.networkChanged()
    shared.dataReceived(b"\r\n")
    clock.advance(60)
    assert observer.failures == [] and controller.isKeepingAlive(observer)
    controller.freeResources()


def test_a_stream_flow_whose_local_address_is_gone_is_connection_lost() -> None:
    clock, controller, shared, transport, observer = tcpSetup()
    controller.refreshNATBinding(shared, observer)
    controller.addressAssigned = lambda host: False  # type: ignore[method-assign]
    controller.networkChanged()
    (failure,) = observer.failures
    assert failure.check(FlowConnectionLost)
    assert transport.value() == b""
    assert clock.getDelayedCalls() == []


def test_a_udp_socket_rebound_elsewhere_is_connection_lost() -> None:
    clock, controller, shared, transport, observer = setup(present={"192.0.2.10", "192.0.2.11"})
    controller.refreshNATBinding(shared, observer, HOP)
    transport.host = "192.0.2.11"
    controller.networkChanged()
    (failure,) = observer.failures
    assert failure.check(FlowConnectionLost) and "192.0.2.11" in failure.getErrorMessage()
    assert transport.written == []


def test_a_udp_socket_whose_address_the_host_lost_is_connection_lost() -> None:
    clock, controller, shared, transport, observer = setup(present=set())
    controller.refreshNATBinding(shared, observer, HOP)
    controller.networkChanged()
    (failure,) = observer.failures
    assert failure.check(FlowConnectionLost)


def test_a_wildcard_bound_socket_is_judged_by_its_keepalive_only() -> None:
    clock = Clock()
    controller = NATTraversalController(NATSettings(), reactor=clock, rng=random.Random(2))
    shared, transport = sharedDatagramSocket(controller, host="0.0.0.0")
    observer = RecordingObserver()
    controller.refreshNATBinding(shared, observer, HOP)
    controller.networkChanged()  # the real addressAssigned: a wildcard always is
    assert observer.failures == [] and len(transport.stunRequests()) == 1
    controller.freeResources()


def test_resolutions_in_flight_are_not_touched() -> None:
    clock, controller, shared, transport, observer = setup(present=set())
    d = controller.resolvePublicAddress(None, shared, HOP, observer=observer)
    clock.advance(0.2)
    controller.networkChanged()
    assert len(transport.stunRequests()) == 1  # no extra send
    results: List[Any] = []
    d.addBoth(results.append)
    answerAll(shared, transport, MAPPED)
    assert results == [IPv4Address("UDP", *MAPPED)]


def test_every_context_sends_one() -> None:
    clock, controller, shared, transport, _ = setup()
    observers = [RecordingObserver(str(i)) for i in range(5)]
    for observer in observers:
        controller.refreshNATBinding(shared, observer, HOP)
    controller.networkChanged()
    assert len(transport.stunRequests()) == 5
    controller.freeResources()
    assert clock.getDelayedCalls() == []


def capture() -> Tuple[List[Dict[str, Any]], Any]:
    seen: List[Dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)
    return seen, lambda: globalLogPublisher.removeObserver(seen.append)


def test_auto_falls_back_to_crlf_logged_once_with_no_flow_failure() -> None:
    clock, controller, shared, transport, observer = setup(udpKeepaliveMethod="auto")
    seen, done = capture()
    try:
        controller.refreshNATBinding(shared, observer, HOP)
        advance(clock, 25 + 40)  # the first keepalive goes unanswered to its end
        transport.clear()
        advance(clock, 25 * 4)
        controller.networkChanged()  # a fallen-back flow: nothing out of schedule
    finally:
        done()
    assert observer.failures == [] and controller.isKeepingAlive(observer)
    assert 4 <= len(transport.written) <= 5 and all(data == b"\r\n\r\n" for data, _ in transport.written)
    assert [e for e in seen if e.get("sipnat_event") == "keepalive.fallback"].__len__() == 1
    controller.freeResources()


def test_auto_on_a_hop_that_answered_a_timeout_is_stun_timeout() -> None:
    clock, controller, shared, transport, observer = setup(udpKeepaliveMethod="auto")
    controller.refreshNATBinding(shared, observer, HOP)
    untilWritten(clock, transport)
    answerAll(shared, transport, MAPPED)
    advance(clock, 25 + 40)
    (failure,) = observer.failures
    assert failure.check(STUNTimeout)


def test_auto_an_error_answer_counts_as_an_answer() -> None:
    clock, controller, shared, transport, observer = setup(udpKeepaliveMethod="auto")
    controller.refreshNATBinding(shared, observer, HOP)
    untilWritten(clock, transport)
    (request, addr), = transport.stunRequests()
    shared.datagramReceived(bindingResponse(request, error=(400, "Bad Request")), addr)
    advance(clock, 25 + 40)
    (failure,) = observer.failures
    assert failure.check(STUNTimeout)


def test_auto_a_new_next_hop_that_never_answered_falls_back() -> None:
    clock, controller, shared, transport, observer = setup(udpKeepaliveMethod="auto")
    controller.refreshNATBinding(shared, observer, HOP)
    untilWritten(clock, transport)
    answerAll(shared, transport, MAPPED)
    controller.updateNextHop(HOP2, observer)
    advance(clock, 25 + 40)
    transport.clear()
    advance(clock, 25)
    assert observer.failures == [] and transport.written == [(b"\r\n\r\n", HOP2)]
    controller.freeResources()


def test_auto_is_validated_configured_and_the_default_stays_stun() -> None:
    assert NATSettings().udpKeepaliveMethod == "stun"
    assert NATSettings(udpKeepaliveMethod="auto").udpKeepaliveMethod == "auto"
    with pytest.raises(InvalidSettingsError) as e:
        NATSettings(udpKeepaliveMethod="stunn")
    assert "\n" not in str(e.value) and '"auto"' in str(e.value)
    assert parseConfigText("[default]\nudpKeepaliveMethod = auto\n")["default"].udpKeepaliveMethod == "auto"


def test_address_assigned_knows_loopback_and_refuses_an_address_not_on_the_host() -> None:
    assert addressAssigned("127.0.0.1") and addressAssigned("0.0.0.0") and addressAssigned("::")
    assert not addressAssigned("192.0.2.213")  # TEST-NET-1: never configured here


def test_auto_undecided_sends_crlf_beside_the_retransmitting_binding_through_the_arbitration() -> None:
    """
    While the first Binding toward a silent hop retransmits, each keepalive instant writes a CRLFCRLF datagram
    to the hop; held while the SIP stack uses the socket, it is written on ``socketIdle(True)``, and one still
    held when the flow is freed is withdrawn, never written afterwards.
    """
    clock, controller, shared, transport, observer = setup(udpKeepaliveMethod="auto", udpKeepaliveInterval=5)
    controller.refreshNATBinding(shared, observer, HOP)
    advance(clock, 5)
    assert transport.stunRequests(), "the first Binding is out"
    advance(clock, 10)
    bridges = [addr for data, addr in transport.written if data == b"\r\n\r\n"]
    assert len(bridges) >= 1 and set(bridges) == {HOP}
    assert observer.failures == [] and controller.isKeepingAlive(observer)

    transport.clear()
    controller.socketIdle(False, shared)
    advance(clock, 5)
    assert [data for data, _ in transport.written if data == b"\r\n\r\n"] == []
    controller.socketIdle(True, shared)
    assert (b"\r\n\r\n", HOP) in transport.written

    transport.clear()
    controller.socketIdle(False, shared)
    advance(clock, 5)
    controller.freeResources(observer)
    controller.socketIdle(True, shared)
    assert [data for data, _ in transport.written if data == b"\r\n\r\n"] == []
    assert observer.failures == []
    controller.freeResources()


def test_the_fallbacks_timeout_counts_as_a_keepalive_timeout_but_no_flow_failure() -> None:
    clock, controller, shared, transport, observer = setup(udpKeepaliveMethod="auto")
    controller.refreshNATBinding(shared, observer, HOP)
    advance(clock, 25 + 40)
    figures = Figures()
    ControllerFigures(controller).reportFigures(figures)
    assert figures.get("sipnat_keepalives_total", result="timeout") == 1
    assert figures.get("sipnat_flow_failures_total", reason="stun_timeout") == 0
    assert figures.get("sipnat_flows", transport="udp") == 1
    controller.freeResources()


def test_a_bad_method_in_the_config_file_is_one_line() -> None:
    with pytest.raises(InvalidSettingsError) as e:
        parseConfigText("[default]\nudpKeepaliveMethod = automatic\n")
    assert "\n" not in str(e.value) and "udpKeepaliveMethod" in str(e.value)
