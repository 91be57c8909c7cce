"""twisted_sipnat.wakeup: the one reactor timer a shell keeps at its core's next instant."""

from __future__ import annotations

from typing import List

from twisted.internet.task import Clock

from twisted_sipnat.wakeup import Wakeup


def test_oneTimerFollowsTheInstantAndSaysWhatItWasScheduledFor(clock: Clock) -> None:
    woken: List[float] = []
    wakeup = Wakeup(clock, woken.append)
    wakeup.at(10.0, clock.seconds())
    wakeup.at(5.0, clock.seconds())  # moved earlier: the same call, reset
    assert len(clock.getDelayedCalls()) == 1 and wakeup.pending
    clock.advance(5.0)
    assert woken == [5.0] and not wakeup.pending
    wakeup.at(7.0, clock.seconds())
    wakeup.at(None, clock.seconds())  # nothing needed: disarmed
    assert clock.getDelayedCalls() == [] and not wakeup.pending


def test_aPastInstantFiresAtOnce(clock: Clock) -> None:
    woken: List[float] = []
    wakeup = Wakeup(clock, woken.append)
    clock.advance(100.0)
    wakeup.at(90.0, clock.seconds())
    clock.advance(0)
    assert woken == [100.0]  # scheduled for now, the asked instant having passed
    wakeup.cancel()
    assert clock.getDelayedCalls() == []
