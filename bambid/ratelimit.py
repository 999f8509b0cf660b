"""Token buckets with an injected clock.

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second.
``KeyedLimiter`` keeps one bucket per key (a connection, a user, an address) and
forgets buckets that have been full long enough to be indistinguishable from new.
"""

from __future__ import annotations

import attrs
from twisted.internet.interfaces import IReactorTime


@attrs.define
class TokenBucket:
    rate: float
    burst: float
    tokens: float
    updated: float

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def take(self, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens. Returns 0.0 when allowed, else the seconds to
        wait until it would be (nothing is taken then)."""
        self._refill(now)
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate

    def full_at(self) -> float:
        return self.updated + (self.burst - self.tokens) / self.rate

    def reconfigure(self, now: float, rate: float, burst: float) -> None:
        """Use ``rate`` and ``burst`` from ``now`` on: what was earned until
        now is kept (at most the new ``burst``); new refills use the new rate."""
        self._refill(now)
        self.rate = rate
        self.burst = burst
        self.tokens = min(self.tokens, burst)


class KeyedLimiter:
    """One ``TokenBucket`` per key, created full on first use."""

    def __init__(self, clock: IReactorTime, rate: float, burst: float) -> None:
        _check(rate, burst)
        self.clock = clock
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, TokenBucket] = {}
        self._next_sweep = 0.0

    def configure(self, rate: float, burst: float) -> None:
        """Change the limit at run time (SIGHUP): new buckets start with
        ``burst`` tokens; every existing one keeps what it had earned so far,
        capped at ``burst``, and refills at ``rate`` from now on."""
        _check(rate, burst)
        now = self.clock.seconds()
        self.rate = rate
        self.burst = burst
        for bucket in self._buckets.values():
            bucket.reconfigure(now, rate, burst)
        self._next_sweep = 0.0

    def take(self, key: str, cost: float = 1.0) -> float:
        """0.0 if ``key`` may proceed now, else seconds until it may (``retry_after``)."""
        now = self.clock.seconds()
        self._sweep(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, self.burst, now)
        return bucket.take(now, cost)

    def reset(self, key: str) -> None:
        self._buckets.pop(key, None)

    def __len__(self) -> int:
        return len(self._buckets)

    def _sweep(self, now: float) -> None:
        # Amortised: at most once per refill period, drop buckets that are full again.
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.burst / self.rate
        for key in [k for k, b in self._buckets.items() if b.full_at() <= now]:
            del self._buckets[key]


def _check(rate: float, burst: float) -> None:
    if rate <= 0 or burst < 1:
        raise ValueError("rate must be > 0 and burst >= 1")
