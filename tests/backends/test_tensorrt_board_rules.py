"""What a real board would reject, shown through the fake TensorRT (issue 19 items 3, 4, 7, 12):
FP16 and DLA under strong typing, builder memory pools from the build cap, builder objects
released before the inspection deserialize, one shared engine per plan file, outputs with
data-dependent shapes, blocking-sync events, the 11.x inspector JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.backends.tensorrt import backend as trt_backend
from agent.backends.tensorrt import build as trt_build
from agent.backends.tensorrt import inspect as trt_inspect
from agent.backends.tensorrt import plan as trt_plan
from agent.backends.tensorrt import pools as trt_pools
from agent.backends.tensorrt import runner as trt_runner
from agent.backends.tensorrt.engines import SharedEngines
from agent.core.errors import BuildFailed
from tests.fakes.tensorrt import (
    FakeCuda,
    build_request,
    onnx_fp16_model,
    onnx_nonzero_model,
    onnx_relu_model,
)

MIB = 1024 * 1024


def _build(tmp_path: Path, model: Any = onnx_relu_model, **overrides: Any) -> Any:
    model(tmp_path / "model.onnx")
    return trt_backend.BACKEND.build(build_request(tmp_path, **overrides))


# --------------------------------------------------------------------------- item 3: strong typing


def test_fp16_is_not_offered_where_tensorrt_has_no_fp16_flag(fake: Any) -> None:
    strongly_typed_only = fake._fake.version.startswith("11.")
    assert ("fp16" in trt_backend.BACKEND.precisions) is not strongly_typed_only
    ok, why = trt_backend.BACKEND.available()
    assert ok and ("fp16 not offered" in why) is strongly_typed_only


def test_fp16_on_11_builds_from_an_fp16_onnx_and_computes_in_fp16(
    tmp_path: Path, fake11: Any
) -> None:
    result = _build(tmp_path, onnx_fp16_model, precision="fp16")
    assert not fake11._fake.named("set_flag")  # no precision flag exists to set
    layers = trt_backend.BACKEND.inspect(tmp_path / "artifact", result.main_file)
    assert {x["name"]: x["precision"] for x in layers}["relu"] == "fp16"


def test_fake_builder_refuses_fp32_on_a_strongly_typed_dla_build(
    tmp_path: Path, fake11: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(BuildFailed, match="DLA runs only FP16 and INT8"):  # the agent's check
        _build(tmp_path, dla_core=0)
    assert not fake11._fake.named("build_serialized_network")
    # the rule the check obeys, shown by a build that skips it: the builder refuses too
    monkeypatch.setattr(trt_build, "check_network_types", lambda *a: None)
    (tmp_path / "again").mkdir()
    with pytest.raises(BuildFailed, match="DLA does not support FP32"):
        _build(tmp_path / "again", dla_core=0)
    (tmp_path / "fp16").mkdir()
    _build(tmp_path / "fp16", onnx_fp16_model, dla_core=0)  # FP16 tensors: a DLA network


# --------------------------------------------------------------------------- item 4: memory pools


def test_build_cap_limits_tactic_dram_besides_the_workspace(
    tmp_path: Path, fake: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trt_build, "resident_bytes", lambda: 100 * MIB)
    result = _build(tmp_path, memory_cap_mib=1024)
    limits = {pool: size for _, pool, size in fake._fake.named("set_memory_pool_limit")}
    assert limits == {"WORKSPACE": 256 * MIB, "TACTIC_DRAM": (1024 - 100) * MIB}
    assert "memory_note" not in result.info


def test_dla_build_bounds_the_dla_pools_to_powers_of_two(
    tmp_path: Path, fake: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trt_build, "resident_bytes", lambda: 0)
    model = onnx_fp16_model if fake._fake.version.startswith("11.") else onnx_relu_model
    _build(tmp_path, model, memory_cap_mib=3000, dla_core=0)
    limits = {pool: size for _, pool, size in fake._fake.named("set_memory_pool_limit")}
    # a quarter and an eighth of 3000 MiB, down to a power of two: 512 and 256 MiB
    assert limits["DLA_LOCAL_DRAM"] == 512 * MIB and limits["DLA_GLOBAL_DRAM"] == 256 * MIB
    assert limits["TACTIC_DRAM"] == 3000 * MIB


def test_without_a_cap_only_the_workspace_is_limited_and_the_report_says_so(
    tmp_path: Path, fake: Any
) -> None:
    result = _build(tmp_path)
    assert [p for _, p, _s in fake._fake.named("set_memory_pool_limit")] == ["WORKSPACE"]
    assert "TACTIC_DRAM keeps TensorRT's default" in result.info["memory_note"]


def test_pool_limits_never_go_below_the_workspace(tmp_path: Path) -> None:
    caps = trt_plan.Capabilities()
    plan = trt_plan.plan_build(build_request(tmp_path, memory_cap_mib=300), caps)
    limits = trt_pools.pool_limits(plan, caps.memory_pools, resident_bytes=290 * MIB)
    assert limits["TACTIC_DRAM"] == plan.workspace_bytes == 256 * MIB
    old = trt_pools.pool_limits(plan, ("WORKSPACE",), resident_bytes=0)  # TensorRT < 8.6
    assert old == {"WORKSPACE": 256 * MIB}


# --------------------------------------------------------------------------- item 12: lifetimes


def test_builder_objects_are_released_before_the_inspection_deserialize(
    tmp_path: Path, fake: Any
) -> None:
    _build(tmp_path)
    assert fake._fake.alive_at_deserialize == [[]]


def test_workers_share_one_deserialized_engine_with_a_context_and_stream_each(
    tmp_path: Path, fake: Any
) -> None:
    result = _build(tmp_path)
    rec, engines = fake._fake, SharedEngines()
    cuda = FakeCuda(rec.memory)
    start = len(rec.named("deserialize_cuda_engine"))
    runners = [
        trt_runner.TrtRunner(tmp_path / "artifact", result.main_file, cuda=cuda, engines=engines)
        for _ in range(3)
    ]
    for r in runners:
        r.activate()
    assert len(rec.named("deserialize_cuda_engine")) == start + 1
    assert engines.users(tmp_path / "artifact" / result.main_file) == 3
    assert len({id(r.stream) for r in runners}) == 3
    x = np.linspace(-1, 1, 48, dtype=np.float32).reshape(1, 3, 4, 4)
    for r in runners:
        np.testing.assert_array_equal(r.infer({"images": x})["scores"], np.maximum(x, 0))
    for r in runners:
        r.deactivate()
    assert engines.users(tmp_path / "artifact" / result.main_file) == 0
    assert all(s.closed for s in cuda.events) and not cuda.live
    with trt_runner.TrtRunner(tmp_path / "artifact", result.main_file, cuda=cuda, engines=engines):
        pass
    assert len(rec.named("deserialize_cuda_engine")) == start + 2  # the last lease freed it


def test_runner_waits_on_a_blocking_event_without_timing(tmp_path: Path, fake: Any) -> None:
    result = _build(tmp_path)
    cuda = FakeCuda(fake._fake.memory)
    with trt_runner.TrtRunner(tmp_path / "artifact", result.main_file, cuda=cuda) as runner:
        before = len(cuda.calls)
        runner.infer({"images": np.ones((2, 3, 4, 4), np.float32)})
        calls = cuda.calls[before:]
    assert ("event_sync", True, False) in calls  # blocking sync, no timing
    assert not [c for c in calls if c[0] == "sync"]  # no spinning cudaStreamSynchronize


# --------------------------------------------------------------------------- item 7: DDS outputs


def test_data_dependent_outputs_resolve_through_an_output_allocator(
    tmp_path: Path, fake: Any
) -> None:
    if fake._fake.version == "8.6":
        pytest.skip("8.6's fake runs the same named-tensor path; covered by 10.3 and 11.4.1")
    result = _build(tmp_path, onnx_nonzero_model)
    cuda = FakeCuda(fake._fake.memory)
    rng = np.random.default_rng(1)
    with trt_runner.TrtRunner(tmp_path / "artifact", result.main_file, cuda=cuda) as runner:
        for batch in (1, 3):
            x = rng.standard_normal((batch, 3, 4, 4)).astype(np.float32)
            out = runner.infer({"images": x})
            expected = np.array(np.nonzero(np.maximum(x, 0) > 0), dtype=np.int64)
            np.testing.assert_array_equal(out["where"], expected)
            np.testing.assert_array_equal(out["scores"], np.maximum(x, 0))
    assert fake._fake.named("set_output_allocator") == [("set_output_allocator", "where")]
    assert not cuda.live  # the allocator's buffers were freed with the runner


def test_fake_context_fails_a_data_dependent_output_without_an_allocator(
    tmp_path: Path, fake: Any
) -> None:
    result = _build(tmp_path, onnx_nonzero_model)
    data = (tmp_path / "artifact" / result.main_file).read_bytes()
    engine = fake.Runtime(fake.Logger()).deserialize_cuda_engine(data)
    context = engine.create_execution_context()
    assert list(context.get_tensor_shape("where")) == [4, -1]
    x = np.ones((1, 3, 4, 4), np.float32)
    ptr = fake._fake.memory.alloc(x.nbytes)
    fake._fake.memory.block(ptr)[: x.nbytes] = x.tobytes()
    context.set_input_shape("images", (1, 3, 4, 4))
    context.set_tensor_address("images", ptr)
    context.set_tensor_address("scores", fake._fake.memory.alloc(x.nbytes))
    assert context.execute_async_v3(0) is False


# --------------------------------------------------------------------------- inspector JSON


def test_11x_inspector_json_has_io_tensor_objects_and_parses(tmp_path: Path, fake11: Any) -> None:
    result = _build(tmp_path, precision="int8")
    data = (tmp_path / "artifact" / result.main_file).read_bytes()
    engine = fake11.Runtime(fake11.Logger()).deserialize_cuda_engine(data)
    text = engine.create_engine_inspector().get_engine_information(
        fake11.LayerInformationFormat.JSON
    )
    info = json.loads(text)
    assert "Bindings" not in info
    images, scores = info["I/O Tensors"]
    assert (images["Name"], images["IOMode"], images["DataType"]) == ("images", "Input", "Float")
    assert images["ProfileInfo"][0]["MaxShape"] == [8, 3, 4, 4]
    assert (scores["IOMode"], scores["Location"], scores["IsShapeInferenceIO"]) == (
        "Output",
        "Device",
        False,
    )
    (layer,) = trt_inspect.layers_from_inspector_json(text)
    assert (layer["name"], layer["precision"]) == ("relu", "fp32")
