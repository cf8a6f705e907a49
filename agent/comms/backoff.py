"""Reconnect backoff with full jitter, so a fleet that lost its broker does not come back in
lockstep.

After ``n`` failed attempts since the last successful connection the next attempt waits
``uniform(0, min(max_s, min_s × 2^n))``: the first retry after a lost session draws from
``[0, min_s]``, every failed attempt doubles the bound up to ``max_s``, and a successful
connection resets ``n`` to 0. Pure bookkeeping; :class:`~agent.comms.mqtt.MqttClient` hands each
drawn delay to paho before paho waits.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from dataclasses import dataclass

__all__ = ["Draw", "FullJitterBackoff"]

_MAX_EXPONENT = 62
"""2^n beyond this is far above any ``max_s``; keeps the bound a finite float."""


@dataclass(frozen=True)
class Draw:
    """One drawn delay: after ``failures`` failed attempts, ``delay_s`` from ``[0, bound_s]``."""

    failures: int
    bound_s: float
    delay_s: float


class FullJitterBackoff:
    """Counts failed attempts and draws the next delay; thread-safe. ``history`` keeps the last
    ``keep`` draws (for status and tests)."""

    def __init__(
        self, min_s: float, max_s: float, *, rng: random.Random | None = None, keep: int = 64
    ) -> None:
        if min_s <= 0 or max_s < min_s:
            raise ValueError(f"backoff needs 0 < min_s <= max_s, got {min_s}, {max_s}")
        self.min_s = min_s
        self.max_s = max_s
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self.failures = 0
        self.history: deque[Draw] = deque(maxlen=keep)

    def bound_s(self, failures: int) -> float:
        """The upper bound of the delay after ``failures`` failed attempts."""
        return min(self.max_s, self.min_s * 2.0 ** min(failures, _MAX_EXPONENT))

    def succeeded(self) -> None:
        """A connection was established: the next loss starts again from ``min_s``."""
        with self._lock:
            self.failures = 0

    def next_delay(self, *, failed: bool) -> float:
        """The delay before the next attempt; ``failed`` when the attempt that just ended did
        not connect (it counts), False when an established session was lost."""
        with self._lock:
            if failed:
                self.failures += 1
            bound = self.bound_s(self.failures)
            delay = self._rng.uniform(0.0, bound)
            self.history.append(Draw(self.failures, bound, delay))
            return delay
