"""Token bucket, the usual shape for "N per second with bursts of M"."""

from __future__ import annotations


class TokenBucket:
    """Allow ``burst`` events at once and ``rate`` per second on average.

    Time is passed in rather than read, so the core stays deterministic and
    unit tests need no sleeping.
    """

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.stamp = now
        if tokens >= cost:
            self.tokens = tokens - cost
            return True
        self.tokens = tokens
        return False
