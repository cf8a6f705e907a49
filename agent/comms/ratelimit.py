"""A token bucket: at most ``per_s`` takes per second, bursts up to one second's worth."""

from __future__ import annotations

import time


class RateLimiter:
    def __init__(self, per_s: float) -> None:
        self.per_s = per_s
        self.tokens = max(1.0, per_s)
        self.last = time.monotonic()

    def take(self) -> bool:
        """Whether one more event fits now (and count it)."""
        now = time.monotonic()
        self.tokens = min(max(1.0, self.per_s), self.tokens + (now - self.last) * self.per_s)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
