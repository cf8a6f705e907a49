"""Progress reporting: the callback type every long job takes, and a throttle for it.

A job calls ``progress(stage, fraction, message)`` as often as it likes (``fraction`` from 0 to
1 within ``stage``); whoever shows or publishes it wraps the callback in :func:`throttle` so a
tight loop does not flood a terminal or a broker.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

ProgressFn = Callable[[str, float, str], None]
"""``progress(stage, fraction 0..1, message)``."""


def no_progress(stage: str, fraction: float, message: str) -> None:
    """A progress callback that drops everything."""
    del stage, fraction, message


class _Throttled:
    """The callable :func:`throttle` returns."""

    def __init__(
        self, fn: ProgressFn, every_s: float, min_step: float, clock: Callable[[], float]
    ) -> None:
        self._fn = fn
        self._every_s = every_s
        self._min_step = min_step
        self._clock = clock
        self._lock = threading.Lock()
        self._stage: str | None = None
        self._fraction = -math.inf
        self._time = -math.inf

    def _due(self, stage: str, fraction: float, now: float) -> bool:
        return (
            stage != self._stage
            or fraction >= 1.0
            or now - self._time >= self._every_s
            or fraction - self._fraction >= self._min_step
        )

    def __call__(self, stage: str, fraction: float, message: str) -> None:
        with self._lock:
            now = self._clock()
            if not self._due(stage, fraction, now):
                return
            self._stage, self._fraction, self._time = stage, fraction, now
        self._fn(stage, fraction, message)


def throttle(
    fn: ProgressFn,
    every_s: float,
    *,
    min_step: float = math.inf,
    clock: Callable[[], float] = time.monotonic,
) -> ProgressFn:
    """``fn`` called at most once per ``every_s`` seconds, except that a new stage, a step of
    at least ``min_step`` in ``fraction`` since the last call passed on, and completion
    (``fraction >= 1``) always go through. Safe to call from several threads; ``fn`` runs
    outside the throttle's lock."""
    return _Throttled(fn, every_s, min_step, clock)
