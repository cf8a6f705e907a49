"""The model-specific work of a pipeline: the engine being served (:class:`ServedModel`) and
the pool stages built around it (setup, preprocess, postprocess), plus the CPU preprocessing
the dispatcher does ahead of the pool.

A :class:`ServedModel` is replaced whole by a hot swap, so a pool's stages never see a mix of
two models.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.backends.base import DeviceTensor, Runner
from agent.config.model import InputSpec, ModelBundleConfig
from agent.engine.cache import Artifact
from agent.pipeline.frames import Frame, Prepared, Result
from agent.pipeline.pool.pool import WorkerPool
from agent.pipeline.pool.work import Stages, WorkerContext
from agent.pipeline.ports import EngineRunners, PoolEventListener
from agent.pipeline.postprocess import Postprocessor
from agent.pipeline.preprocess.choose import make_preprocessor
from agent.pipeline.preprocess.cpu_path import CpuPreprocessor
from agent.pipeline.preprocess.gpu_path import GpuPreprocessor
from agent.pipeline.sinks import Sink
from agent.pipeline.stats import StatsBook
from agent.vision.letterbox import preprocess

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """Everything that depends on the engine being served."""

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
        max_batch: int,
    ) -> ServedModel:
        image = artifact.inputs[0] if artifact.inputs else None
        return cls(
            artifact=artifact,
            bundle=bundle,
            input_name=image.name if image is not None else bundle.input.name,
            size_hw=_input_size(artifact, bundle),
            batch=_static_batch(artifact) or max(1, max_batch),
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


def make_stages(
    m: ServedModel, *, name: str, book: StatsBook, prefer_gpu: bool, keep_frames: bool
) -> Stages:
    """The pool stages serving ``m`` (``name`` labels error results)."""
    return Stages(
        preprocess=functools.partial(preprocess_batch, m),
        postprocess=functools.partial(postprocess_batch, m, book=book, keep_frames=keep_frames),
        setup=functools.partial(setup_worker, m, prefer_gpu=prefer_gpu),
        model=name,
        task=m.bundle.task,
    )


def setup_worker(m: ServedModel, ctx: WorkerContext, *, prefer_gpu: bool) -> None:
    """In the worker thread: its preprocessor, then one warm-up inference (the worker is warm
    before it reports IDLE)."""
    # A runner with its own CUDA stream (TensorRT) gets the GPU preprocessor on that
    # stream: the kernel's output is bound as the engine input, with no copy and no sync.
    stream = getattr(ctx.runner, "stream", None)
    pre = make_preprocessor(m.spec, m.size_hw, m.batch, prefer_gpu=prefer_gpu, stream=stream)
    ctx.resources["preprocessor"] = pre
    ctx.resources["device_feed"] = (
        isinstance(pre, GpuPreprocessor)
        and stream is not None
        and bool(getattr(ctx.runner, "accepts_device_inputs", False))
    )
    ctx.runner.infer(m.warmup_feeds())


def prepare_frame(m: ServedModel, frame: Frame) -> Frame:
    """CPU path, on the dispatcher: the frame's model input is made before it is queued,
    so a worker only assembles its batch and infers (overlapping preprocess with
    inference). Only frames the pool will take get here."""
    t0 = time.perf_counter()
    try:
        tensor, letterbox = preprocess(frame.image, m.spec, m.size_hw)
    except Exception:
        # Left to the worker, whose preprocess stage fails it with an error result.
        return frame
    ms = (time.perf_counter() - t0) * 1000.0
    return dataclasses.replace(frame, prepared=Prepared(tensor[0], letterbox, ms))


def preprocess_batch(
    m: ServedModel, frames: Sequence[Frame], ctx: WorkerContext
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


def postprocess_batch(
    m: ServedModel,
    frames: Sequence[Frame],
    outputs: dict[str, np.ndarray],
    letterboxes: Sequence[Any],
    timings: Any,
    *,
    book: StatsBook,
    keep_frames: bool,
) -> list[Result]:
    per_frame = [
        {**timings, "preprocess": timings["preprocess"] + f.prepared.ms}
        if f.prepared is not None and "preprocess" in timings
        else dict(timings)
        for f in frames
    ]
    if any(v.dtype.kind == "f" and not np.isfinite(v).all() for v in outputs.values()):
        book.count_nan(len(frames))
    results = m.post.process(frames, outputs, letterboxes, per_frame)
    if not keep_frames:
        return results
    return [dataclasses.replace(r, frame=f.image) for r, f in zip(results, frames, strict=True)]


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


class PoolMaker:
    """Builds the worker pool that serves a :class:`ServedModel`: one runner per worker from
    ``runners`` (made in the worker's thread) and the stages around the model."""

    def __init__(
        self,
        name: str,
        runners: EngineRunners,
        book: StatsBook,
        *,
        threads_per_worker: int,
        prefer_gpu: bool,
        keep_frames: bool,
        on_result: Callable[[Result], None],
        on_event: PoolEventListener | None,
    ) -> None:
        self.name = name
        self._runners = runners
        self._book = book
        self._threads = threads_per_worker
        self._prefer_gpu = prefer_gpu
        self._keep_frames = keep_frames
        self._on_result = on_result
        self._on_event = on_event

    def make(self, m: ServedModel, size: int) -> WorkerPool:
        artifact, runners, threads = m.artifact, self._runners, self._threads
        dla = artifact.manifest.get("key", {}).get("dla_core")

        def runner_factory() -> Runner:
            return runners.runner(artifact.dir, artifact.main_file, threads=threads, dla_core=dla)

        stages = make_stages(
            m,
            name=self.name,
            book=self._book,
            prefer_gpu=self._prefer_gpu,
            keep_frames=self._keep_frames,
        )
        return WorkerPool(
            runner_factory,
            stages,
            size=size,
            max_batch=m.batch,
            on_result=self._on_result,
            on_event=self._on_event,
            post_threads=1,
        )


class Delivery:
    """The last stage, on the pool's delivery thread: count the result, hand it to the sink
    (a sink that raises is counted and logged, never fatal)."""

    def __init__(self, book: StatsBook, sink: Sink) -> None:
        self.book = book
        self.sink = sink

    def write(self, result: Result) -> None:
        self.book.record(result)
        try:
            self.sink.write(result)
        except Exception:
            self.book.count_sink_error()
            log.exception("sink failed")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.sink.close()
