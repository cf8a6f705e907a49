"""The pipeline's figures: what it counts while it runs (:class:`StatsBook`) and the typed
snapshot it reports (:class:`PipelineStats`; ``to_json()`` is the wire form)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.pipeline.frames import Result
from agent.pipeline.pool.work import result_error

#: the per-frame stages whose latency is sampled, in report order
STAGES = ("queue", "preprocess", "infer", "postprocess", "total")


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) of ``values``; None when empty."""
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@dataclass(frozen=True)
class SourceFigures:
    """One source's figures in a :class:`PipelineStats`."""

    state: str | None  # SourceState value (None for a source the pipeline does not run)
    fps: float  # delivered results per second over the stats window
    results: int
    errors: int
    dropped: int  # dropped at the source queue + refused by the pool
    shed: int  # dropped on the governor's order
    invalid: int
    reconnects: int

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "fps": self.fps,
            "results": self.results,
            "errors": self.errors,
            "dropped": self.dropped,
            "shed": self.shed,
            "invalid": self.invalid,
            "reconnects": self.reconnects,
        }


@dataclass(frozen=True)
class StageLatency:
    p50: float | None  # ms, None before the first sample
    p99: float | None

    def to_json(self) -> dict[str, Any]:
        return {"p50": self.p50, "p99": self.p99}


@dataclass(frozen=True)
class PipelineStats:
    """What :meth:`Pipeline.stats` reports; ``to_json()`` is the metrics/log wire form."""

    model: str
    precision: str
    fps_cap: float | None
    shedding: bool
    engine: str
    workers: int
    mean_batch: float
    nan_outputs: int
    swaps: int
    worker_restarts: int
    sources: dict[str, SourceFigures]
    latency_ms: dict[str, StageLatency]  # keyed by :data:`STAGES`
    sink_errors: int

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "precision": self.precision,
            "fps_cap": self.fps_cap,
            "shedding": self.shedding,
            "engine": self.engine,
            "workers": self.workers,
            "mean_batch": self.mean_batch,
            "nan_outputs": self.nan_outputs,
            "swaps": self.swaps,
            "worker_restarts": self.worker_restarts,
            "sources": {name: s.to_json() for name, s in self.sources.items()},
            "latency_ms": {stage: v.to_json() for stage, v in self.latency_ms.items()},
            "sink_errors": self.sink_errors,
        }


@dataclass
class SourceCounters:
    results: int = 0
    errors: int = 0
    rejected: int = 0  # live frames the pool could not take (NEWEST_WINS at the pool)
    shed: int = 0  # live frames dropped on the governor's order (fps cap, shedding)
    window: deque[float] = field(default_factory=lambda: deque(maxlen=4096))


@dataclass(frozen=True)
class SourceTally:
    """What the book counted for one source."""

    results: int
    errors: int
    rejected: int
    shed: int
    fps: float  # over the stats window


@dataclass(frozen=True)
class BookFigures:
    """What the book counted, for one snapshot."""

    sources: dict[str, SourceTally]
    latency_ms: dict[str, StageLatency]
    nan_outputs: int
    swaps: int
    sink_errors: int


class StatsBook:
    """The pipeline's counters, behind one lock: results and errors per source (with the
    delivery times for fps), frames refused or shed, stage latency samples, NaN outputs,
    swaps and sink failures. Written from the delivery, dispatcher and worker threads."""

    def __init__(
        self,
        sources: Iterable[str],
        *,
        window_s: float,
        latency_samples: int,
        clock: Callable[[], float],
    ) -> None:
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._counters: dict[str, SourceCounters] = {name: SourceCounters() for name in sources}
        self._latency: dict[str, deque[float]] = {k: deque(maxlen=latency_samples) for k in STAGES}
        self._nan_outputs = 0
        self._swaps = 0
        self._sink_errors = 0

    def record(self, result: Result) -> None:
        """A delivered result (or error result)."""
        now = self._clock()
        with self._lock:
            counters = self._counters.setdefault(result.source, SourceCounters())
            if result_error(result) is not None:
                counters.errors += 1
                return
            counters.results += 1
            counters.window.append(now)
            for stage in STAGES:
                value = result.timings_ms.get(stage)
                if value is not None:
                    self._latency[stage].append(float(value))

    def count_rejected(self, source: str) -> None:
        with self._lock:
            self._counters[source].rejected += 1

    def count_shed(self, source: str) -> None:
        with self._lock:
            self._counters[source].shed += 1

    def count_nan(self, frames: int) -> None:
        with self._lock:
            self._nan_outputs += frames

    def count_sink_error(self) -> None:
        with self._lock:
            self._sink_errors += 1

    def swapped(self) -> None:
        """A new engine serves: count it, and keep latency figures of the new one only."""
        with self._lock:
            self._swaps += 1
            for samples in self._latency.values():
                samples.clear()

    def completed(self) -> int:
        """Results and error results delivered so far."""
        with self._lock:
            return sum(c.results + c.errors for c in self._counters.values())

    def figures(self) -> BookFigures:
        now = self._clock()
        with self._lock:
            sources = {
                name: SourceTally(
                    results=c.results,
                    errors=c.errors,
                    rejected=c.rejected,
                    shed=c.shed,
                    fps=_fps(c.window, now, self.window_s),
                )
                for name, c in self._counters.items()
            }
            latency = {
                stage: StageLatency(
                    p50=_round(percentile(list(samples), 50)),
                    p99=_round(percentile(list(samples), 99)),
                )
                for stage, samples in self._latency.items()
            }
            return BookFigures(
                sources=sources,
                latency_ms=latency,
                nan_outputs=self._nan_outputs,
                swaps=self._swaps,
                sink_errors=self._sink_errors,
            )


def _fps(window: Iterable[float], now: float, window_s: float) -> float:
    recent = [t for t in window if now - t <= window_s]
    span = (recent[-1] - recent[0]) if len(recent) > 1 else 0.0
    return (len(recent) - 1) / span if span > 0 else 0.0
