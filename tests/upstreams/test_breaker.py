"""Circuit breaker, outlier ejection and retry budget as state machines over an injected clock."""

from __future__ import annotations

from stile.upstreams.breaker import Breaker, BreakerState, Ejection, RetryBudget, max_ejected


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_opens_after_consecutive_failures_and_not_before() -> None:
    clock = Clock()
    b = Breaker(clock, failures=3, open_seconds=5)
    for _ in range(2):
        assert b.acquire()
        b.failure()
    assert b.state == "closed"
    assert b.acquire()
    b.success()  # a success resets the run
    for _ in range(2):
        b.acquire()
        b.failure()
    assert b.state == "closed"
    b.acquire()
    b.failure()
    assert b.state == "open"
    assert not b.acquire()
    assert b.retry_after() == 5.0


def test_half_open_admits_trials_then_closes() -> None:
    clock = Clock()
    changes: list[BreakerState] = []
    b = Breaker(clock, failures=1, open_seconds=5, trial_calls=2)
    b.on_change = changes.append
    b.acquire()
    b.failure()
    clock.t += 4.9
    assert b.state == "open" and not b.available()
    clock.t += 0.1
    assert b.state == "half_open"
    assert b.acquire() and b.acquire()
    assert not b.acquire()  # only trial_calls at once
    b.success()
    assert b.state == "half_open"
    b.success()
    assert b.state == "closed"
    assert changes == ["open", "half_open", "closed"]


def test_failed_trial_reopens_for_a_full_period() -> None:
    clock = Clock()
    b = Breaker(clock, failures=1, open_seconds=2)
    b.acquire()
    b.failure()
    clock.t += 2
    assert b.acquire()
    b.failure()
    assert b.state == "open"
    clock.t += 1.9
    assert b.state == "open"
    clock.t += 0.1
    assert b.state == "half_open"


def test_released_trial_frees_its_slot() -> None:
    clock = Clock()
    b = Breaker(clock, failures=1, open_seconds=1)
    b.acquire()
    b.failure()
    clock.t += 1
    assert b.acquire()
    assert not b.acquire()
    b.release()  # cancelled without an outcome
    assert b.acquire()


def test_failure_rate_opens_over_a_full_window() -> None:
    clock = Clock()
    b = Breaker(clock, failures=100, failure_rate=0.5, window=4)
    for ok in (True, False, True):
        b.acquire()
        b.success() if ok else b.failure()
    assert b.state == "closed"  # window not full yet
    b.acquire()
    b.failure()  # 2 of 4 failed
    assert b.state == "open"


def test_ejection_doubles_and_caps() -> None:
    clock = Clock()
    e = Ejection(clock, consecutive=2, base_seconds=1, max_seconds=3)
    assert not e.failure(True)
    assert e.failure(True)
    assert e.until - clock.t == 1
    clock.t = e.until
    e.failure(True)
    assert e.failure(True)
    assert e.until - clock.t == 2
    clock.t = e.until
    e.failure(True)
    assert e.failure(True)
    assert e.until - clock.t == 3  # capped (would be 4)
    clock.t = e.until
    e.success()  # back and answering: the next ejection starts short again
    e.failure(True)
    e.failure(True)
    assert e.until - clock.t == 1


def test_ejection_refused_when_over_the_percentage() -> None:
    clock = Clock()
    e = Ejection(clock, consecutive=1)
    assert not e.failure(may_eject=False)
    assert not e.ejected
    assert max_ejected(1, 100) == 0
    assert max_ejected(3, 50) == 1
    assert max_ejected(3, 100) == 2  # never all of them
    assert max_ejected(10, 10) == 1


def test_retry_budget_ratio_and_floor() -> None:
    clock = Clock()
    budget = RetryBudget(clock, ratio=0.2, min_per_second=0.5, window=10)  # floor: 5 retries per 10 s
    for _ in range(5):
        assert budget.try_retry()
    assert not budget.try_retry()
    for _ in range(50):
        budget.request()  # 20% of 50 = 10 retries
    for _ in range(5):
        assert budget.try_retry()
    assert not budget.try_retry()


def test_retry_budget_window_slides() -> None:
    clock = Clock()
    budget = RetryBudget(clock, ratio=0.0, min_per_second=0.2, window=10)  # 2 per 10 s
    assert budget.try_retry() and budget.try_retry()
    assert not budget.try_retry()
    clock.t += 9
    assert not budget.try_retry()
    clock.t += 1  # the first second's retries left the window
    assert budget.try_retry()
