"""The TensorRT runner's H2D / compute / D2H split (#18 item 5) with CUDA timing events, and the
engine's optimization profile read back from a plan, against the fake TensorRT of each API
generation and the fake CUDA layer (whose events read a deterministic device clock: a copy takes
its bytes over ``bytes_per_ms``, the engine its layers' times). ``StageClock`` itself runs on a
real GPU in tests/backends/test_cuda_layer.py."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.backends.base import DeviceTensor, ProfileShapedRunner, StageTimedRunner
from agent.backends.cuda.timing import StageClock
from agent.backends.tensorrt import backend as trt_backend
from agent.backends.tensorrt import plan as trt_plan
from agent.backends.tensorrt import runner as trt_runner
from agent.backends.tensorrt.timing import ZERO_COPY_NOTE
from tests.fakes.tensorrt import (
    SHAPES,
    FakeCuda,
    build_request,
    make_fake_tensorrt,
    onnx_nonzero_model,
    onnx_relu_model,
)

BYTES_PER_MS = 1000.0
#: the fake engine's one Relu layer (``0.25 * (index + 1)`` ms unless ``layer_ms`` says otherwise)
RELU_MS = 0.25


def _plan(tmp_path: Path, model: Any = onnx_relu_model) -> Path:
    model(tmp_path / "model.onnx")
    result = trt_backend.BACKEND.build(build_request(tmp_path))
    return tmp_path / "artifact" / result.main_file


def _runner(plan: Path, cuda: FakeCuda, **kw: Any) -> trt_runner.TrtRunner:
    return trt_runner.TrtRunner(plan.parent, plan.name, cuda=cuda, **kw)


def _batch(n: int) -> np.ndarray:
    return np.linspace(-1, 1, n * 48, dtype=np.float32).reshape(n, 3, 4, 4)


def _timing_events(cuda: FakeCuda) -> list[Any]:
    return [e for e in cuda.events if e.timing]


def test_split_is_measured_per_stage_with_events_created_once(tmp_path: Path, fake: Any) -> None:
    plan = _plan(tmp_path)
    fake._fake.layer_ms["relu"] = 1.5
    cuda = FakeCuda(fake._fake.memory, bytes_per_ms=BYTES_PER_MS)
    runner = _runner(plan, cuda, timing=True)
    assert isinstance(runner, StageTimedRunner) and runner.timing
    with runner:
        assert runner.last_stage_ms() is None  # nothing ran yet
        for n in (2, 8, 2):
            out = runner.infer({"images": _batch(n)})
            np.testing.assert_array_equal(out["scores"], np.maximum(_batch(n), 0))
            nbytes = n * 48 * 4
            assert runner.last_stage_ms() == pytest.approx(
                {"h2d": nbytes / BYTES_PER_MS, "compute": 1.5, "d2h": nbytes / BYTES_PER_MS}
            )
        assert runner.transfers_note() is None  # a discrete GPU copies
        events = _timing_events(cuda)
        # Four events (start, end of h2d, end of compute, end of d2h), created once, without
        # blocking sync (nobody waits on them): cudaEventDefault.
        assert len(events) == 4 and not any(e.blocking for e in events)
        assert cuda.calls.count(("event_create", True, False)) == 4
        # per inference: the 4 timing records and the blocking "done" event the runner waits on
        assert len([c for c in cuda.calls if c[0] == "event_record"]) == 3 * 5
        assert len([c for c in cuda.calls if c[0] == "event_elapsed"]) == 3 * 3
    assert all(e.closed for e in events)  # closed with the runner's other CUDA objects
    assert runner.last_stage_ms() == pytest.approx({"h2d": 0.384, "compute": 1.5, "d2h": 0.384})


def test_serving_records_no_timing_events(tmp_path: Path, fake: Any) -> None:
    plan = _plan(tmp_path)
    cuda = FakeCuda(fake._fake.memory)
    with _runner(plan, cuda) as runner:  # timing off: what the pipeline's workers run
        assert not runner.timing
        runner.infer({"images": _batch(2)})
        assert runner.last_stage_ms() is None
        assert not _timing_events(cuda)
        assert len([c for c in cuda.calls if c[0] == "event_record"]) == 1  # the done event
        runner.timing = True  # switched on while active: the events come on the next inference
        runner.infer({"images": _batch(1)})
        assert runner.last_stage_ms() == pytest.approx(
            {"h2d": 0.192, "compute": RELU_MS, "d2h": 0.192}
        )
        runner.timing = False
        runner.infer({"images": _batch(1)})
        assert runner.last_stage_ms() is None
        assert len(_timing_events(cuda)) == 4


def test_zero_copy_reports_no_transfers(tmp_path: Path, fake: Any) -> None:
    plan = _plan(tmp_path)
    igpu = FakeCuda(fake._fake.memory, integrated=True, bytes_per_ms=BYTES_PER_MS)
    with _runner(plan, igpu, timing=True) as runner:
        assert runner.zero_copy
        runner.infer({"images": _batch(4)})
        assert runner.last_stage_ms() == {"h2d": 0.0, "compute": RELU_MS, "d2h": 0.0}
        assert runner.transfers_note() == ZERO_COPY_NOTE and "zero-copy" in ZERO_COPY_NOTE
    assert not {"htod", "dtoh"} & {c[0] for c in igpu.calls}


def test_device_tensor_input_has_no_h2d(tmp_path: Path, fake: Any) -> None:
    plan = _plan(tmp_path)
    cuda = FakeCuda(fake._fake.memory, bytes_per_ms=BYTES_PER_MS)
    x = _batch(2)
    with _runner(plan, cuda, timing=True) as runner:
        dev = cuda.DeviceBuffer(x.nbytes)
        fake._fake.memory.block(dev.ptr)[: x.nbytes] = x.tobytes()
        runner.infer({"images": DeviceTensor(dev.ptr, x.shape)})
        assert runner.last_stage_ms() == pytest.approx(
            {"h2d": 0.0, "compute": RELU_MS, "d2h": x.nbytes / BYTES_PER_MS}
        )
        dev.close()


def test_zero_copy_still_times_the_copy_of_a_data_dependent_output(
    tmp_path: Path, fake: Any
) -> None:
    # NonZero's output lives in the output allocator's device buffer, copied down even when the
    # other tensors are mapped: that copy is D2H time.
    plan = _plan(tmp_path, onnx_nonzero_model)
    igpu = FakeCuda(fake._fake.memory, integrated=True, bytes_per_ms=BYTES_PER_MS)
    x = _batch(1)
    with _runner(plan, igpu, timing=True) as runner:
        out = runner.infer({"images": x})
        where = out["where"]
        assert where.shape[0] == 4 and where.dtype == np.int64
        assert runner.last_stage_ms() == pytest.approx(
            {"h2d": 0.0, "compute": RELU_MS * 3, "d2h": where.nbytes / BYTES_PER_MS}
        )


def test_failed_inference_leaves_no_stale_times(tmp_path: Path, fake: Any) -> None:
    plan = _plan(tmp_path)
    cuda = FakeCuda(fake._fake.memory)
    with _runner(plan, cuda, timing=True) as runner:
        runner.infer({"images": _batch(1)})
        assert runner.last_stage_ms() is not None
        with pytest.raises(ValueError, match="optimization profile"):
            runner.infer({"images": _batch(9)})  # max batch 8
        assert runner.last_stage_ms() is None
        runner.infer({"images": _batch(1)})  # the clock starts over
        assert runner.last_stage_ms() == pytest.approx(
            {"h2d": 0.192, "compute": RELU_MS, "d2h": 0.192}
        )


def test_bindings_path_is_timed_and_reads_the_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = make_fake_tensorrt("8.6")
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    plan = _plan(tmp_path)
    del module.ICudaEngine.num_io_tensors  # as in TensorRT < 8.5: bindings only
    assert trt_plan.detect_capabilities(module).io_tensors_api is False
    cuda = FakeCuda(module._fake.memory, bytes_per_ms=BYTES_PER_MS)
    with _runner(plan, cuda, timing=True) as runner:
        runner.infer({"images": _batch(2)})
        assert runner.last_stage_ms() == pytest.approx(
            {"h2d": 0.384, "compute": RELU_MS, "d2h": 0.384}
        )
        assert runner.profile_shapes() == SHAPES  # through get_profile_shape(0, name)
    assert module._fake.named("execute_async_v2")


def test_profile_shapes_of_the_engine(tmp_path: Path, fake: Any) -> None:
    plan = _plan(tmp_path)
    runner = _runner(plan, FakeCuda(fake._fake.memory))
    assert isinstance(runner, ProfileShapedRunner)
    with pytest.raises(RuntimeError, match="not active"):
        runner.profile_shapes()
    with runner:
        assert runner.profile_shapes() == SHAPES
        assert runner.profile_shapes()["images"].to_json() == {
            "min": [1, 3, 4, 4],
            "opt": [4, 3, 4, 4],
            "max": [8, 3, 4, 4],
        }


def _static_relu_model(path: Path) -> Path:
    from onnx import TensorProto, helper, save

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [2, 3, 4, 4])
    y = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [2, 3, 4, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["images"], ["scores"])], "g", [x], [y])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_static_inputs_have_no_profile_shapes(tmp_path: Path, fake: Any) -> None:
    _static_relu_model(tmp_path / "model.onnx")
    result = trt_backend.BACKEND.build(build_request(tmp_path, shapes={}))
    with _runner(tmp_path / "artifact" / result.main_file, FakeCuda(fake._fake.memory)) as r:
        assert r.inputs[0].shape == (2, 3, 4, 4)
        assert r.profile_shapes() == {}


# --------------------------------------------------------------------------- StageClock


class _Event:
    def __init__(self, log: list[Any], clock: list[float], **flags: Any) -> None:
        self.log, self.clock, self.flags = log, clock, flags
        self.at: float | None = None
        self.closed = False

    def record(self, stream: Any) -> None:
        self.at = self.clock[0]
        self.log.append(("record", stream))

    def elapsed_ms(self, end: Any) -> float:
        return end.at - self.at

    def close(self) -> None:
        self.closed = True


def test_stage_clock_orders_and_guards_its_events() -> None:
    log: list[Any] = []
    clock = [10.0]
    made: list[_Event] = []

    def event(**flags: Any) -> _Event:
        made.append(_Event(log, clock, **flags))
        return made[-1]

    with pytest.raises(ValueError, match="distinct"):
        StageClock(["a", "a"], event)
    made.clear()
    stages = StageClock(["a", "b"], event)
    assert len(made) == 3 and all(e.flags == {"timing": True, "blocking": False} for e in made)
    with pytest.raises(RuntimeError, match="0 of 3"):
        stages.elapsed_ms()
    stages.start("s")
    clock[0] = 12.5
    stages.mark("s")
    clock[0] = 13.0
    with pytest.raises(RuntimeError, match="2 of 3"):
        stages.elapsed_ms()
    stages.mark("s")
    assert stages.complete and stages.elapsed_ms() == {"a": 2.5, "b": 0.5}
    with pytest.raises(RuntimeError, match="already marked"):
        stages.mark("s")
    stages.start("s")  # a new round
    assert not stages.complete and log.count(("record", "s")) == 4
    stages.close()
    stages.close()
    assert all(e.closed for e in made)
    with pytest.raises(RuntimeError, match="closed"):
        stages.start("s")


def test_stage_clock_closes_what_it_made_when_creation_fails() -> None:
    made: list[_Event] = []

    def event(**flags: Any) -> _Event:
        if len(made) == 2:
            raise MemoryError("cudaErrorMemoryAllocation")
        made.append(_Event([], [0.0], **flags))
        return made[-1]

    with pytest.raises(MemoryError):
        StageClock(["h2d", "compute", "d2h"], event)
    assert len(made) == 2 and all(e.closed for e in made)
