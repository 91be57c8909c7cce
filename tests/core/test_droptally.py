"""The rate-limited summary of dropped requests (twisted_sipnat.core.ratelimit.DropTally)."""

from __future__ import annotations

from twisted_sipnat.core.ratelimit import DropTally


def test_firstDropIsReportedAtOnceThenOneLinePerInterval() -> None:
    tally = DropTally("requests", interval=10.0)
    assert tally.drop("192.0.2.1", 0.0) == "dropped 1 request from 1 source in the last 0 s"
    lines = [tally.drop(f"192.0.2.{i % 17}", 0.001 * i) for i in range(1, 1235)]
    assert [line for line in lines if line] == []
    assert tally.drop("192.0.2.1", 10.0) == "dropped 1,235 requests from 17 sources in the last 10 s"
    assert tally.total == 1236


def test_flushSaysNothingWhenNothingWasDropped() -> None:
    tally = DropTally()
    assert tally.flush(5.0) is None
    tally.drop("a", 5.0)
    assert tally.flush(6.0) is None  # the first drop was already said


def test_sourcesAreBoundedUnderASpoofedFlood() -> None:
    tally = DropTally(maxSources=100)
    tally.drop("x", 0.0)
    for i in range(5000):
        tally.drop(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 1.0)
    assert len(tally._sources) == 100
    line = tally.flush(2.0)
    assert line == "dropped 5,000 requests from at least 100 sources in the last 2 s"


def test_aClockStepBackStartsANewInterval() -> None:
    tally = DropTally(interval=10.0)
    tally.drop("a", 100.0)
    assert tally.drop("a", 50.0) is None  # stepped back: the interval restarts at 50
    assert tally.drop("a", 60.0) == "dropped 2 requests from 1 source in the last 10 s"


def test_dueAtSaysWhenThePendingDropsAreToBeSaid() -> None:
    tally = DropTally(interval=10.0)
    assert tally.dueAt is None
    tally.drop("a", 100.0)  # said at once
    assert tally.dueAt is None
    tally.drop("a", 103.0)
    assert tally.dueAt == 110.0
    tally.flush(110.0)
    assert tally.dueAt is None
