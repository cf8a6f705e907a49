"""The GPU preprocessing path end to end in the pipeline (``gpu``: needs a CUDA GPU).

A TensorRT runner owns a CUDA stream and takes :class:`DeviceTensor` inputs; the pipeline then
makes each worker's NVRTC preprocessor on that stream and binds its output as the engine input
(no download, no sync). TensorRT is not installed on the GPU machine lent here, so the runner
below is the ONNX Runtime runner behind the same contract: it reads the device tensor back on
its own stream (ordering is the stream's, as TensorRT's would be) and infers on the host. The
results must equal the CPU path's, frame for frame.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pytest

from agent.backends.base import DeviceTensor
from agent.backends.cuda import memory as cuda_memory
from agent.backends.cuda import runtime as cuda_runtime
from agent.backends.registry import get_backend
from agent.config.agent import SourceConfig
from agent.config.profiles.store import ProfileStore
from agent.engine.build.orchestrator import build_engine
from agent.engine.build.outcome import BuildOutcome
from agent.engine.bundle import load_bundle
from agent.pipeline.assembly import build_pipeline
from agent.pipeline.frames import Result
from agent.pipeline.pipeline import PipelineOptions
from tests.assets import DET_BUNDLE as BUNDLE
from tests.assets import DET_CALIB as CALIB
from tests.assets import SAMPLE_VIDEO as VIDEO
from tests.helpers.pipeline_util import ListSink

_OK, _WHY = cuda_runtime.available()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _OK, reason=f"no usable CUDA GPU: {_WHY}"),
]


class DeviceInputRunner:
    """The TensorRT runner's device-input contract over an ONNX Runtime runner."""

    accepts_device_inputs = True

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.stream: cuda_runtime.Stream | None = None
        self.device_feeds = 0

    @property
    def inputs(self) -> Any:
        return self.inner.inputs

    @property
    def outputs(self) -> Any:
        return self.inner.outputs

    def activate(self) -> None:
        self.inner.activate()
        self.stream = cuda_runtime.Stream()

    def deactivate(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()
            self.stream.close()
            self.stream = None
        self.inner.deactivate()

    def __enter__(self) -> DeviceInputRunner:
        self.activate()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.deactivate()

    def infer(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        host: dict[str, np.ndarray] = {}
        assert self.stream is not None
        for name, value in feeds.items():
            if isinstance(value, DeviceTensor):
                with cuda_memory.PinnedBuffer(value.shape, np.dtype(value.dtype)) as pinned:
                    cuda_memory.copy_dtoh_async(pinned.array, value.ptr, self.stream)
                    self.stream.synchronize()  # the kernel was queued on this stream first
                    host[name] = pinned.array.copy()
                self.device_feeds += 1
            else:
                host[name] = value
        return self.inner.infer(host)


class DeviceInputBackend:
    def __init__(self) -> None:
        self.inner = get_backend("onnxruntime")
        self.runners: list[DeviceInputRunner] = []

    def runner(self, *args: Any, **kwargs: Any) -> DeviceInputRunner:
        r = DeviceInputRunner(self.inner.runner(*args, **kwargs))
        self.runners.append(r)
        return r


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> BuildOutcome:
    return build_engine(
        BUNDLE,
        ProfileStore().load("cpu"),
        precision="fp32",
        calib_dir=CALIB,
        cache_dir=tmp_path_factory.mktemp("cache"),
        gate_seconds=0.3,
    )


def _run(engine: BuildOutcome, backend: Any, gpu: bool, tmp: Path) -> list[Result]:
    bundle = load_bundle(BUNDLE)
    sink = ListSink()
    pipe = build_pipeline(
        model="shapes-det",
        artifact=engine.artifact,
        backend=backend,
        bundle=bundle.config,
        labels=bundle.labels,
        sources=[SourceConfig(name="v", type="file", uri=str(VIDEO), model="shapes-det")],
        sink=sink,  # type: ignore[arg-type]
        options=PipelineOptions(
            workers=2, max_batch=1, threads_per_worker=1, prefer_gpu_preprocess=gpu
        ),
    ).start()
    try:
        assert pipe.wait(timeout=120)
    finally:
        pipe.stop(timeout=10)
    return sink.results


def test_gpu_preprocess_feeds_the_runner_in_device_memory(
    engine: BuildOutcome, tmp_path: Path
) -> None:
    backend = DeviceInputBackend()
    gpu = _run(engine, backend, True, tmp_path)
    cpu = _run(engine, get_backend("onnxruntime"), False, tmp_path)
    assert [r.index for r in gpu] == list(range(150))
    assert sum(r.device_feeds for r in backend.runners) == 150  # every frame, no download
    assert [r.index for r in cpu] == list(range(150))
    for g, c in zip(gpu, cpu, strict=True):
        assert [d.label for d in g.detections] == [d.label for d in c.detections], g.index
        for dg, dc in zip(g.detections, c.detections, strict=True):
            np.testing.assert_allclose(dg.box, dc.box, atol=0.5)
            assert abs(dg.score - dc.score) < 1e-3
