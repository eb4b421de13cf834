"""Rate limits: token buckets keyed by who is sending (a device id, an API principal, an address).

Owns: the pure rule. Each key has a bucket of `burst` tokens that refills at `rate_per_s`; a
message (or request) takes one token, and is refused when the bucket is empty, with the seconds
after which one token will be there again. No I/O and no clock of its own: the caller passes
`now`, monotonic seconds (a float is fine here: this is admission control, not signed data).

Memory is bounded: a key whose bucket has refilled to full holds no information, so it is
forgotten when the table grows past `max_keys`; if every key is still draining, the
longest-idle ones are forgotten first (they get a full bucket when they come back, which errs
on the side of letting honest senders through).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BucketLimit:
    """A sustained rate and a burst. `rate_per_s <= 0` means no limit."""

    rate_per_s: float
    burst: int

    def __post_init__(self) -> None:
        if self.burst < 1:
            raise ValueError("a bucket's burst is at least 1")

    @property
    def enabled(self) -> bool:
        """False when this limit lets everything through."""
        return self.rate_per_s > 0


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """Token buckets, one per key, all with the same `limit`."""

    def __init__(self, limit: BucketLimit, max_keys: int = 100_000) -> None:
        if max_keys < 1:
            raise ValueError("max_keys is at least 1")
        self.limit = limit
        self.max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def _refilled(self, key: str, now: float) -> _Bucket:
        b = self._buckets.get(key)
        burst = float(self.limit.burst)
        if b is None:
            if len(self._buckets) >= self.max_keys:
                self._forget(now)
            b = _Bucket(burst, now)
            self._buckets[key] = b
            return b
        elapsed = now - b.at
        if elapsed > 0:  # a clock that steps back refills nothing and takes nothing away
            b.tokens = min(burst, b.tokens + elapsed * self.limit.rate_per_s)
            b.at = now
        return b

    def take(self, key: str, now: float, cost: float = 1.0) -> float:
        """Take `cost` tokens from `key`'s bucket: 0.0 when allowed, else the seconds until the
        bucket holds `cost` again (nothing is taken from a refused request)."""
        if not self.limit.enabled:
            return 0.0
        b = self._refilled(key, now)
        if b.tokens >= cost:
            b.tokens -= cost
            return 0.0
        return (cost - b.tokens) / self.limit.rate_per_s

    def wait_s(self, key: str, now: float, cost: float = 1.0) -> float:
        """Like `take` but takes nothing: 0.0 when `cost` tokens are there now."""
        if not self.limit.enabled or key not in self._buckets:
            return 0.0
        b = self._refilled(key, now)
        return 0.0 if b.tokens >= cost else (cost - b.tokens) / self.limit.rate_per_s

    def _forget(self, now: float) -> None:
        """Make room: drop full buckets, then (if none was full) the older half by last use."""
        burst = float(self.limit.burst)
        rate = self.limit.rate_per_s
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.at) * rate >= burst]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) >= self.max_keys:
            by_age = sorted(self._buckets, key=lambda k: self._buckets[k].at)
            for k in by_age[: max(1, len(by_age) // 2)]:
                del self._buckets[k]
