"""
The client side's figures (``service.flowfigures``): a controller's flows by transport, its keepalives by result
and its flow failures by reason, as the contract names them, and the embedded default reporting them.
"""

from __future__ import annotations

import random

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from tests.addresses import HOP
from twisted_sipnat import NATSettings, NATTraversalController
from twisted_sipnat.protocols import SharedStreamFactory
from twisted_sipnat.service.figures import Figures
from twisted_sipnat.service.flowfigures import ControllerFigures
from twisted_sipnat.testing import RecordingObserver, answerAll, sharedDatagramSocket

MAPPED = ("203.0.113.1", 40000)



def gather(controller: NATTraversalController) -> Figures:
    figures = Figures()
    ControllerFigures(controller).reportFigures(figures)
    return figures


def test_udp_keepalives_by_result_and_rtt() -> None:
    clock = Clock()
    controller = NATTraversalController(NATSettings(), reactor=clock, rng=random.Random(5))
    shared, transport = sharedDatagramSocket(controller)
    controller.refreshNATBinding(shared, RecordingObserver(), HOP)
    for _ in range(4):
        clock.advance(25)
        clock.advance(0.03)
        answerAll(shared, transport, MAPPED)
    clock.advance(25)
    answerAll(shared, transport, MAPPED, error=(500, "Server Error"))
    figures = gather(controller)
    assert figures.get("sipnat_flows", transport="udp") == 1
    assert figures.get("sipnat_flows", transport="tcp") == 0
    assert figures.get("sipnat_keepalives_total", result="answered") == 4  # the error answer is not one
    assert figures.get("sipnat_keepalives_total", result="error") == 1
    assert figures.get("sipnat_keepalives_total", result="timeout") == 0
    rtt = figures.histograms["sipnat_keepalive_rtt_seconds"]
    # the error answer (at once) is timed too: the round trip is as real
    assert rtt.count == 5 and rtt.buckets[0.025] == 1 and rtt.buckets[0.05] == 5 and rtt.buckets[float("inf")] == 5
    controller.freeResources()


def test_a_keepalive_timeout_is_a_timeout_and_a_stun_timeout_failure() -> None:
    clock = Clock()
    controller = NATTraversalController(NATSettings(), reactor=clock, rng=random.Random(5))
    shared, transport = sharedDatagramSocket(controller)
    controller.refreshNATBinding(shared, RecordingObserver(), HOP)
    clock.advance(25)
    clock.advance(40)
    figures = gather(controller)
    assert figures.get("sipnat_keepalives_total", result="timeout") == 1
    assert figures.get("sipnat_flow_failures_total", reason="stun_timeout") == 1
    assert figures.get("sipnat_flows", transport="udp") == 0


def test_tcp_pongs_count_as_answered_and_a_missing_one_as_a_pong_timeout() -> None:
    clock = Clock()
    controller = NATTraversalController(NATSettings(), reactor=clock, rng=random.Random(1))
    factory = SharedStreamFactory(Factory.forProtocol(Protocol), controller=controller)
    shared = factory.buildProtocol(IPv4Address("TCP", *HOP))
    transport = StringTransport(peerAddress=IPv4Address("TCP", *HOP))
    shared.makeConnection(transport)
    observer = RecordingObserver()
    controller.refreshNATBinding(shared, observer)
    assert gather(controller).get("sipnat_flows", transport="tcp") == 1
    clock.advance(120)
    shared.dataReceived(b"\r\n")  # the pong
    clock.advance(120)
    clock.advance(10)  # no pong this time
    assert len(observer.failures) == 1
    figures = gather(controller)
    assert figures.get("sipnat_keepalives_total", result="answered") == 1
    assert figures.get("sipnat_keepalives_total", result="timeout") == 1
    assert figures.get("sipnat_flow_failures_total", reason="pong_timeout") == 1
    assert figures.get("sipnat_flows", transport="tcp") == 0
    assert figures.histograms["sipnat_keepalive_rtt_seconds"].count == 0  # pongs are not timed


def test_the_embedded_default_reports_its_client() -> None:
    from twisted_sipnat.service.embedded import EmbeddedDefault

    embedded = EmbeddedDefault(Clock())
    embedded.client.controller.stats["keepalive.answered"] += 3
    figures = Figures()
    embedded.reportFigures(figures)
    assert figures.get("sipnat_keepalives_total", result="answered") == 3
