"""Per-endpoint failure handling for pooled upstreams: circuit breaker, outlier ejection, retry budget.

All three are plain state machines over an injected clock (`now()` in seconds, monotonic), so tests
drive them without sleeping. None does I/O; each costs a few attribute updates per call.

* `Breaker`: closed -> open after `failures` consecutive failures, or when at least `failure_rate` of
  the last `window` calls failed (once `window` calls were seen); open -> half-open after `open_seconds`,
  admitting `trial_calls` concurrent trial calls; all trials succeed -> closed, any fails -> open again.
* `Ejection`: passive outlier detection. `consecutive` failures eject the endpoint for
  `base_seconds * 2^(n-1)` (n = how many times it was ejected in a row, capped at `max_seconds`); the
  pool refuses an ejection that would put more than `max_ejected_percent` of its endpoints out.
* `RetryBudget`: retries may be at most `ratio` of the requests of the last `window` seconds, or
  `min_per_second * window` retries, whichever is more (so a quiet pool can still retry a few).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Literal

Clock = Callable[[], float]
BreakerState = Literal["closed", "open", "half_open"]


class Breaker:
    def __init__(self, clock: Clock, *, failures: int = 5, failure_rate: float = 1.0, window: int = 20,
                 open_seconds: float = 10.0, trial_calls: int = 1) -> None:
        self._now = clock
        self.failures = failures
        self.failure_rate = failure_rate
        self.open_seconds = open_seconds
        self.trial_calls = trial_calls
        self._outcomes: deque[bool] = deque(maxlen=window)  # True = failed
        self._failed_in_window = 0
        self._state: BreakerState = "closed"
        self._consecutive = 0
        self._opened_at = 0.0
        self._trials_running = 0
        self._trials_passed = 0
        self.on_change: Callable[[BreakerState], None] = _ignore

    @property
    def state(self) -> BreakerState:
        if self._state == "open" and self._now() >= self._opened_at + self.open_seconds:
            self._set("half_open")
            self._trials_running = self._trials_passed = 0
        return self._state

    @property
    def consecutive(self) -> int:
        """Failures since the last success."""
        return self._consecutive

    def retry_after(self) -> float:
        """Seconds until an open breaker admits a trial call (0 when it admits calls now)."""
        if self.state != "open":
            return 0.0
        return max(0.0, self._opened_at + self.open_seconds - self._now())

    def available(self) -> bool:
        """Would `acquire` admit a call now (without taking a trial slot)?"""
        state = self.state
        return state == "closed" or (state == "half_open" and self._trials_running < self.trial_calls)

    def acquire(self) -> bool:
        """Admit one call (half-open: take a trial slot). Every admitted call ends in exactly one of
        `success`, `failure` or `release`."""
        if not self.available():
            return False
        if self._state == "half_open":
            self._trials_running += 1
        return True

    def success(self) -> None:
        self._consecutive = 0
        self._record(False)
        if self._state == "half_open":
            self._trials_running -= 1
            self._trials_passed += 1
            if self._trials_passed >= self.trial_calls:
                self._outcomes.clear()
                self._failed_in_window = 0
                self._set("closed")

    def failure(self) -> None:
        self._consecutive += 1
        self._record(True)
        if self._state == "half_open":
            self._trials_running -= 1
            self._open()
        elif self._state == "closed" and (self._consecutive >= self.failures or self._rate_exceeded()):
            self._open()

    def release(self) -> None:
        """An admitted call that ended without an outcome (cancelled, or a client error)."""
        if self._state == "half_open" and self._trials_running > 0:
            self._trials_running -= 1

    def _record(self, failed: bool) -> None:
        window = self._outcomes
        if window.maxlen is not None and len(window) == window.maxlen and window[0]:
            self._failed_in_window -= 1
        window.append(failed)
        self._failed_in_window += failed

    def _rate_exceeded(self) -> bool:
        window = self._outcomes
        return (self.failure_rate < 1.0 and len(window) == window.maxlen
                and self._failed_in_window >= self.failure_rate * len(window))

    def _open(self) -> None:
        self._opened_at = self._now()
        self._set("open")

    def _set(self, state: BreakerState) -> None:
        if state != self._state:
            self._state = state
            self.on_change(state)


class Ejection:
    def __init__(self, clock: Clock, *, consecutive: int = 3, base_seconds: float = 5.0,
                 max_seconds: float = 60.0) -> None:
        self._now = clock
        self.consecutive = consecutive
        self.base_seconds = base_seconds
        self.max_seconds = max_seconds
        self.consecutive_failures = 0
        self.times = 0  # ejections in a row (reset by a success after the last one ended)
        self.until = 0.0

    @property
    def ejected(self) -> bool:
        return self._now() < self.until

    def success(self) -> None:
        self.consecutive_failures = 0
        if not self.ejected:
            self.times = 0

    def failure(self, may_eject: bool) -> bool:
        """Count a failure; eject when due and allowed. True when this call ejected the endpoint."""
        self.consecutive_failures += 1
        if self.consecutive_failures < self.consecutive or self.ejected or not may_eject:
            return False
        self.times += 1
        self.until = self._now() + min(self.max_seconds, self.base_seconds * 2 ** (self.times - 1))
        self.consecutive_failures = 0
        return True


def max_ejected(endpoints: int, percent: float) -> int:
    """How many of `endpoints` may be ejected at once (at least one of two or more)."""
    if endpoints < 2:
        return 0
    return min(endpoints - 1, max(1, math.floor(endpoints * percent / 100.0)))


class RetryBudget:
    def __init__(self, clock: Clock, *, ratio: float = 0.2, min_per_second: float = 3.0,
                 window: int = 10) -> None:
        self._now = clock
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.window = window
        self._requests = [0] * window  # one bucket per second, a ring
        self._retries = [0] * window
        self._stamp = [-1] * window  # which second each bucket holds

    def _bucket(self) -> int:
        second = int(self._now())
        i = second % self.window
        if self._stamp[i] != second:
            self._stamp[i] = second
            self._requests[i] = self._retries[i] = 0
        return i

    def _live(self, counts: list[int]) -> int:
        oldest = int(self._now()) - self.window
        return sum(c for c, s in zip(counts, self._stamp, strict=True) if s > oldest)

    def request(self) -> None:
        self._requests[self._bucket()] += 1

    def try_retry(self) -> bool:
        """Spend one retry if the budget allows it."""
        i = self._bucket()
        allowed = max(self.min_per_second * self.window, self.ratio * self._live(self._requests))
        if self._live(self._retries) + 1 > allowed:
            return False
        self._retries[i] += 1
        return True


def _ignore(state: BreakerState) -> None:
    return None
