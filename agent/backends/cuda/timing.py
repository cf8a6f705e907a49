"""Stage timing on a CUDA stream with timing events (what trtexec reports as H2D Latency, GPU
Compute Time and D2H Latency).

A :class:`StageClock` holds N+1 events for N stages, created once with timing enabled (no
``cudaEventDisableTiming``; no ``cudaEventBlockingSync`` either, nobody waits on them:
``cudaEventCreateWithFlags`` with ``cudaEventDefault``). Work is bracketed by recording them on the
stream in order (``cudaEventRecord``: :meth:`StageClock.start`, then one :meth:`StageClock.mark`
per stage end); once that work has completed (the caller synchronized the stream or an event
recorded after the last mark), :meth:`StageClock.elapsed_ms` reads each stage's time with
``cudaEventElapsedTime`` (CUDA Runtime API, Event Management: milliseconds between two completed
events, about 0.5 microsecond resolution; both must have been created without
``cudaEventDisableTiming``). Recording an event queues no work and does not wait: the host
thread does not block, so the copies and the engine still overlap with the host.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from agent.backends.cuda.runtime import Event
from agent.core.closing import Closeable

__all__ = ["StageClock"]


class StageClock(Closeable):
    """Timing events between ``stages`` of work queued on one stream.

    ``event`` makes one event (``Event(timing=True, blocking=False)`` by default; the runner passes
    its CUDA layer's ``Event`` so tests can inject a fake). Not thread-safe: one clock per stream.
    """

    def __init__(self, stages: Sequence[str], event: Callable[..., Any] = Event) -> None:
        if not stages or len(set(stages)) != len(stages):
            raise ValueError(f"stages must be distinct and not empty, got {list(stages)}")
        self.stages = tuple(stages)
        self._events: list[Any] = []
        try:
            for _ in range(len(self.stages) + 1):
                self._events.append(event(timing=True, blocking=False))
        except BaseException:
            self.close()
            raise
        self._recorded = 0

    @property
    def complete(self) -> bool:
        """Whether every stage has been marked since the last :meth:`start`."""
        return self._recorded == len(self._events)

    def start(self, stream: Any) -> None:
        """Record the first event on ``stream``: what is queued next belongs to the first stage."""
        self._recorded = 0
        self.mark(stream)

    def mark(self, stream: Any) -> None:
        """Record the end of the current stage on ``stream`` (the start of the next)."""
        if not self._events:
            raise RuntimeError("stage clock is closed")
        if self._recorded >= len(self._events):
            raise RuntimeError(f"all {len(self.stages)} stages are already marked; start again")
        self._events[self._recorded].record(stream)
        self._recorded += 1

    def elapsed_ms(self) -> dict[str, float]:
        """Milliseconds per stage of the last complete round. Call it only after the marked work
        has completed (``cudaEventElapsedTime`` fails on an event that has not)."""
        if not self.complete:
            raise RuntimeError(
                f"{self._recorded} of {len(self._events)} stage events recorded; "
                "start() and mark() every stage first"
            )
        return {
            stage: float(begin.elapsed_ms(end))
            for stage, begin, end in zip(self.stages, self._events, self._events[1:], strict=False)
        }

    def close(self) -> None:
        events, self._events = self._events, []
        self._recorded = 0
        for event in events:
            event.close()
