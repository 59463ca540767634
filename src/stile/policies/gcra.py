"""GCRA (the generic cell rate algorithm): rate limits with a burst, one number of state per key.

A limit of `count` per `period` with burst `burst` admits a request at time `now` when the key's
theoretical arrival time (TAT) is at most `(burst - 1) * interval` ahead of `now`, where
`interval = period / count`; an admitted request moves the TAT `interval` forward. Over any window of
length `t` at most `burst + t / interval` requests are admitted, and requests spaced at least
`interval` apart are never refused. Times are integer nanoseconds (the interval is rounded up, so the
limiter is never looser than the configured rate); the clock is injected for tests.

`MemoryGcra` keeps TATs in a dict for one process; `policies/ratelimit_redis.py` runs the same
arithmetic in one Lua script in Redis for many processes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

NS = 1_000_000_000
_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600,
          "d": 86_400, "day": 86_400}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([a-z]+)\s*$")


@dataclass(frozen=True, slots=True)
class Rate:
    count: int
    period_s: int

    @property
    def interval_ns(self) -> int:
        return -(-self.period_s * NS // self.count)  # ceil: never looser than count/period

    def __str__(self) -> str:
        return f"{self.count}/{self.period_s}s"


def parse_rate(text: str) -> Rate:
    """`10/s`, `5/min`, `1000/h`, `100/10s`, `20000/day` -> Rate; ValueError with the accepted forms."""
    m = _RATE.match(text.lower())
    word = m.group(3) if m else ""
    unit = _UNITS.get(word) or (_UNITS.get(word[:-1]) if len(word) > 2 and word.endswith("s") else None)
    if m is None or unit is None:
        raise ValueError(f"rate {text!r}: expected COUNT/UNIT with UNIT one of s, min, h, day (e.g. 10/s, 5/min)")
    count, mult = int(m.group(1)), int(m.group(2) or 1)
    if count < 1 or mult < 1:
        raise ValueError(f"rate {text!r}: count and period must be at least 1")
    return Rate(count, mult * unit)


@dataclass(frozen=True, slots=True)
class Bucket:
    """One limit's parameters: the emission interval and how far ahead the TAT may run (burst * interval)."""

    interval_ns: int
    capacity_ns: int

    @classmethod
    def of(cls, rate: Rate, burst: int) -> Bucket:
        interval = rate.interval_ns
        return cls(interval, interval * burst)


def over_by(tat: int, now: int, bucket: Bucket) -> tuple[int, int]:
    """(nanoseconds until admitted, 0 when admitted now; the TAT after admitting)."""
    start = tat if tat > now else now
    new = start + bucket.interval_ns
    over = new - now - bucket.capacity_ns
    return (over if over > 0 else 0), new


class MemoryGcra:
    """TATs per key in this process. `acquire` admits all keys or none (so a refused call consumes nothing)."""

    def __init__(self, clock: Callable[[], int] = time.monotonic_ns, max_keys: int = 100_000) -> None:
        self.clock = clock
        self.max_keys = max_keys
        self.tats: dict[str, int] = {}

    def acquire(self, checks: Sequence[tuple[str, Bucket]]) -> tuple[int, int]:
        """(index of the first refusing check or -1, nanoseconds to wait: 0 when admitted)."""
        now = self.clock()
        tats = self.tats
        if len(checks) == 1:  # the common case, without the list
            key, bucket = checks[0]
            wait, new = over_by(tats.get(key, 0), now, bucket)
            if wait:
                return 0, wait
            if key not in tats and len(tats) >= self.max_keys:
                self._prune(now)
            tats[key] = new
            return -1, 0
        news = []
        for i, (key, bucket) in enumerate(checks):
            wait, new = over_by(tats.get(key, 0), now, bucket)
            if wait:
                return i, wait
            news.append(new)
        if len(tats) + len(checks) > self.max_keys:
            self._prune(now)
        for (key, _), new in zip(checks, news, strict=True):
            tats[key] = new
        return -1, 0

    def _prune(self, now: int) -> None:
        """Forget keys whose TAT has passed (they behave exactly like new keys); if none, the oldest half."""
        expired = [k for k, tat in self.tats.items() if tat <= now]
        if not expired:
            expired = sorted(self.tats, key=self.tats.__getitem__)[: len(self.tats) // 2]
        for k in expired:
            del self.tats[k]
