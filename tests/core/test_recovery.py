"""RFC 5626 §4.5 over several flows (core.recovery): the wait by consecutive failures and by the other flows."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twisted_sipnat.core.recovery import DOWN, REGISTERING, UP, FlowRecovery, RecoveryPolicy
from twisted_sipnat.errors import InvalidSettingsError


@given(failures=st.integers(1, 200), allFailed=st.booleans(), draw=st.floats(0, 1, exclude_max=True))
def test_theWaitIsHalfToAllOfTheCappedDoubling(failures: int, allFailed: bool, draw: float) -> None:
    policy = RecoveryPolicy()
    ceiling = min(1800.0, (30.0 if allFailed else 90.0) * 2.0 ** min(failures, 64))
    delay = policy.delay(failures, allFailed, draw)
    assert 0.5 * ceiling - 1e-9 <= delay <= ceiling + 1e-9


def test_theRFCExample() -> None:
    """RFC 5626 §4.5: base 30 s, three failures: up to 240 s."""
    assert RecoveryPolicy().delay(3, True, 0.0) == 120.0
    assert RecoveryPolicy().delay(3, True, 0.999999) == pytest.approx(240.0, abs=0.001)


def test_ninetySecondsWhileAnotherFlowIsUpThirtyWhenAllFailed() -> None:
    recovery = FlowRecovery([1, 2], random=lambda: 0.0)
    recovery.up(1)
    recovery.up(2)
    assert recovery.failed(2) == 90.0, "flow 1 still keeps the UA reachable: 50 % of 90 x 2"
    assert not recovery.allFailed
    assert recovery.failed(1) == 30.0, "now none is up: 50 % of 30 x 2"
    assert recovery.allFailed and recovery.states == {1: DOWN, 2: DOWN}
    assert recovery.failed(2) == 60.0, "flow 2's second failure in a row, all failed: 50 % of 30 x 4"


def test_eachFlowCountsItsOwnFailuresAndASuccessResetsThem() -> None:
    recovery = FlowRecovery([1, 2], random=lambda: 0.0)
    recovery.up(1)
    for expected in (90.0, 180.0, 360.0, 720.0, 900.0, 900.0):
        assert recovery.failed(2) == expected, "capped at max-time 1800 s (50 % of it)"
    assert recovery.failures == {1: 0, 2: 6}
    recovery.registering(2)
    assert recovery.count(REGISTERING) == 1 and recovery.count(UP) == 1
    recovery.up(2)
    assert recovery.failures[2] == 0 and recovery.failed(2) == 90.0


@given(regIds=st.lists(st.integers(1, 50), min_size=1, max_size=10, unique=True), data=st.data())
def test_statesAlwaysAddUpAndTheBaseFollowsTheOthers(regIds: list[int], data: st.DataObject) -> None:
    recovery = FlowRecovery(regIds, RecoveryPolicy(2.0, 5.0, 100.0), random=lambda: 0.0)
    for _ in range(20):
        regId = data.draw(st.sampled_from(regIds))
        if data.draw(st.booleans()):
            recovery.up(regId)
        else:
            othersUp = any(recovery.states[r] == UP for r in regIds if r != regId)
            n = recovery.failures[regId] + 1
            assert recovery.failed(regId) == 0.5 * min(100.0, (5.0 if othersUp else 2.0) * 2**n)
        assert sum(recovery.count(s) for s in (REGISTERING, UP, DOWN)) == len(regIds)


@pytest.mark.parametrize(("kw", "key"), [
    ({"baseAllFailed": 0}, "backoff-base-all-failed"),
    ({"baseSomeUp": -1}, "backoff-base-some-up"),
    ({"maxTime": float("inf")}, "backoff-max"),
    ({"baseSomeUp": 100.0, "maxTime": 60.0}, "backoff-base-some-up"),
    ({"baseAllFailed": True}, "backoff-base-all-failed"),
])
def test_badFiguresAreRefusedNamingTheOption(kw: dict[str, float], key: str) -> None:
    with pytest.raises(InvalidSettingsError) as info:
        RecoveryPolicy(**kw)
    assert info.value.key == key
