"""TensorRT backend against a recording fake ``tensorrt`` per API generation (8.6, 10.3,
11.4.1): build (limits, profile, flags, timing cache, failures), the runner (buffers, device
tensors, bindings fallback, DLA, per-layer profile) and the engine inspector."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.backends.base import DeviceTensor, InputShapes, summarize_layer_times
from agent.backends.tensorrt import backend as trt_backend
from agent.backends.tensorrt import inspect as trt_inspect
from agent.backends.tensorrt import plan as trt_plan
from agent.backends.tensorrt import runner as trt_runner
from agent.core.errors import ArtifactError, BuildFailed
from tests.fakes.tensorrt import (
    EXPECTED_FLAGS,
    SHAPES,
    FakeCuda,
    build_request,
    make_fake_tensorrt,
    onnx_dq_model,
    onnx_fp16_model,
    onnx_relu_model,
)

MIB = 1024 * 1024


# --------------------------------------------------------------------------- build with the fake


def _gen(fake: Any) -> str:
    return fake._fake.version


def _dla_model(fake: Any) -> Callable[[Path], Path]:
    """The model a DLA build uses: on 11.x (strongly typed) it must already compute in FP16."""
    return onnx_fp16_model if _gen(fake).startswith("11.") else onnx_relu_model


def _build(
    tmp_path: Path, fake: Any, model: Callable[[Path], Path] = onnx_relu_model, **overrides: Any
) -> Any:
    model(tmp_path / "model.onnx")
    progress: list[tuple[str, float, str]] = []
    result = trt_backend.BACKEND.build(
        build_request(tmp_path, **overrides), lambda s, f, m: progress.append((s, f, m))
    )
    assert progress[0][1] == 0.0 and progress[-1][1] == 1.0
    return result


def test_build_applies_limits_profile_and_level(tmp_path: Path, fake: Any) -> None:
    rec = fake._fake
    result = _build(tmp_path, fake)
    assert rec.named("set_memory_pool_limit") == [("set_memory_pool_limit", "WORKSPACE", 256 * MIB)]
    assert rec.named("add_optimization_profile") == [
        ("add_optimization_profile", {"images": ((1, 3, 4, 4), (4, 3, 4, 4), (8, 3, 4, 4))})
    ]
    assert rec.named("set_shape") == [
        ("set_shape", "images", (1, 3, 4, 4), (4, 3, 4, 4), (8, 3, 4, 4))
    ]
    assert rec.named("builder_optimization_level") == [("builder_optimization_level", 2)]
    assert rec.named("profiling_verbosity") == [("profiling_verbosity", "DETAILED")]
    assert rec.named("parse_from_file") == [("parse_from_file", str(tmp_path / "model.onnx"))]
    assert not rec.named("DLA_core") and not rec.named("default_device_type")
    assert "GPU_FALLBACK" not in rec.configs[0].flags_set

    assert result.main_file == "engine.plan" and result.files == ("engine.plan",)
    assert (tmp_path / "artifact" / "engine.plan").read_bytes().startswith(b"FAKETRT1")
    assert [s.to_json() for s in result.inputs] == [
        {"name": "images", "shape": [-1, 3, 4, 4], "dtype": "float32"}
    ]
    assert [s.name for s in result.outputs] == ["scores"]
    assert result.info["tensorrt_version"] == fake.__version__
    assert result.info["layers"] == 1
    assert result.info["plan"]["workspace_bytes"] == 256 * MIB
    assert not list((tmp_path / "artifact").glob(".*tmp"))


def test_build_precision_and_network_flags(tmp_path: Path, fake: Any) -> None:
    rec = fake._fake
    network_flags, int8_flags, _ = EXPECTED_FLAGS[_gen(fake)]
    _build(tmp_path, fake, precision="int8")
    assert rec.named("create_network") == [("create_network", network_flags)]
    assert tuple(f for _, f in rec.named("set_flag")) == int8_flags
    explicit_batch = ("create_network", ("EXPLICIT_BATCH",)) in rec.calls
    assert explicit_batch is (_gen(fake) == "8.6")


def test_build_fp16(tmp_path: Path, fake: Any) -> None:
    _, _, fp16_flags = EXPECTED_FLAGS[_gen(fake)]
    if _gen(fake).startswith("11."):  # strongly typed: an FP32 ONNX cannot make an fp16 engine
        with pytest.raises(BuildFailed, match="would be FP32") as info:
            _build(tmp_path, fake, precision="fp16")
        assert "AutoCast" in str(info.value.fix)
        assert not fake._fake.named("build_serialized_network")  # refused before the build
        return
    _build(tmp_path, fake, precision="fp16")
    assert tuple(f for _, f in fake._fake.named("set_flag")) == fp16_flags


def test_build_dla_core_and_gpu_fallback(tmp_path: Path, fake: Any) -> None:
    rec = fake._fake
    result = _build(tmp_path, fake, _dla_model(fake), dla_core=1)
    assert rec.named("DLA_core") == [("DLA_core", 1)]
    assert rec.named("default_device_type") == [("default_device_type", "DLA")]
    assert "GPU_FALLBACK" in rec.configs[0].flags_set
    assert result.info["plan"]["device_type"] == "DLA"


def test_build_dla_without_gpu_fallback(tmp_path: Path, fake: Any) -> None:
    _build(tmp_path, fake, _dla_model(fake), dla_core=0, gpu_fallback=False)
    assert fake._fake.named("DLA_core") == [("DLA_core", 0)]
    assert "GPU_FALLBACK" not in fake._fake.configs[0].flags_set


def test_build_dla_pins_the_profile_to_opt(tmp_path: Path, fake: Any) -> None:
    result = _build(tmp_path, fake, _dla_model(fake), dla_core=0)
    opt = SHAPES["images"].opt
    assert fake._fake.named("set_shape") == [("set_shape", "images", opt, opt, opt)]
    assert any("DLA needs static shapes" in n for n in result.info["plan"]["notes"])


def test_fake_builder_refuses_dla_with_a_dynamic_profile(
    tmp_path: Path, fake: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the rule the plan obeys, shown by a plan that would not: TensorRT's DLA restrictions
    monkeypatch.setattr(trt_plan, "_plan_profile", lambda request, *_: dict(request.shapes))
    with pytest.raises(BuildFailed, match="DLA does not support dynamic dimensions"):
        _build(tmp_path, fake, _dla_model(fake), dla_core=0)
    (tmp_path / "gpu").mkdir()
    _build(tmp_path / "gpu", fake)  # the same dynamic profile builds on the GPU


def test_parser_rejects_int32_into_dequantize_linear(tmp_path: Path, fake: Any) -> None:
    onnx_dq_model(tmp_path / "model.onnx", quantized="int32")
    with pytest.raises(BuildFailed) as err:
        trt_backend.BACKEND.build(build_request(tmp_path), lambda *_: None)
    text = str(err.value)
    assert "b_DequantizeLinear: only activation types allowed as input to this layer" in text
    assert "INT32" in text


def test_parser_accepts_int8_into_dequantize_linear(tmp_path: Path, fake: Any) -> None:
    onnx_dq_model(tmp_path / "model.onnx", quantized="int8")
    result = trt_backend.BACKEND.build(build_request(tmp_path), lambda *_: None)
    assert result.main_file == "engine.plan"


def test_timing_cache_created_when_absent_and_saved(tmp_path: Path, fake: Any) -> None:
    cache = tmp_path / "state" / "timing.cache"
    result = _build(tmp_path, fake, timing_cache=cache)
    rec = fake._fake
    assert rec.named("create_timing_cache") == [("create_timing_cache", b"")]
    assert rec.named("set_timing_cache") == [("set_timing_cache", b"", False)]
    assert cache.read_bytes() == b"|tactics"
    assert result.info["timing_cache_loaded"] is False
    assert not list(cache.parent.glob(".*tmp"))


def test_timing_cache_loaded_when_present_and_saved(tmp_path: Path, fake: Any) -> None:
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"CACHE-v1")
    result = _build(tmp_path, fake, timing_cache=cache)
    rec = fake._fake
    assert rec.named("create_timing_cache") == [("create_timing_cache", b"CACHE-v1")]
    assert rec.named("set_timing_cache") == [("set_timing_cache", b"CACHE-v1", False)]
    assert rec.named("timing_cache.serialize") == [("timing_cache.serialize", b"CACHE-v1|tactics")]
    assert cache.read_bytes() == b"CACHE-v1|tactics"
    assert result.info["timing_cache_loaded"] is True


def test_timing_cache_from_another_gpu_is_reset(tmp_path: Path, fake: Any) -> None:
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"OTHERGPU")
    result = _build(tmp_path, fake, timing_cache=cache)
    assert [c[1] for c in fake._fake.named("create_timing_cache")] == [b"OTHERGPU", b""]
    assert cache.read_bytes() == b"|tactics"
    assert result.info["timing_cache_loaded"] is False


def test_no_timing_cache_when_not_requested(tmp_path: Path, fake: Any) -> None:
    _build(tmp_path, fake)
    assert not fake._fake.named("create_timing_cache")


def test_parser_errors_become_build_failed(tmp_path: Path, fake: Any) -> None:
    fake._fake.parse_errors = ["Unsupported operator: FancyOp", "Assertion failed: axis"]
    with pytest.raises(BuildFailed) as err:
        _build(tmp_path, fake)
    text = str(err.value)
    assert "Unsupported operator: FancyOp" in text and "Assertion failed: axis" in text
    assert err.value.fix and err.value.path == str(tmp_path / "model.onnx")
    assert not (tmp_path / "artifact" / "engine.plan").exists()


def test_build_failure_out_of_memory(tmp_path: Path, fake: Any) -> None:
    fake._fake.build_error = (
        "Requested amount of GPU memory (1073741824 bytes) could not be allocated"
    )
    with pytest.raises(BuildFailed) as err:
        _build(tmp_path, fake, timing_cache=tmp_path / "t.cache")
    assert err.value.out_of_memory and err.value.workspace_mib == 256
    assert "workspace_mib" in (err.value.fix or "")
    assert not (tmp_path / "t.cache").exists()


def test_dynamic_input_without_shapes(tmp_path: Path, fake: Any) -> None:
    with pytest.raises(BuildFailed, match="no min/opt/max"):
        _build(tmp_path, fake, shapes={})


def test_shapes_for_unknown_input(tmp_path: Path, fake: Any) -> None:
    shapes = {**SHAPES, "nope": InputShapes((1,), (1,), (1,))}
    with pytest.raises(BuildFailed, match="does not have"):
        _build(tmp_path, fake, shapes=shapes)


def test_missing_onnx_file(tmp_path: Path, fake: Any) -> None:
    with pytest.raises(BuildFailed, match="not found"):
        trt_backend.BACKEND.build(build_request(tmp_path))


# --------------------------------------------------------------------------- runner and inspect


def test_runner_round_trip_through_device_buffers(tmp_path: Path, fake: Any) -> None:
    result = _build(tmp_path, fake)
    cuda = FakeCuda(fake._fake.memory)
    runner = trt_runner.TrtRunner(tmp_path / "artifact", result.main_file, cuda=cuda)
    rng = np.random.default_rng(0)
    with runner:
        assert [s.name for s in runner.inputs] == ["images"]
        for batch in (2, 8, 1):
            x = rng.standard_normal((batch, 3, 4, 4)).astype(np.float32)
            out = runner.infer({"images": x})
            np.testing.assert_array_equal(out["scores"], np.maximum(x, 0))
        with pytest.raises(ValueError, match="optimization profile"):
            runner.infer({"images": np.zeros((9, 3, 4, 4), np.float32)})
        with pytest.raises(ValueError, match="missing"):
            runner.infer({})
    assert not cuda.live  # every device buffer freed on deactivate
    assert ("set_input_shape", "images", (2, 3, 4, 4)) in fake._fake.calls
    assert fake._fake.named("execute_async_v3")


def test_runner_binds_a_device_tensor_without_a_copy(tmp_path: Path, fake: Any) -> None:
    # The GPU preprocessor writes the batch into device memory on the runner's stream; the
    # runner binds that address as the input: no host staging, no host→device copy.
    result = _build(tmp_path, fake)
    cuda = FakeCuda(fake._fake.memory)
    x = np.linspace(-2, 2, 2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    with trt_runner.TrtRunner(tmp_path / "artifact", result.main_file, cuda=cuda) as runner:
        assert runner.accepts_device_inputs and runner.stream is not None
        dev = cuda.DeviceBuffer(x.nbytes)
        fake._fake.memory.block(dev.ptr)[: x.nbytes] = x.tobytes()
        calls_before = len(cuda.calls)
        out = runner.infer({"images": DeviceTensor(dev.ptr, x.shape)})
        np.testing.assert_array_equal(out["scores"], np.maximum(x, 0))
        new_calls = cuda.calls[calls_before:]
        assert not [c for c in new_calls if c[0] == "htod"], new_calls
        assert ("set_tensor_address", "images", dev.ptr) in fake._fake.calls
        with pytest.raises(ValueError, match="float16"):
            runner.infer({"images": DeviceTensor(dev.ptr, x.shape, "float16")})
        with pytest.raises(ValueError, match="optimization profile"):
            runner.infer({"images": DeviceTensor(dev.ptr, (9, 3, 4, 4))})
        dev.close()


def test_runner_bindings_fallback_on_old_tensorrt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = make_fake_tensorrt("8.6")
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    result = _build(tmp_path, module)
    del module.ICudaEngine.num_io_tensors  # as in TensorRT < 8.5: bindings only
    assert trt_plan.detect_capabilities(module).io_tensors_api is False
    with trt_runner.TrtRunner(
        tmp_path / "artifact", result.main_file, cuda=FakeCuda(module._fake.memory)
    ) as r:
        x = np.linspace(-1, 1, 48, dtype=np.float32).reshape(1, 3, 4, 4)
        np.testing.assert_array_equal(r.infer({"images": x})["scores"], np.maximum(x, 0))
    assert module._fake.named("execute_async_v2")


def test_runner_rejects_engine_of_another_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt("10.3"))
    result = _build(tmp_path, sys.modules["tensorrt"])
    other = make_fake_tensorrt("11.0")
    monkeypatch.setitem(sys.modules, "tensorrt", other)
    runner = trt_runner.TrtRunner(
        tmp_path / "artifact", result.main_file, cuda=FakeCuda(other._fake.memory)
    )
    with pytest.raises(ArtifactError, match="rebuild"):
        runner.activate()
    with pytest.raises(ArtifactError, match="missing"):
        trt_runner.TrtRunner(tmp_path, "nope.plan", cuda=FakeCuda(other._fake.memory)).activate()


def test_runner_sets_the_dla_core_before_deserializing(
    tmp_path: Path, fake: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _build(tmp_path, fake, _dla_model(fake), dla_core=1)
    rec = fake._fake
    monkeypatch.setattr(trt_runner, "CUDA", FakeCuda(rec.memory))
    start = len(rec.calls)
    with trt_backend.BACKEND.runner(tmp_path / "artifact", result.main_file, dla_core=1):
        pass
    calls = [c[0] for c in rec.calls[start:]]
    assert ("runtime.DLA_core", 1) in rec.calls[start:]
    assert calls.index("runtime.DLA_core") < calls.index("deserialize_cuda_engine")
    start = len(rec.calls)
    with trt_runner.TrtRunner(tmp_path / "artifact", result.main_file, cuda=FakeCuda(rec.memory)):
        pass
    assert not [c for c in rec.calls[start:] if c[0] == "runtime.DLA_core"]  # GPU: untouched


def test_summarize_layer_times() -> None:
    rows = summarize_layer_times(
        [("a", "Conv", 100.0), ("b", "Relu", 300.0), ("a", "Conv", 100.0), ("b", "Relu", 300.0)]
    )
    assert rows == [
        {"name": "b", "op_type": "Relu", "total_us": 600.0, "calls": 2, "avg_ms": 0.3,
         "percent": 75.0},
        {"name": "a", "op_type": "Conv", "total_us": 200.0, "calls": 2, "avg_ms": 0.1,
         "percent": 25.0},
    ]  # fmt: skip
    assert summarize_layer_times([]) == []


def test_profile_layers_aggregates_the_iprofiler_reports(
    tmp_path: Path, fake: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    onnx_relu_model(tmp_path / "model.onnx", layers=2)
    result = trt_backend.BACKEND.build(build_request(tmp_path))
    rec = fake._fake
    cuda = FakeCuda(rec.memory)
    monkeypatch.setattr(trt_runner, "CUDA", cuda)  # what activate() uses
    feeds = {"images": np.ones((2, 3, 4, 4), np.float32)}
    layers = trt_backend.BACKEND.profile_layers(
        tmp_path / "artifact", result.main_file, feeds, iterations=3
    )
    assert layers == [
        {"name": "relu_1", "op_type": "Relu", "total_us": 1500.0, "calls": 3, "avg_ms": 0.5,
         "percent": 66.67},
        {"name": "relu", "op_type": "Relu", "total_us": 750.0, "calls": 3, "avg_ms": 0.25,
         "percent": 33.33},
    ]  # fmt: skip
    assert rec.named("context.profiler") == [("context.profiler", "CollectingProfiler")]
    assert not rec.named("enqueue_emits_profile")  # the default (True) is kept
    assert len(rec.named("execute_async_v3")) == 4  # one warm-up, not counted, then 3
    assert not cuda.live


def test_inspect_lists_layers_with_precision(tmp_path: Path, fake: Any) -> None:
    result = _build(tmp_path, fake, precision="int8")
    layers = trt_backend.BACKEND.inspect(tmp_path / "artifact", result.main_file)
    expected = "fp32" if _gen(fake).startswith("11.") else "int8"
    assert [(x["name"], x["type"], x["precision"]) for x in layers] == [("relu", "Relu", expected)]
    assert fake._fake.named("get_engine_information") == [("get_engine_information", "JSON")]


def test_layers_from_inspector_json_formats() -> None:
    old = {
        "Layers": [
            {
                "Name": "conv1 + relu1",
                "LayerType": "CaskConvolution",
                "Inputs": [
                    {
                        "Name": "x",
                        "Dimensions": [1, 3],
                        "Format/Datatype": "Channel major FP16 format where channel % 8 == 0",
                    }
                ],
                "Outputs": [{"Name": "y", "Dimensions": [1, 8], "Format/Datatype": "Int8"}],
                "TacticName": "sm87_xmma",
            }
        ],
        "Bindings": ["x", "y"],
    }
    new = {
        "Layers": [
            {
                "Name": "q",
                "LayerType": "Scale",
                "Inputs": [
                    {"Name": "x", "Dimensions": [1], "Format": "Row major", "DataType": "Float"}
                ],
                "Outputs": [
                    {"Name": "y", "Dimensions": [1], "Format": "Row major", "DataType": "Int8"}
                ],
            }
        ],
        "I/O Tensors": [{"Name": "x"}],
    }
    (a,) = trt_inspect.layers_from_inspector_json(json.dumps(old))
    assert (a["name"], a["type"], a["precision"], a["tactic"]) == (
        "conv1 + relu1",
        "CaskConvolution",
        "fp16",
        "sm87_xmma",
    )
    assert a["outputs"][0]["precision"] == "int8"
    (b,) = trt_inspect.layers_from_inspector_json(json.dumps(new))
    assert b["precision"] == "fp32" and b["outputs"][0]["precision"] == "int8"
    names_only = trt_inspect.layers_from_inspector_json(json.dumps({"Layers": ["a", "b"]}))
    assert [(x["name"], x["precision"]) for x in names_only] == [("a", "unknown"), ("b", "unknown")]
