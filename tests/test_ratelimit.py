"""Token buckets against a fake clock."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from bambid.ratelimit import KeyedLimiter


def test_burst_then_rate() -> None:
    clock = Clock()
    limiter = KeyedLimiter(clock, rate=2.0, burst=3)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)
    clock.advance(0.5)
    assert limiter.take("a") == 0.0
    assert limiter.take("a") == pytest.approx(0.5)


def test_keys_are_independent() -> None:
    clock = Clock()
    limiter = KeyedLimiter(clock, rate=1.0, burst=1)
    assert limiter.take("a") == 0.0
    assert limiter.take("b") == 0.0
    assert limiter.take("a") > 0


def test_full_buckets_are_forgotten() -> None:
    clock = Clock()
    limiter = KeyedLimiter(clock, rate=1.0, burst=2)
    for key in "abcdef":
        limiter.take(key)
    assert len(limiter) == 6
    clock.advance(10)
    limiter.take("z")
    assert len(limiter) == 1


def test_refused_take_costs_nothing() -> None:
    clock = Clock()
    limiter = KeyedLimiter(clock, rate=1.0, burst=1)
    limiter.take("a")
    limiter.take("a")
    limiter.take("a")
    clock.advance(1.0)
    assert limiter.take("a") == 0.0


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        KeyedLimiter(Clock(), rate=0, burst=1)
