"""The TensorRT runner's stage timing: host-to-device copies, the engine (``execute_async_v3`` or
8.x's ``execute_async_v2``) and device-to-host copies of one inference, timed with CUDA events
on the runner's stream (:class:`agent.backends.cuda.timing.StageClock`), as trtexec reports H2D
Latency, GPU Compute Time and D2H Latency.

Off by default: a serving runner records no events and creates none. ``edge-agent bench`` turns
it on (``runner.timing = True``); the events are created once, on the first timed inference, and
closed with the runner's other CUDA objects.

A stage that queued no copy reports 0.0 ms rather than the few microseconds between two empty
event records: on an integrated GPU with zero-copy staging (mapped host buffers the engine reads
and writes in place) and for :class:`~agent.backends.base.DeviceTensor` inputs nothing is
copied, and the note (:data:`ZERO_COPY_NOTE`) says so.
"""

from __future__ import annotations

from typing import Any

from agent.backends.cuda.timing import StageClock

__all__ = ["STAGES", "ZERO_COPY_NOTE", "StageTiming"]

#: the stages, in trtexec's order (the keys of ``last_stage_ms``)
STAGES = ("h2d", "compute", "d2h")
#: what bench shows next to the split of a zero-copy runner
ZERO_COPY_NOTE = (
    "zero-copy: the integrated GPU reads and writes mapped host buffers in place, so there are "
    "no H2D/D2H copies (reported as 0)"
)
_COPY_STAGES = ("h2d", "d2h")


class StageTiming:
    """Per-runner state: whether to time, the events (created once), the copies queued in the
    current inference and the last inference's stage times."""

    def __init__(self) -> None:
        #: set by bench before inferring; read at the start of each inference
        self.enabled = False
        self._clock: StageClock | None = None
        self._running = False
        self._copies: dict[str, int] = dict.fromkeys(_COPY_STAGES, 0)
        self._last: dict[str, float] | None = None

    @property
    def last(self) -> dict[str, float] | None:
        """Milliseconds per stage of the last timed inference that completed (None if none)."""
        return None if self._last is None else dict(self._last)

    def begin(self, cuda: Any, stream: Any) -> None:
        """An inference starts: forget the last times and, when enabled, record the first event
        (creating the events with ``cuda.Event`` the first time)."""
        self._last = None
        self._running = self.enabled
        if not self._running:
            return
        if self._clock is None:
            self._clock = StageClock(STAGES, cuda.Event)
        self._copies = dict.fromkeys(_COPY_STAGES, 0)
        self._clock.start(stream)

    def mark(self, stream: Any) -> None:
        """The current stage's work is queued (h2d, then compute, then d2h)."""
        if self._running and self._clock is not None:
            self._clock.mark(stream)

    def copied(self, stage: str) -> None:
        """A copy of ``stage`` ("h2d" or "d2h") was queued."""
        if self._running:
            self._copies[stage] += 1

    def finish(self) -> None:
        """After the stream synchronized: read the stage times of this inference."""
        if not self._running or self._clock is None or not self._clock.complete:
            return
        self._running = False
        times = self._clock.elapsed_ms()
        for stage in _COPY_STAGES:
            if not self._copies[stage]:
                times[stage] = 0.0
        self._last = times

    def close(self) -> None:
        clock, self._clock = self._clock, None
        self._running = False
        if clock is not None:
            clock.close()
