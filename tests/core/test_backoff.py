"""RFC 5626 §4.5 re-registration backoff."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twisted_sipnat.core.backoff import ALL_FAILED_BASE, MAX_TIME, SOME_OK_BASE, Backoff, reRegistrationDelay
from twisted_sipnat.errors import InvalidSettingsError


def test_firstRetryAllFailedIsBetween15And30Seconds() -> None:
    assert reRegistrationDelay(0, True, random=lambda: 0.0) == 15.0
    assert reRegistrationDelay(0, True, random=lambda: 0.999999) == pytest.approx(30.0, abs=1e-4)


def test_someFlowsOkUses90SecondBase() -> None:
    assert reRegistrationDelay(0, False, random=lambda: 0.0) == 45.0
    assert reRegistrationDelay(1, False, random=lambda: 0.0) == 90.0


def test_doublesThenCapsAt1800() -> None:
    lows = [reRegistrationDelay(n, True, random=lambda: 0.0) for n in range(8)]
    assert lows == [15.0, 30.0, 60.0, 120.0, 240.0, 480.0, 900.0, 900.0]
    assert reRegistrationDelay(10_000, True, random=lambda: 0.0) == MAX_TIME / 2


@given(st.integers(min_value=0, max_value=200), st.booleans(), st.floats(min_value=0.0, max_value=0.9999999))
def test_alwaysWithinHalfToFullOfCeiling(failures: int, allFailed: bool, draw: float) -> None:
    base = ALL_FAILED_BASE if allFailed else SOME_OK_BASE
    ceiling = min(MAX_TIME, base * 2 ** min(failures, 64))
    delay = reRegistrationDelay(failures, allFailed, random=lambda: draw)
    assert 0.5 * ceiling <= delay <= ceiling


def test_defaultRandomVaries() -> None:
    delays = {reRegistrationDelay(2) for _ in range(50)}
    assert len(delays) > 1
    assert all(60.0 <= d <= 120.0 for d in delays)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_badFailureCountIsTypedError(bad: object) -> None:
    with pytest.raises(InvalidSettingsError) as info:
        reRegistrationDelay(bad)  # type: ignore[arg-type]
    assert info.value.key == "failures"


def test_backoffCountsAndResets() -> None:
    b = Backoff(random=lambda: 0.0)
    assert [b.nextDelay(), b.nextDelay(), b.nextDelay()] == [30.0, 60.0, 120.0]  # 50 % of 30 s x 2^1, 2^2, 2^3
    assert b.failures == 3
    b.succeeded()
    assert b.failures == 0
    assert b.nextDelay(allFlowsFailed=False) == 90.0  # 50 % of 90 s x 2^1


def test_base_time_can_be_replaced_and_is_checked() -> None:
    from twisted_sipnat.core.backoff import Backoff, reRegistrationDelay
    from twisted_sipnat.errors import InvalidSettingsError

    assert reRegistrationDelay(0, random=lambda: 0.0, baseTime=1.0) == 0.5
    assert reRegistrationDelay(3, random=lambda: 0.999999, baseTime=1.0) == pytest.approx(8.0, abs=1e-4)
    backoff = Backoff(lambda: 0.0, baseTime=2.0)
    assert [backoff.nextDelay(), backoff.nextDelay()] == [2.0, 4.0]
    for bad in (0, -1, float("nan"), 1e9, True):
        with pytest.raises(InvalidSettingsError):
            Backoff(baseTime=bad)


def test_the_failure_being_reported_counts_as_in_the_rfc_example() -> None:
    """RFC 5626 §4.5: base 30 s and three consecutive failures give an upper bound of 240 s."""
    from twisted_sipnat.core.backoff import Backoff

    backoff = Backoff(lambda: 0.999999)
    bounds = [backoff.nextDelay() for _ in range(3)]
    assert bounds == [pytest.approx(60.0, abs=1e-3), pytest.approx(120.0, abs=1e-3), pytest.approx(240.0, abs=1e-3)]
    backoff.succeeded()
    assert backoff.nextDelay() == pytest.approx(60.0, abs=1e-3)
