"""One model's pipeline: sources → dispatcher → worker pool → reorder → sinks, plus stats.

::

    source threads (decode) ─► bounded FrameQueue per source (drop policy)
            dispatcher thread ─► WorkerPool.submit (BLOCK sources wait, live sources drop)
                  N workers   ─► preprocess → runner.infer → postprocess  (per-source order)
              delivery thread ─► stats + sinks

The pipeline never exits because a camera died: a failed source is reported (status event,
stats) and the others keep running. It ends by itself only when every source has ended (files
without ``loop``) and every frame has come back. Its parts are built by
:func:`agent.pipeline.assembly.build_pipeline`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from agent.config.model import ModelBundleConfig
from agent.engine.cache import Artifact
from agent.pipeline.dispatcher import Dispatcher
from agent.pipeline.pool.pool import WorkerPool
from agent.pipeline.sources.base import Source
from agent.pipeline.sources.state import TERMINAL, SourceState
from agent.pipeline.stages import Delivery, ServedModel
from agent.pipeline.stats import PipelineStats, SourceFigures, StatsBook
from agent.pipeline.swap import HotSwap, SwapReport


@dataclass(frozen=True)
class SourceProgress:
    state: str  # SourceState value
    frames: int  # frames decoded and queued so far
    last_frame_age_s: float | None


@dataclass(frozen=True)
class PipelineHealth:
    """What :meth:`Pipeline.health` reports (see the daemon's watchdog)."""

    completed: int  # results + error results delivered so far
    pending: bool  # frames queued at a source or in the pool, not yet delivered
    sources: dict[str, SourceProgress]
    failures: tuple[str, ...]  # components that died; empty when healthy


@dataclass(frozen=True)
class PipelineOptions:
    """How the pipeline runs. ``workers``/``max_batch`` come from the device profile."""

    workers: int
    max_batch: int
    threads_per_worker: int = 0
    queue_depth: int = 4
    realtime: bool = False  # pace file sources at their own frame rate
    keep_frames: bool = False  # keep images on results (snapshot sinks)
    prefer_gpu_preprocess: bool = False
    stats_window_s: float = 10.0
    latency_samples: int = 4096


class Pipeline:
    """Serve one model (artifact) to the sources that name it; :meth:`swap` replaces the
    model between frames without stopping the sources."""

    def __init__(
        self,
        *,
        model: str,
        options: PipelineOptions,
        sources: Mapping[str, Source],
        dispatcher: Dispatcher,
        hot_swap: HotSwap,
        book: StatsBook,
        delivery: Delivery,
        fps_caps: Sequence[float],
        resize_lock: threading.Lock,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.model = model
        self.options = options
        self.sources = dict(sources)
        self.dispatcher = dispatcher
        self.hot_swap = hot_swap
        self.book = book
        self.delivery = delivery
        self._fps_caps = list(fps_caps)
        self._resize_lock = resize_lock  # a resize goes to the pool that serves next
        self._clock = clock

    @property
    def artifact(self) -> Artifact:
        """The engine serving now."""
        return self.dispatcher.model.artifact

    @property
    def bundle(self) -> ModelBundleConfig:
        return self.dispatcher.model.bundle

    @property
    def pool(self) -> WorkerPool:
        """The pool serving now."""
        return self.dispatcher.pool

    def start(self) -> Pipeline:
        for src in self.sources.values():
            src.start()
        self.dispatcher.start()
        return self

    @property
    def finished(self) -> bool:
        """Every source ended and every submitted frame came back."""
        return self.dispatcher.done.is_set() and self.pool.wait_idle(0)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until :attr:`finished` (or ``timeout``); True when finished."""
        deadline = None if timeout is None else self._clock() + timeout
        while not self.dispatcher.done.wait(0.05):
            if deadline is not None and self._clock() >= deadline:
                return False
        remaining = None if deadline is None else max(0.0, deadline - self._clock())
        return self.pool.wait_idle(remaining if remaining is not None else 3600.0)

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop sources, drain in-flight frames (bounded by ``timeout``), stop workers."""
        started = self._clock()
        for src in self.sources.values():
            src.stop(timeout=min(2.0, timeout))
        # Frames already decoded still go through: drain what the dispatcher holds.
        self.dispatcher.done.wait(timeout=max(0.0, timeout / 2))
        self.dispatcher.stop_event.set()
        self.dispatcher.thread.join(timeout=1.0)
        left = max(0.1, timeout - (self._clock() - started))
        ok = self.pool.stop(timeout=left)
        self.delivery.close()
        return ok

    def swap(
        self,
        *,
        artifact: Artifact,
        bundle: ModelBundleConfig,
        labels: Sequence[str],
        warmup_timeout_s: float = 120.0,
        drain_timeout_s: float = 30.0,
    ) -> SwapReport:
        """Serve ``artifact`` from now on, without stopping the sources (see
        :mod:`agent.pipeline.swap`). Raises :class:`~agent.core.errors.PipelineError`, with the
        old model still serving, when the new workers do not start."""
        new_model = ServedModel.of(artifact, bundle, labels, self.options.max_batch)
        return self.hot_swap.swap(
            new_model, warmup_timeout_s=warmup_timeout_s, drain_timeout_s=drain_timeout_s
        )

    def latest_frame(self, source: str | None = None) -> np.ndarray | None:
        """The newest decoded frame of ``source`` (of any source when None); not a copy."""
        latest = self.dispatcher.latest
        if source is None:
            return next(iter(latest.values()), None)
        return latest.get(source)

    def resize(self, workers: int) -> None:
        """Governor hook: change the number of workers (draining ones finish their batch)."""
        with self._resize_lock:
            self.pool.resize(max(1, workers))

    def fps_caps(self) -> list[float]:
        """The configured per-source fps caps (sources without one are not listed)."""
        return list(self._fps_caps)

    def limit(self, *, fps_cap: float | None, shed_frames: bool) -> None:
        """Governor hook: cap each source's frame rate (None = uncapped) and shed live frames
        while work is queued."""
        self.dispatcher.limit(fps_cap=fps_cap, shed_frames=shed_frames)

    def health(self) -> PipelineHealth:
        """A cheap snapshot for the daemon's supervisor and watchdog: completed results, work
        pending, each source's decode progress, and what (if anything) died."""
        completed = self.book.completed()
        queued = sum(len(src.queue) for src in self.sources.values())
        pending = queued > 0 or not self.pool.wait_idle(0)
        sources: dict[str, SourceProgress] = {}
        dead: list[str] = []
        for name, src in self.sources.items():
            st = src.stats()
            if _decode_thread_died(src, st.state):
                dead.append(f"source '{name}' decode thread died ({st.state.value})")
            sources[name] = SourceProgress(
                state=st.state.value, frames=st.frames, last_frame_age_s=st.last_frame_age_s
            )
        if self.pool.failed:
            dead.append("worker pool failed (its worker restart budget is spent)")
        d = self.dispatcher
        if d.thread.ident is not None and not d.thread.is_alive() and not d.done.is_set():
            dead.append("dispatcher thread died")
        return PipelineHealth(
            completed=completed, pending=pending, sources=sources, failures=tuple(dead)
        )

    def stats(self) -> PipelineStats:
        figures = self.book.figures()
        per_source: dict[str, SourceFigures] = {}
        for name, tally in figures.sources.items():
            src = self.sources.get(name)
            sstats = src.stats() if src is not None else None
            per_source[name] = SourceFigures(
                state=sstats.state.value if sstats else None,
                fps=round(tally.fps, 2),
                results=tally.results,
                errors=tally.errors,
                dropped=(sstats.dropped if sstats else 0) + tally.rejected,
                shed=tally.shed,
                invalid=sstats.invalid if sstats else 0,
                reconnects=sstats.reconnects if sstats else 0,
            )
        pool = self.pool.stats()
        artifact = self.artifact
        return PipelineStats(
            model=self.model,
            precision=artifact.precision,
            fps_cap=self.dispatcher.fps_cap,
            shedding=self.dispatcher.shed,
            engine=artifact.dir.name,
            workers=pool.size,
            mean_batch=round(pool.mean_batch, 2),
            nan_outputs=figures.nan_outputs,
            swaps=figures.swaps,
            worker_restarts=pool.restarts,
            sources=per_source,
            latency_ms=figures.latency_ms,
            sink_errors=figures.sink_errors,
        )


def _decode_thread_died(src: Source, state: SourceState) -> bool:
    """The source's decode thread crashed, or is gone without reaching a terminal state."""
    crashed = bool(src.events) and (
        src.events[-1].new is SourceState.FAILED
        and src.events[-1].reason.startswith("internal error")
    )
    thread = src.thread
    return crashed or (thread is not None and not thread.is_alive() and state not in TERMINAL)
