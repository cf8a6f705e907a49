"""Reconnect back-off: exponential delays with jitter."""

from __future__ import annotations

import random
from typing import Literal, Protocol


class Rng(Protocol):
    def uniform(self, a: float, b: float) -> float: ...


class Backoff:
    """Reconnect delays: exponential ``base·factor^n`` capped at ``max_delay``, with jitter.

    ``jitter="full"``: uniform in [0, ceiling] (AWS "full jitter"); ``"decorrelated"``:
    ``min(max_delay, uniform(base, 3·previous))``; ``"none"``: the ceiling itself.
    ``reset()`` after a success. ``rng`` is injectable (anything with ``uniform``).
    """

    def __init__(
        self,
        base: float = 0.5,
        max_delay: float = 30.0,
        *,
        factor: float = 2.0,
        jitter: Literal["full", "decorrelated", "none"] = "full",
        rng: Rng | None = None,
    ) -> None:
        if base <= 0 or max_delay < base or factor < 1:
            raise ValueError("backoff needs base > 0, max_delay >= base and factor >= 1")
        self.base = base
        self.max_delay = max_delay
        self.factor = factor
        self.jitter = jitter
        self.rng: Rng = rng if rng is not None else random.Random()
        self.attempt = 0
        self._prev = base

    def ceiling(self, attempt: int) -> float:
        """The un-jittered delay for the ``attempt``-th retry (0-based)."""
        return min(self.max_delay, self.base * self.factor ** min(attempt, 64))

    def next_delay(self) -> float:
        ceiling = self.ceiling(self.attempt)
        self.attempt += 1
        if self.jitter == "full":
            delay = self.rng.uniform(0.0, ceiling)
        elif self.jitter == "decorrelated":
            delay = min(self.max_delay, self.rng.uniform(self.base, self._prev * 3.0))
        else:
            delay = ceiling
        delay = min(self.max_delay, max(0.0, delay))
        self._prev = max(self.base, delay)
        return delay

    def reset(self) -> None:
        self.attempt = 0
        self._prev = self.base
