"""Hot swap of a pipeline's engine between frames (the OTA activation step), on the bundled
detector with real ONNX Runtime engines: no frame of a file source lost, order kept, a broken
new engine refused while the old one keeps serving, NaN outputs counted."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from agent.backends.registry import get_backend
from agent.config.agent import SourceConfig
from agent.config.device import DeviceProfile
from agent.core.errors import PipelineError
from agent.engine.build.orchestrator import build_engine
from agent.engine.build.outcome import BuildOutcome
from agent.engine.bundle import load_bundle
from agent.pipeline.assembly import build_pipeline
from agent.pipeline.pipeline import Pipeline, PipelineOptions
from agent.pipeline.pool.pool import WorkerPool
from agent.pipeline.pool.work import result_error
from agent.pipeline.stages import ServedModel
from tests.assets import DET_BUNDLE as BUNDLE
from tests.assets import SAMPLE_VIDEO as VIDEO
from tests.helpers.pipeline_util import ListSink


@pytest.fixture(scope="module")
def engines(
    det_int8_engine: BuildOutcome, cpu_profile: DeviceProfile, engine_cache: Path
) -> tuple[BuildOutcome, BuildOutcome]:
    int8 = det_int8_engine
    fp32 = build_engine(
        BUNDLE,
        cpu_profile,
        precision="fp32",
        calib_dir=None,
        cache_dir=engine_cache,
        gate_seconds=0.3,
    )
    assert int8.artifact.dir != fp32.artifact.dir
    return int8, fp32


def make_pipeline(artifact_outcome: BuildOutcome, src: SourceConfig, sink: ListSink) -> Pipeline:
    bundle = load_bundle(BUNDLE)
    return build_pipeline(
        model="shapes-det",
        artifact=artifact_outcome.artifact,
        backend=get_backend("onnxruntime"),
        bundle=bundle.config,
        labels=bundle.labels,
        sources=[src],
        sink=sink,  # type: ignore[arg-type]
        options=PipelineOptions(workers=2, max_batch=1, threads_per_worker=1),
    )


def wait_for(pred, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return False


def test_swap_mid_stream_loses_no_file_frame(engines: tuple[BuildOutcome, BuildOutcome]) -> None:
    int8, fp32 = engines
    sink = ListSink(delay_s=0.004)  # slow enough that the swap lands mid-file
    src = SourceConfig(name="video", type="file", uri=str(VIDEO), model="shapes-det")
    pipe = make_pipeline(int8, src, sink).start()
    bundle = load_bundle(BUNDLE)
    try:
        assert wait_for(lambda: sink.count() >= 20, 30), "frames should flow before the swap"
        info = pipe.swap(artifact=fp32.artifact, bundle=bundle.config, labels=bundle.labels)
        swapped_at = sink.count()
        assert pipe.wait(timeout=60), "the file should end and drain after the swap"
    finally:
        pipe.stop(timeout=5)
    assert 20 <= swapped_at < 150, "the swap should land mid-file"
    indices = [r.index for r in sink.results]
    assert indices == list(range(150)), "no frame lost or reordered across the swap"
    assert not [r for r in sink.results if result_error(r)]
    assert info.drained is True
    assert info.gap_ms >= 0
    stats = pipe.stats()
    assert stats.engine == fp32.artifact.dir.name
    assert stats.precision == "fp32"
    assert stats.swaps == 1
    # the new engine finds the same shapes on the frames after the swap
    late = [r for r in sink.results if r.index > swapped_at + 5]
    assert late and sum(len(r.detections) for r in late) > 0


def test_broken_engine_is_refused_and_the_old_one_keeps_serving(
    engines: tuple[BuildOutcome, BuildOutcome], tmp_path: Path
) -> None:
    int8, _ = engines
    broken_dir = tmp_path / "broken"
    shutil.copytree(int8.artifact.dir, broken_dir)
    (broken_dir / int8.artifact.main_file).write_bytes(b"not an onnx file")
    broken = dataclasses.replace(int8.artifact, dir=broken_dir)

    sink = ListSink()
    src = SourceConfig(name="syn", type="synthetic", uri="", model="shapes-det", fps_cap=60)
    pipe = make_pipeline(int8, src, sink).start()
    bundle = load_bundle(BUNDLE)
    try:
        assert wait_for(lambda: sink.count() >= 5, 30)
        with pytest.raises(PipelineError) as info:
            pipe.swap(
                artifact=broken, bundle=bundle.config, labels=bundle.labels, warmup_timeout_s=30
            )
        assert "old engine keeps serving" in str(info.value)
        before = sink.count()
        assert wait_for(lambda: sink.count() >= before + 5, 30), "the old engine keeps serving"
        assert pipe.stats().engine == int8.artifact.dir.name
        assert pipe.stats().swaps == 0
    finally:
        pipe.stop(timeout=5)


def _nan_model(path: Path) -> None:
    """The engine at ``path`` rewritten to multiply every output by NaN: same interface,
    every answer NaN (a model that trained into NaN, as OTA probation must catch)."""
    model = onnx.load(str(path))
    graph = model.graph
    graph.initializer.append(helper.make_tensor("nan", TensorProto.FLOAT, [], [float("nan")]))
    for out in graph.output:
        raw = out.name + "_raw"
        for node in graph.node:
            node.output[:] = [raw if o == out.name else o for o in node.output]
            node.input[:] = [raw if i == out.name else i for i in node.input]
        graph.node.append(helper.make_node("Mul", [raw, "nan"], [out.name]))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def test_nan_outputs_are_counted(
    engines: tuple[BuildOutcome, BuildOutcome], tmp_path: Path
) -> None:
    int8, _ = engines
    nan_dir = tmp_path / "nan"
    shutil.copytree(int8.artifact.dir, nan_dir)
    _nan_model(nan_dir / int8.artifact.main_file)
    nan_artifact = dataclasses.replace(int8.artifact, dir=nan_dir)

    sink = ListSink()
    src = SourceConfig(name="syn", type="synthetic", uri="", model="shapes-det", fps_cap=60)
    pipe = make_pipeline(int8, src, sink).start()
    bundle = load_bundle(BUNDLE)
    try:
        assert wait_for(lambda: sink.count() >= 5, 30)
        assert pipe.stats().nan_outputs == 0
        pipe.swap(artifact=nan_artifact, bundle=bundle.config, labels=bundle.labels)
        ok = wait_for(lambda: pipe.stats().nan_outputs >= 5, 30)
        assert ok, (pipe.stats(), [result_error(r) for r in sink.results[-3:]])
    finally:
        pipe.stop(timeout=5)
    assert pipe.stats().latency_ms["infer"].p50 is not None


def test_resize_during_warm_up_reaches_the_new_pool(
    engines: tuple[BuildOutcome, BuildOutcome],
) -> None:
    """The governor shrinks the pool while the new engine warms up: the new pool serves at the
    size asked for, not at the size the swap started with."""
    int8, fp32 = engines
    sink = ListSink()
    src = SourceConfig(name="video", type="file", uri=str(VIDEO), model="shapes-det")
    pipe = make_pipeline(int8, src, sink).start()
    bundle = load_bundle(BUNDLE)
    pools = pipe.hot_swap.pools
    make_pool = pools.make

    def make_pool_then_resize(m: ServedModel, size: int) -> WorkerPool:
        pool = make_pool(m, size)
        pipe.resize(1)  # the governor's decision lands on the pool serving now
        return pool

    pools.make = make_pool_then_resize  # type: ignore[method-assign]
    try:
        pipe.swap(artifact=fp32.artifact, bundle=bundle.config, labels=bundle.labels)
        assert pipe.pool.size == 1
        assert pipe.wait(timeout=60)
    finally:
        pipe.stop(timeout=5)
    assert [r.index for r in sink.results] == list(range(150))
