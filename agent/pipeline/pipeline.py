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
import dataclasses
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.backends import cuda
from agent.backends.base import Backend, DeviceTensor, Runner
from agent.config.schema import InputSpec, ModelBundleConfig, SourceConfig
from agent.core.errors import PipelineError
from agent.engine.cache import Artifact
from agent.pipeline.frames import Frame, Prepared, Result
from agent.pipeline.pool import PoolEvent, Stages, WorkerContext, WorkerPool, result_error
from agent.pipeline.postprocess import Postprocessor
from agent.pipeline.preprocess import CpuPreprocessor, GpuPreprocessor, make_preprocessor
from agent.pipeline.sinks import Sink
from agent.pipeline.sources import (
    TERMINAL,
    DropPolicy,
    Source,
    SourceState,
    SourceStatus,
    make_source,
)
from agent.vision.letterbox import preprocess

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


@dataclass(frozen=True)
class _Model:
    """Everything that depends on the engine being served; :meth:`Pipeline.swap` replaces it
    whole, so a pool's stages never see a mix of two models."""

    artifact: Artifact
    bundle: ModelBundleConfig
    input_name: str
    size_hw: tuple[int, int]
    batch: int
    post: Postprocessor

    @classmethod
    def of(
        cls,
        artifact: Artifact,
        bundle: ModelBundleConfig,
        labels: Sequence[str],
        options: PipelineOptions,
    ) -> _Model:
        image = artifact.inputs[0] if artifact.inputs else None
        return cls(
            artifact=artifact,
            bundle=bundle,
            input_name=image.name if image is not None else bundle.input.name,
            size_hw=_input_size(artifact, bundle),
            batch=_static_batch(artifact) or max(1, options.max_batch),
            post=Postprocessor(bundle, labels),
        )

    @property
    def spec(self) -> InputSpec:
        return self.bundle.input

    def warmup_feeds(self) -> dict[str, np.ndarray]:
        """A zero batch of the engine's input shape: the first inference allocates."""
        h, w = self.size_hw
        shape = (self.batch, 3, h, w) if self.spec.layout == "NCHW" else (self.batch, h, w, 3)
        return {self.input_name: np.zeros(shape, dtype=np.float32)}


class Pipeline:
    """Serve one model (artifact) to the sources that name it; :meth:`swap` replaces the
    model between frames without stopping the sources."""

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
        self.options = options
        self._backend = backend
        self._on_pool_event = on_pool_event
        self._nan_outputs = 0
        self._swaps = 0
        self._latest: dict[str, np.ndarray] = {}  # newest frame per source (snapshot command)
        self._pause = threading.Event()  # swap asks the dispatcher to hold between frames
        self._held = threading.Event()  # the dispatcher holds (no frame in hand)
        self.sink = sink
        self._clock = clock
        self._on_status = on_status
        self._lock = threading.Lock()
        self._resize_lock = threading.Lock()  # a resize goes to the pool that serves next
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
        self._model = _Model.of(artifact, bundle, labels, options)
        # The GPU path preprocesses on each worker's stream; the CPU path on the dispatcher.
        self._prepare_ahead = not (options.prefer_gpu_preprocess and cuda.available()[0])
        self.sources: dict[str, Source] = {
            cfg.name: make_source(
                cfg,
                queue_depth=options.queue_depth,
                on_status=self._status,
                realtime=options.realtime,
            )
            for cfg in sources
        }
        self.pool = self._make_pool(self._model, options.workers)
        self._dispatcher = threading.Thread(
            target=self._dispatch, name=f"dispatch-{model}", daemon=True
        )

    @property
    def artifact(self) -> Artifact:
        """The engine serving now."""
        return self._model.artifact

    @property
    def bundle(self) -> ModelBundleConfig:
        return self._model.bundle

    def _make_pool(self, m: _Model, size: int) -> WorkerPool:
        artifact, backend, options = m.artifact, self._backend, self.options
        dla = artifact.manifest.get("key", {}).get("dla_core")

        def runner_factory() -> Runner:
            return backend.runner(
                artifact.dir,
                artifact.main_file,
                threads=options.threads_per_worker,
                dla_core=dla,
            )

        return WorkerPool(
            runner_factory,
            Stages(
                preprocess=functools.partial(self._preprocess, m),
                postprocess=functools.partial(self._postprocess, m),
                setup=functools.partial(self._setup, m),
                model=self.model,
                task=m.bundle.task,
            ),
            size=size,
            max_batch=m.batch,
            on_result=self._result,
            on_event=self._on_pool_event,
            post_threads=1,
        )

    # ------------------------------------------------------------------ worker stages

    def _setup(self, m: _Model, ctx: WorkerContext) -> None:
        # A runner with its own CUDA stream (TensorRT) gets the GPU preprocessor on that
        # stream: the kernel's output is bound as the engine input, with no copy and no sync.
        stream = getattr(ctx.runner, "stream", None)
        pre = make_preprocessor(
            m.spec,
            m.size_hw,
            m.batch,
            prefer_gpu=self.options.prefer_gpu_preprocess,
            stream=stream,
        )
        ctx.resources["preprocessor"] = pre
        ctx.resources["device_feed"] = (
            isinstance(pre, GpuPreprocessor)
            and stream is not None
            and bool(getattr(ctx.runner, "accepts_device_inputs", False))
        )
        ctx.runner.infer(m.warmup_feeds())  # the worker is warm before it reports IDLE

    def _prepare(self, frame: Frame) -> Frame:
        """CPU path, on the dispatcher: the frame's model input is made before it is queued,
        so a worker only assembles its batch and infers (overlapping preprocess with
        inference). Only frames the pool will take get here."""
        m = self._model
        t0 = time.perf_counter()
        try:
            tensor, letterbox = preprocess(frame.image, m.spec, m.size_hw)
        except Exception:
            # Left to the worker, whose preprocess stage fails it with an error result.
            return frame
        ms = (time.perf_counter() - t0) * 1000.0
        return dataclasses.replace(frame, prepared=Prepared(tensor[0], letterbox, ms))

    def _preprocess(
        self, m: _Model, frames: Sequence[Frame], ctx: WorkerContext
    ) -> tuple[dict[str, np.ndarray | DeviceTensor], list[Any]]:
        pre = ctx.resources["preprocessor"]
        ready = [f.prepared for f in frames]
        if all(p is not None for p in ready) and isinstance(pre, CpuPreprocessor):
            tensors = [p.tensor for p in ready if p is not None]
            letterboxes = [p.letterbox for p in ready if p is not None]
            if tensors[0].shape != pre.buffer.shape[1:]:
                raise ValueError(
                    f"prepared tensor {tensors[0].shape} does not fit the engine input "
                    f"{pre.buffer.shape}"
                )
            if m.batch == 1:
                return {m.input_name: tensors[0][None]}, letterboxes  # a view, no copy
            for i, tensor in enumerate(tensors):
                pre.buffer[i] = tensor
            return {m.input_name: pre.buffer}, letterboxes
        letterboxes = pre.process([f.image for f in frames])
        if ctx.resources.get("device_feed"):
            return {m.input_name: DeviceTensor(pre.ptr, tuple(pre.shape))}, letterboxes
        # The engine's batch is fixed: rows past len(frames) are stale and ignored downstream.
        return {m.input_name: pre.download()}, letterboxes

    def _postprocess(
        self,
        m: _Model,
        frames: Sequence[Frame],
        outputs: dict[str, np.ndarray],
        letterboxes: Sequence[Any],
        timings: Any,
    ) -> list[Result]:
        per_frame = [
            {**timings, "preprocess": timings["preprocess"] + f.prepared.ms}
            if f.prepared is not None and "preprocess" in timings
            else dict(timings)
            for f in frames
        ]
        if any(v.dtype.kind == "f" and not np.isfinite(v).all() for v in outputs.values()):
            with self._lock:
                self._nan_outputs += len(frames)
        results = m.post.process(frames, outputs, letterboxes, per_frame)
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
        ready = threading.Event()  # set by any source's queue on put/close: no polling delay
        for src in sources:
            src.queue.listener = ready
        while not self._stop.is_set():
            if self._pause.is_set():  # a swap is under way: hold, no frame in hand
                self._held.set()
                self._stop.wait(0.001)
                continue
            self._held.clear()
            ready.clear()  # before the scan: a frame queued during it sets it again
            moved = False
            for src in sources:
                frame = src.read(timeout=0)
                if frame is None:
                    continue
                moved = True
                self._latest[src.name] = frame.image
                self._submit(src, frame)
            if not moved:
                # Exhausted = the decode thread finished and its queue is drained; checking it
                # consumes nothing, so a last frame queued just now is still dispatched.
                if all(s.queue.exhausted for s in sources):
                    break
                ready.wait(0.05)
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
        if self._prepare_ahead:
            if src.policy is not DropPolicy.BLOCK and self.pool.full:
                with self._lock:
                    self._counters[src.name].rejected += 1
                return
            frame = self._prepare(frame)
        if src.policy is DropPolicy.BLOCK:
            # Files: back-pressure, never drop.
            while not self.pool.submit(frame):
                if self._stop.is_set() or self.pool.failed:
                    return
                time.sleep(0.0002)  # the pool is saturated: a worker frees a slot shortly
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

    def swap(
        self,
        *,
        artifact: Artifact,
        bundle: ModelBundleConfig,
        labels: Sequence[str],
        warmup_timeout_s: float = 120.0,
        drain_timeout_s: float = 30.0,
    ) -> dict[str, Any]:
        """Serve ``artifact`` from now on, without stopping the sources.

        A new pool (same size) makes its runners and runs one warm-up inference per worker
        while the old pool keeps serving. Then the dispatcher holds between two frames, the
        old pool delivers what it has in flight (results stay in order per source), the new
        pool takes over, and the dispatcher goes on: file sources lose no frame (they wait
        in their queue), live sources drop at most what arrives during the drain. Raises
        :class:`PipelineError`, with the old model still serving, when the new workers do not
        start. Returns timings: ``warmup_s``, ``gap_ms`` (no frame dispatched), ``drained``.
        """
        new_model = _Model.of(artifact, bundle, labels, self.options)
        t0 = self._clock()
        new_pool = self._make_pool(new_model, self.pool.size)
        deadline = t0 + warmup_timeout_s
        while not new_pool.wait_converged(0.1):
            st = new_pool.stats()
            if st.failed or st.restarts > 0 or self._clock() >= deadline:
                new_pool.stop(timeout=2.0)
                why = "timed out" if self._clock() >= deadline else "a worker failed to start"
                raise PipelineError(
                    f"model '{self.model}': the new engine {artifact.dir.name} did not start "
                    f"({why}); the old engine keeps serving",
                    fix="check the engine with `edge-agent engine infer` and the log above",
                )
        warmup_s = self._clock() - t0
        self._pause.set()
        try:
            if not self._done.is_set():
                # The dispatcher parks between frames within a few ms (a BLOCK submit waits
                # for room in the old pool, which keeps serving).
                while not self._held.wait(0.05) and not self._done.is_set():
                    if self._stop.is_set():
                        break
            t_hold = self._clock()
            old = self.pool
            drained = old.wait_idle(drain_timeout_s)
            with self._resize_lock:
                if new_pool.size != old.size:  # the governor resized the old pool meanwhile
                    new_pool.resize(old.size)
                with self._lock:
                    self._model = new_model
                    self.pool = new_pool
                    self._swaps += 1
                    for samples in self._latency.values():  # figures from now on: new engine
                        samples.clear()
        finally:
            self._pause.clear()
        gap_ms = (self._clock() - t_hold) * 1000.0
        old.stop(timeout=drain_timeout_s)
        log.info(
            "model %s: now serving %s (warm-up %.2f s, dispatch gap %.1f ms)",
            self.model,
            artifact.dir.name,
            warmup_s,
            gap_ms,
        )
        return {"warmup_s": round(warmup_s, 3), "gap_ms": round(gap_ms, 2), "drained": drained}

    def latest_frame(self, source: str | None = None) -> np.ndarray | None:
        """The newest decoded frame of ``source`` (of any source when None); not a copy."""
        if source is None:
            return next(iter(self._latest.values()), None)
        return self._latest.get(source)

    def resize(self, workers: int) -> None:
        """Governor hook: change the number of workers (draining ones finish their batch)."""
        with self._resize_lock:
            self.pool.resize(max(1, workers))

    def fps_caps(self) -> list[float]:
        """The configured per-source fps caps (sources without one are not listed)."""
        return [c.fps_cap for c in self._source_configs if c.fps_cap]

    def limit(self, *, fps_cap: float | None, shed_frames: bool) -> None:
        """Governor hook: cap each source's frame rate (None = uncapped) and shed live frames
        while work is queued."""
        self._fps_cap = fps_cap if fps_cap is None or fps_cap > 0 else None
        self._shed = shed_frames

    def health(self) -> PipelineHealth:
        """A cheap snapshot for the daemon's supervisor and watchdog: completed results, work
        pending, each source's decode progress, and what (if anything) died."""
        with self._lock:
            completed = sum(c.results + c.errors for c in self._counters.values())
        queued = sum(len(src.queue) for src in self.sources.values())
        pending = queued > 0 or not self.pool.wait_idle(0)
        sources = {}
        dead: list[str] = []
        for name, src in self.sources.items():
            st = src.stats()
            thread = src._thread  # pyright: ignore[reportPrivateUsage]
            crashed = bool(src.events) and (
                src.events[-1].new is SourceState.FAILED
                and src.events[-1].reason.startswith("internal error")
            )
            if crashed or (
                thread is not None and not thread.is_alive() and st.state not in TERMINAL
            ):
                dead.append(f"source '{name}' decode thread died ({st.state.value})")
            sources[name] = SourceProgress(
                state=st.state.value, frames=st.frames, last_frame_age_s=st.last_frame_age_s
            )
        if self.pool.failed:
            dead.append("worker pool failed (its worker restart budget is spent)")
        dispatcher = self._dispatcher
        if dispatcher.ident is not None and not dispatcher.is_alive() and not self._done.is_set():
            dead.append("dispatcher thread died")
        return PipelineHealth(
            completed=completed, pending=pending, sources=sources, failures=tuple(dead)
        )

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
            nan_outputs, swaps = self._nan_outputs, self._swaps
        pool = self.pool.stats()
        return {
            "model": self.model,
            "precision": self.artifact.precision,
            "fps_cap": self._fps_cap,
            "shedding": self._shed,
            "engine": self.artifact.dir.name,
            "workers": pool.size,
            "mean_batch": round(pool.mean_batch, 2),
            "nan_outputs": nan_outputs,
            "swaps": swaps,
            "worker_restarts": pool.restarts,
            "sources": per_source,
            "latency_ms": latency,
            "sink_errors": self._sink_errors,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _with_frame(result: Result, image: np.ndarray) -> Result:
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
