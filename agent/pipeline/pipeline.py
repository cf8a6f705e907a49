"""One model's pipeline: sources → dispatcher → worker pool → postprocess → sinks, plus stats.

::

    source threads (decode) ─► bounded FrameQueue per source (drop policy)
            dispatcher thread ─► WorkerPool.submit (BLOCK sources wait, live sources drop)
                  N workers   ─► preprocess → runner.infer → postprocess  (per-source order)
                 result thread ─► sinks + stage statistics

The pipeline never exits because a camera died: a failed source is reported (status event,
stats) and the others keep running. It ends by itself only when every source has ended (files
without ``loop``) and every frame has come back.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.backends.base import Backend, Runner
from agent.config import ModelBundleConfig, SourceConfig
from agent.engine.cache import Artifact
from agent.pipeline.frames import Frame, Result
from agent.pipeline.pool import PoolEvent, Stages, WorkerContext, WorkerPool, result_error
from agent.pipeline.postprocess import Postprocessor
from agent.pipeline.preprocess import make_preprocessor
from agent.pipeline.sinks import Sink
from agent.pipeline.sources import DropPolicy, Source, SourceStatus, make_source

log = logging.getLogger(__name__)

_STAGES = ("queue", "preprocess", "infer", "postprocess", "total")


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) of ``values``; None when empty."""
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


@dataclass
class _SourceCounters:
    results: int = 0
    errors: int = 0
    rejected: int = 0  # live frames the pool could not take (NEWEST_WINS at the pool)
    shed: int = 0  # live frames dropped on the governor's order (fps cap, shedding)
    next_at: float = 0.0  # earliest time the next frame may go in under the fps cap
    window: deque[float] = field(default_factory=lambda: deque(maxlen=4096))


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
    """Serve one model (artifact) to the sources that name it."""

    def __init__(
        self,
        *,
        model: str,
        artifact: Artifact,
        backend: Backend,
        bundle: ModelBundleConfig,
        labels: Sequence[str],
        sources: Sequence[SourceConfig],
        sink: Sink,
        options: PipelineOptions,
        on_status: Callable[[SourceStatus], None] | None = None,
        on_pool_event: Callable[[PoolEvent], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.model = model
        self.artifact = artifact
        self.bundle = bundle
        self.options = options
        self.sink = sink
        self._clock = clock
        self._on_status = on_status
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._done = threading.Event()
        self._counters: dict[str, _SourceCounters] = {s.name: _SourceCounters() for s in sources}
        self._source_configs = list(sources)
        self._latency: dict[str, deque[float]] = {
            k: deque(maxlen=options.latency_samples) for k in _STAGES
        }
        self._sink_errors = 0
        self._fps_cap: float | None = None
        self._shed = False
        self._spec = bundle.input
        image = artifact.inputs[0] if artifact.inputs else None
        self._input_name = image.name if image is not None else bundle.input.name
        self._size_hw = _input_size(artifact, bundle)
        self._batch = _static_batch(artifact) or max(1, options.max_batch)
        self._post = Postprocessor(bundle, labels)
        self.sources: dict[str, Source] = {
            cfg.name: make_source(
                cfg,
                queue_depth=options.queue_depth,
                on_status=self._status,
                realtime=options.realtime,
            )
            for cfg in sources
        }
        dla = artifact.manifest.get("key", {}).get("dla_core")

        def runner_factory() -> Runner:
            return backend.runner(
                artifact.dir,
                artifact.main_file,
                threads=options.threads_per_worker,
                dla_core=dla,
            )

        self.pool = WorkerPool(
            runner_factory,
            Stages(
                preprocess=self._preprocess,
                postprocess=self._postprocess,
                setup=self._setup,
                model=model,
                task=bundle.task,
            ),
            size=options.workers,
            max_batch=self._batch,
            on_result=self._result,
            on_event=on_pool_event,
        )
        self._dispatcher = threading.Thread(
            target=self._dispatch, name=f"dispatch-{model}", daemon=True
        )

    # ------------------------------------------------------------------ worker stages

    def _setup(self, ctx: WorkerContext) -> None:
        ctx.resources["preprocessor"] = make_preprocessor(
            self._spec,
            self._size_hw,
            self._batch,
            prefer_gpu=self.options.prefer_gpu_preprocess,
        )

    def _preprocess(
        self, frames: Sequence[Frame], ctx: WorkerContext
    ) -> tuple[dict[str, np.ndarray], list[Any]]:
        pre = ctx.resources["preprocessor"]
        letterboxes = pre.process([f.image for f in frames])
        # The engine's batch is fixed: rows past len(frames) are stale and ignored downstream.
        return {self._input_name: pre.download()}, letterboxes

    def _postprocess(
        self,
        frames: Sequence[Frame],
        outputs: dict[str, np.ndarray],
        letterboxes: Sequence[Any],
        timings: Any,
    ) -> list[Result]:
        results = self._post.process(frames, outputs, letterboxes, dict(timings))
        if not self.options.keep_frames:
            return results
        return [_with_frame(r, f.image) for r, f in zip(results, frames, strict=True)]

    # ------------------------------------------------------------------ threads

    def _status(self, status: SourceStatus) -> None:
        # Called on a source's thread (which already logged the transition): forward only.
        if self._on_status is not None:
            try:
                self._on_status(status)
            except Exception:
                log.exception("source status handler failed")

    def _dispatch(self) -> None:
        sources = list(self.sources.values())
        while not self._stop.is_set():
            moved = False
            for src in sources:
                frame = src.read(timeout=0)
                if frame is None:
                    continue
                moved = True
                self._submit(src, frame)
            if not moved:
                # Exhausted = the decode thread finished and its queue is drained; checking it
                # consumes nothing, so a last frame queued just now is still dispatched.
                if all(s.queue.exhausted for s in sources):
                    break
                time.sleep(0.002)
        self._done.set()

    def _admit(self, src: Source) -> bool:
        """The governor's limits: an fps cap per source, and shedding (live frames go in only
        when no work is queued). Files are slowed down instead of dropped."""
        counters = self._counters[src.name]
        cap, shed = self._fps_cap, self._shed
        now = self._clock()
        if cap is not None and now < counters.next_at:
            if src.policy is DropPolicy.BLOCK:
                self._stop.wait(counters.next_at - now)
                now = self._clock()
            else:
                with self._lock:
                    counters.shed += 1
                return False
        if shed and src.policy is not DropPolicy.BLOCK and self.pool.backlog > 0:
            with self._lock:
                counters.shed += 1
            return False
        if cap is not None:
            counters.next_at = max(now, counters.next_at) + 1.0 / cap
        return True

    def _submit(self, src: Source, frame: Frame) -> None:
        if not self._admit(src):
            return
        if src.policy is DropPolicy.BLOCK:
            # Files: back-pressure, never drop.
            while not self.pool.submit(frame):
                if self._stop.is_set() or self.pool.failed:
                    return
                time.sleep(0.001)
            return
        if not self.pool.submit(frame):
            with self._lock:
                self._counters[src.name].rejected += 1

    def _result(self, result: Result) -> None:
        now = self._clock()
        with self._lock:
            counters = self._counters.setdefault(result.source, _SourceCounters())
            if result_error(result) is not None:
                counters.errors += 1
            else:
                counters.results += 1
                counters.window.append(now)
                for stage in _STAGES:
                    value = result.timings_ms.get(stage)
                    if value is not None:
                        self._latency[stage].append(float(value))
        try:
            self.sink.write(result)
        except Exception:
            self._sink_errors += 1
            log.exception("sink failed")

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Pipeline:
        for src in self.sources.values():
            src.start()
        self._dispatcher.start()
        return self

    @property
    def finished(self) -> bool:
        """Every source ended and every submitted frame came back."""
        return self._done.is_set() and self.pool.wait_idle(0)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until :attr:`finished` (or ``timeout``); True when finished."""
        deadline = None if timeout is None else self._clock() + timeout
        while not self._done.wait(0.05):
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
        self._done.wait(timeout=max(0.0, timeout / 2))
        self._stop.set()
        self._dispatcher.join(timeout=1.0)
        left = max(0.1, timeout - (self._clock() - started))
        ok = self.pool.stop(timeout=left)
        with contextlib.suppress(Exception):
            self.sink.close()
        return ok

    def resize(self, workers: int) -> None:
        """Governor hook: change the number of workers (draining ones finish their batch)."""
        self.pool.resize(max(1, workers))

    def fps_caps(self) -> list[float]:
        """The configured per-source fps caps (sources without one are not listed)."""
        return [c.fps_cap for c in self._source_configs if c.fps_cap]

    def limit(self, *, fps_cap: float | None, shed_frames: bool) -> None:
        """Governor hook: cap each source's frame rate (None = uncapped) and shed live frames
        while work is queued."""
        self._fps_cap = fps_cap if fps_cap is None or fps_cap > 0 else None
        self._shed = shed_frames

    # ------------------------------------------------------------------ stats

    def stats(self) -> dict[str, Any]:
        now = self._clock()
        window = self.options.stats_window_s
        with self._lock:
            per_source: dict[str, Any] = {}
            for name, c in self._counters.items():
                recent = [t for t in c.window if now - t <= window]
                span = (recent[-1] - recent[0]) if len(recent) > 1 else 0.0
                fps = (len(recent) - 1) / span if span > 0 else 0.0
                src = self.sources.get(name)
                sstats = src.stats() if src is not None else None
                per_source[name] = {
                    "state": sstats.state.value if sstats else None,
                    "fps": round(fps, 2),
                    "results": c.results,
                    "errors": c.errors,
                    "dropped": (sstats.dropped if sstats else 0) + c.rejected,
                    "shed": c.shed,
                    "invalid": sstats.invalid if sstats else 0,
                    "reconnects": sstats.reconnects if sstats else 0,
                }
            latency = {
                stage: {
                    "p50": _round(percentile(list(samples), 50)),
                    "p99": _round(percentile(list(samples), 99)),
                }
                for stage, samples in self._latency.items()
            }
        pool = self.pool.stats()
        return {
            "model": self.model,
            "precision": self.artifact.precision,
            "fps_cap": self._fps_cap,
            "shedding": self._shed,
            "engine": self.artifact.dir.name,
            "workers": pool.size,
            "mean_batch": round(pool.mean_batch, 2),
            "sources": per_source,
            "latency_ms": latency,
            "sink_errors": self._sink_errors,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _with_frame(result: Result, image: np.ndarray) -> Result:
    import dataclasses

    return dataclasses.replace(result, frame=image)


def _static_batch(artifact: Artifact) -> int | None:
    """The engine's batch when it is fixed (ONNX Runtime artifacts are built static)."""
    if not artifact.inputs:
        return None
    first = artifact.inputs[0].shape[0] if artifact.inputs[0].shape else None
    return first if isinstance(first, int) and first > 0 else None


def _input_size(artifact: Artifact, bundle: ModelBundleConfig) -> tuple[int, int]:
    """(H, W) the engine takes: its static input dims, else the bundle's size."""
    if artifact.inputs:
        shape = artifact.inputs[0].shape
        dims = shape[2:4] if bundle.input.layout == "NCHW" else shape[1:3]
        if len(dims) == 2 and all(isinstance(d, int) and d > 0 for d in dims):
            return int(dims[0]), int(dims[1])
    if bundle.input.size is not None:
        return bundle.input.size
    raise ValueError(
        f"model '{bundle.name}': the engine's input size is dynamic and model.yaml has no "
        "input.size; set input.size"
    )
