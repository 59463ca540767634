"""GCRA with an injected clock: the burst + rate * t bound holds for any arrival pattern (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stile.policies.gcra import NS, Bucket, MemoryGcra, Rate, parse_rate


class Clock:
    def __init__(self) -> None:
        self.now = 10 * NS

    def __call__(self) -> int:
        return self.now


def test_parse_rate() -> None:
    assert parse_rate("10/s") == Rate(10, 1)
    assert parse_rate("5/min") == Rate(5, 60)
    assert parse_rate("1000/h") == Rate(1000, 3600)
    assert parse_rate("100/10s") == Rate(100, 10)
    assert parse_rate("20000/day") == Rate(20000, 86400)
    assert parse_rate("3 / minutes") == Rate(3, 60)
    for bad in ("10", "10/ms", "0/s", "x/s", "10/week", "-1/s"):
        with pytest.raises(ValueError, match="rate"):
            parse_rate(bad)


def test_burst_then_one_per_interval_with_retry_time() -> None:
    clock = Clock()
    gcra = MemoryGcra(clock)
    bucket = Bucket.of(parse_rate("5/min"), 5)
    assert [gcra.acquire([("k", bucket)])[1] for _ in range(5)] == [0] * 5
    index, wait = gcra.acquire([("k", bucket)])
    assert index == 0 and wait == 12 * NS  # one token every 12 s
    clock.now += wait - 1
    assert gcra.acquire([("k", bucket)])[1] == 1
    clock.now += 1
    assert gcra.acquire([("k", bucket)]) == (-1, 0)
    assert gcra.acquire([("other", bucket)]) == (-1, 0)  # keys are independent


def test_refused_multi_check_consumes_nothing() -> None:
    clock = Clock()
    gcra = MemoryGcra(clock)
    wide, narrow = Bucket.of(parse_rate("100/s"), 100), Bucket.of(parse_rate("1/min"), 1)
    assert gcra.acquire([("a", wide), ("b", narrow)]) == (-1, 0)
    assert gcra.acquire([("a", wide), ("b", narrow)])[0] == 1
    before = gcra.tats["a"]
    assert gcra.acquire([("a", wide), ("b", narrow)])[0] == 1
    assert gcra.tats["a"] == before


def test_prune_keeps_memory_bounded() -> None:
    clock = Clock()
    gcra = MemoryGcra(clock, max_keys=10)
    bucket = Bucket.of(parse_rate("1/s"), 1)
    for i in range(100):
        gcra.acquire([(f"k{i}", bucket)])
    assert len(gcra.tats) <= 10


@settings(max_examples=300, deadline=None)
@given(count=st.integers(1, 20), period=st.sampled_from([1, 60, 3600]), burst=st.integers(1, 30),
       gaps=st.lists(st.integers(0, 3 * NS), min_size=1, max_size=200))
def test_never_more_than_burst_plus_rate_times_t(count: int, period: int, burst: int, gaps: list[int]) -> None:
    clock = Clock()
    gcra = MemoryGcra(clock)
    rate = Rate(count, period)
    bucket = Bucket.of(rate, burst)
    admitted: list[int] = []
    for gap in gaps:
        clock.now += gap
        if gcra.acquire([("k", bucket)])[0] < 0:
            admitted.append(clock.now)
    # any window [admitted[i], admitted[j]] holds at most burst + count * t / period admissions
    for i in range(len(admitted)):
        for j in range(i, len(admitted)):
            t = admitted[j] - admitted[i]
            assert (j - i + 1) * period * NS <= burst * period * NS + count * t


@settings(max_examples=200, deadline=None)
@given(count=st.integers(1, 20), burst=st.integers(1, 10), extra=st.lists(st.integers(0, NS), max_size=50))
def test_spaced_requests_are_never_refused(count: int, burst: int, extra: list[int]) -> None:
    clock = Clock()
    gcra = MemoryGcra(clock)
    bucket = Bucket.of(Rate(count, 1), burst)
    for gap in extra:
        clock.now += bucket.interval_ns + gap
        assert gcra.acquire([("k", bucket)]) == (-1, 0)
