"""
A clean reactor stop is not a flow failure (issue 13): the controller stops at the reactor's "before shutdown"
event, so the sockets that close during shutdown end their flows without ``flowFailure``; a socket that closes
while the reactor runs still reports ``FlowConnectionLost``.  Played on a ``ShutdownClock`` (a Clock with system
event triggers); the real reactor's stop is in ``tests/loopback/test_shutdown.py``.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any, List, Tuple

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from tests.addresses import HOP
from twisted_sipnat import NATSettings, NATTraversalController, SharedStreamFactory
from twisted_sipnat.errors import FlowConnectionLost
from twisted_sipnat.testing import RecordingObserver, ShutdownClock, sharedDatagramSocket


def udpFlow(clock: Any) -> Tuple[NATTraversalController, Any, Any, RecordingObserver]:
    controller = NATTraversalController(NATSettings(udpKeepaliveInterval=10), reactor=clock)
    shared, transport = sharedDatagramSocket(controller)
    observer = RecordingObserver()
    assert controller.refreshNATBinding(shared, observer, nextHop=HOP)
    clock.advance(11)  # a keepalive in flight too
    assert controller.isKeepingAlive(observer)
    return controller, shared, transport, observer


def tcpFlow(clock: Any) -> Tuple[NATTraversalController, Any, RecordingObserver]:
    controller = NATTraversalController(NATSettings(tcpKeepaliveInterval=10), reactor=clock)
    factory = SharedStreamFactory(Factory.forProtocol(Protocol), controller=controller)
    shared = factory.buildProtocol(IPv4Address("TCP", *HOP))
    shared.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", *HOP)))
    observer = RecordingObserver()
    assert controller.refreshNATBinding(shared, observer)
    return controller, shared, observer


def closeUDP(clock: ShutdownClock, shared: Any) -> None:
    """What a real reactor does "during" shutdown: its ports' connectionLost, i.e. the protocol's doStop."""
    clock.addSystemEventTrigger("during", "shutdown", shared.doStop)


def test_aReactorShutdownStopsUDPFlowsWithoutFlowFailure() -> None:
    clock = ShutdownClock()
    controller, shared, transport, observer = udpFlow(clock)
    closeUDP(clock, shared)
    clock.fireSystemEvent("shutdown")
    assert observer.failures == []  # the old controller: flowFailure(FlowConnectionLost)
    assert controller.stopped and not controller.isKeepingAlive(observer)
    assert clock.getDelayedCalls() == []
    assert controller.tableSizes()["flows"] == 0


def test_aReactorShutdownStopsTCPFlowsWithoutFlowFailure() -> None:
    clock = ShutdownClock()
    controller, shared, observer = tcpFlow(clock)
    clock.addSystemEventTrigger("during", "shutdown", shared.connectionLost, Failure(ConnectionDone()))
    clock.fireSystemEvent("shutdown")
    assert observer.failures == []
    assert clock.getDelayedCalls() == []


def test_aSocketUsedAfterTheStopClosesQuietlyToo() -> None:
    # Something a "before shutdown" trigger started after ours (a last REGISTER's flow) is stopped as quietly.
    clock = ShutdownClock()
    controller, shared, observer = tcpFlow(clock)
    clock.fireSystemEvent("shutdown")
    late = RecordingObserver("late")
    assert controller.refreshNATBinding(shared, late)
    shared.connectionLost(Failure(ConnectionLost()))
    assert late.failures == [] and observer.failures == []
    assert clock.getDelayedCalls() == []


def test_aResolutionPendingAtShutdownIsCancelledNotFailed() -> None:
    clock = ShutdownClock()
    controller = NATTraversalController(NATSettings(), reactor=clock)
    shared, transport = sharedDatagramSocket(controller)
    results: List[Failure] = []
    controller.resolvePublicAddress(None, shared, HOP, observer=RecordingObserver()).addErrback(results.append)
    closeUDP(clock, shared)
    clock.fireSystemEvent("shutdown")
    assert results and results[0].check(defer.CancelledError)
    assert clock.getDelayedCalls() == []


def test_whileTheReactorRunsAClosedSocketIsStillAFlowFailure() -> None:
    clock = ShutdownClock()
    controller, shared, transport, observer = udpFlow(clock)
    shared.doStop()  # a failing UDP socket (or the port stopped under the controller)
    assert [f.check(FlowConnectionLost) for f in observer.failures] == [FlowConnectionLost]
    controller2, stream, observer2 = tcpFlow(clock)
    stream.connectionLost(Failure(ConnectionLost("reset by peer")))
    assert [f.check(FlowConnectionLost) for f in observer2.failures] == [FlowConnectionLost]
    assert not controller.stopped and not controller2.stopped


def test_stopWithTheReactorRunningIsQuietAndRemovesTheTrigger() -> None:
    clock = ShutdownClock()
    controller, shared, transport, observer = udpFlow(clock)
    assert clock.triggerCount() == 1
    controller.stop()
    assert clock.triggerCount() == 0
    assert not controller.isKeepingAlive(observer)
    shared.doStop()
    assert observer.failures == []
    assert clock.getDelayedCalls() == []


def test_aPlainClockHasNoTriggersAndNeedsNone() -> None:
    clock = Clock()
    controller, shared, transport, observer = udpFlow(clock)
    controller.stop()
    shared.doStop()
    assert observer.failures == []


def test_theTriggerDoesNotKeepTheControllerAlive() -> None:
    clock = ShutdownClock()
    controller = NATTraversalController(NATSettings(), reactor=clock)
    ref = weakref.ref(controller)
    del controller
    gc.collect()
    assert ref() is None
    clock.fireSystemEvent("shutdown")  # the trigger finds nothing to stop
    assert clock.triggerCount() == 0
