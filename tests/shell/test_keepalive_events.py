"""
``keepaliveEvents``: the per-keepalive debug events are emitted by default (SIP stacks and ``python -m
twisted_sipnat resolve`` read them) and left out with ``keepaliveEvents=False`` (carrier scale), while the
counters and every other event stay.
"""

from __future__ import annotations

import random
from typing import Any, Dict, Iterator, List, cast

import pytest
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, globalLogPublisher

from tests.addresses import HOP
from twisted_sipnat import NATSettings, NATTraversalController
from twisted_sipnat.testing import answerAll, sharedDatagramSocket

MAPPED = ("203.0.113.1", 40000)


class Observer:
    def flowFailure(self, reason: Any) -> None:
        raise AssertionError(f"unexpected flow failure {reason}")


@pytest.fixture
def events() -> Iterator[List[Dict[str, Any]]]:
    seen: List[Dict[str, Any]] = []
    observer = cast(ILogObserver, seen.append)
    globalLogPublisher.addObserver(observer)
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(observer)


def runKeepalives(keepaliveEvents: bool, count: int) -> NATTraversalController:
    clock = Clock()
    controller = NATTraversalController(NATSettings(), reactor=clock, rng=random.Random(7),
                                        keepaliveEvents=keepaliveEvents)
    shared, transport = sharedDatagramSocket(controller)
    observer = Observer()
    controller.refreshNATBinding(shared, observer, HOP)
    for _ in range(count):
        clock.advance(25)
        assert answerAll(shared, transport, MAPPED) == 1
    controller.freeResources()
    return controller


def kinds(events: List[Dict[str, Any]]) -> List[str]:
    return [e["sipnat_event"] for e in events if "sipnat_event" in e]


def test_keepalive_events_are_emitted_by_default(events: List[Dict[str, Any]]) -> None:
    controller = runKeepalives(True, 3)
    assert kinds(events).count("keepalive.sent") == 3
    assert kinds(events).count("keepalive.answered") == 3
    assert controller.stats["keepalive.sent"] == controller.stats["keepalive.answered"] == 3


def test_keepalive_events_can_be_left_out_without_losing_counters_or_other_events(
    events: List[Dict[str, Any]],
) -> None:
    controller = runKeepalives(False, 3)
    assert "keepalive.sent" not in kinds(events)
    assert "keepalive.answered" not in kinds(events)
    assert "keepalive.started" in kinds(events) and "public.address" in kinds(events)
    assert controller.stats["keepalive.sent"] == controller.stats["keepalive.answered"] == 3
