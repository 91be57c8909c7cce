"""
What the fuzz, security and loss tests share: example counts, a log watcher, SIP recorders, an observer.

Example counts: the tests without a marker run ``CI_EXAMPLES`` examples each (``SIPNAT_FUZZ_CI_EXAMPLES``,
default 300) so the default ``python -m pytest`` stays fast; the ``@pytest.mark.fuzz`` variants run
``FUZZ_EXAMPLES`` (``SIPNAT_FUZZ_EXAMPLES``; ``tox -e fuzz`` sets 100,000).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Tuple

from hypothesis import HealthCheck, settings
from twisted.internet.protocol import DatagramProtocol, Protocol
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from zope.interface import implementer

from twisted_sipnat.core.timers import TimerHeap
from twisted_sipnat.testing import RecordingObserver

CI_EXAMPLES = int(os.environ.get("SIPNAT_FUZZ_CI_EXAMPLES", "300"))
FUZZ_EXAMPLES = int(os.environ.get("SIPNAT_FUZZ_EXAMPLES", "2000"))

#: Settings for the unmarked, CI-sized runs and for the long ``fuzz`` runs.
ciSettings = settings(
    max_examples=CI_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
fuzzSettings = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@implementer(ILogObserver)
class LogWatcher:
    """Every event logged while installed; :attr:`failures` are those carrying a traceback (``log_failure``)."""

    def __init__(self) -> None:
        self.events: List[LogEvent] = []

    def __call__(self, event: LogEvent) -> None:
        self.events.append(event)

    @property
    def failures(self) -> List[str]:
        found = []
        for event in self.events:
            failure = event.get("log_failure")
            if failure is not None:
                found.append(f"{formatEvent(event)}\n{failure.getTraceback()}")
        return found

    def sipnatEvents(self, name: str) -> List[LogEvent]:
        return [event for event in self.events if event.get("sipnat_event") == name]


@contextmanager
def watchingLogs() -> Iterator[LogWatcher]:
    """Collect what twisted.logger publishes inside the block (the library logs through the global publisher)."""
    watcher = LogWatcher()
    globalLogPublisher.addObserver(watcher)
    try:
        yield watcher
    finally:
        globalLogPublisher.removeObserver(watcher)


def assertNoLoggedFailure(watcher: LogWatcher) -> None:
    """No traceback was logged: a logged failure is an exception that escaped, only caught later."""
    assert watcher.failures == [], "\n\n".join(watcher.failures)


class DatagramRecorder(DatagramProtocol):
    """A SIP stack on UDP that records every datagram it is handed, in order."""

    def __init__(self) -> None:
        self.received: List[Tuple[bytes, Any]] = []

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.received.append((datagram, addr))


class StreamRecorder(Protocol):
    """A SIP stack on a stream that records the bytes it is handed."""

    def __init__(self) -> None:
        self._received = bytearray()

    @property
    def received(self) -> bytes:
        return bytes(self._received)

    def dataReceived(self, data: bytes) -> None:
        self._received += data


#: An IBindingObserver that records its flow failures (the library ships it).
Observer = RecordingObserver


def counts(controller: Any) -> Dict[str, int]:
    """The size of every table the controller keeps (for the growth bounds)."""
    sizes = controller.tableSizes()
    return {key: sizes[key] for key in ("pending", "flows", "sockets", "resolutions", "memory", "timers")}


class LoopDetector(TimerHeap):
    """
    A controller's TimerHeap (``NATTraversalController(..., timers=LoopDetector())``) that notices a timer
    loop: the same object scheduled again at the same instant over and over inside one wake-up (the engine's
    timer pass would spin forever).  It then raises, which
    the controller logs as a failure and survives, so a test ends and can report the loop instead of hanging.
    """

    def __init__(self, limit: int = 50) -> None:
        super().__init__()
        self.limit = limit
        self.looped = False
        self._seen: Dict[Tuple[int, float], int] = {}

    def schedule(self, item: Any, when: float) -> None:
        key = (id(item), when)
        seen = self._seen[key] = self._seen.get(key, 0) + 1
        if seen > self.limit:
            self.looped = True
            raise RuntimeError(f"timer loop: {item!r} scheduled at {when!r} {seen} times")
        if len(self._seen) > 100_000:
            self._seen.clear()
        super().schedule(item, when)
