"""Token buckets: :class:`RateLimiter` (one bucket: at most ``per_s`` takes per second, bursts up
to ``burst``) and :class:`ClientRateLimits` (one bucket per client key, the least recently seen
client forgotten first, so the table stays bounded however many keys a flood invents)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable


class RateLimiter:
    """``per_s`` tokens a second, at most ``burst`` (default: one second's worth, at least 1)."""

    def __init__(
        self,
        per_s: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_s = per_s
        self.burst = max(1.0, per_s if burst is None else burst)
        self.clock = clock
        self.tokens = self.burst
        self.last = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.last) * self.per_s)
        self.last = now

    def take(self) -> bool:
        """Whether one more event fits now (and count it)."""
        self._refill()
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def wait_s(self) -> float:
        """Seconds until the next token (0 when one is there now)."""
        self._refill()
        if self.tokens >= 1.0:
            return 0.0
        return float("inf") if self.per_s <= 0 else (1.0 - self.tokens) / self.per_s


class ClientRateLimits:
    """One :class:`RateLimiter` per client key; at most ``max_clients`` remembered. Thread-safe."""

    def __init__(
        self,
        per_s: float,
        burst: float,
        *,
        max_clients: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_s = per_s
        self.burst = burst
        self.max_clients = max(1, max_clients)
        self.clock = clock
        self._buckets: OrderedDict[str, RateLimiter] = OrderedDict()
        self._lock = threading.Lock()

    def admit(self, client: str) -> float | None:
        """None when ``client`` may send one more request now (counted); else the seconds
        until its next token."""
        with self._lock:
            bucket = self._buckets.get(client)
            if bucket is None:
                bucket = self._buckets[client] = RateLimiter(
                    self.per_s, self.burst, clock=self.clock
                )
                while len(self._buckets) > self.max_clients:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(client)
            return None if bucket.take() else bucket.wait_s()

    def __len__(self) -> int:
        with self._lock:
            return len(self._buckets)
