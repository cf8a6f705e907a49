"""TensorRT backend: the pure build plan, the build/run/inspect calls per API generation (8.6,
10.3, 11.0) against a recording fake ``tensorrt``, and one real build where TensorRT exists."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.backends import tensorrt as trtb
from agent.backends.base import (
    BuildRequest,
    DeviceTensor,
    InputShapes,
    get_backend,
    summarize_layer_times,
)
from agent.core.errors import ArtifactError, BackendUnavailable, BuildFailed
from tests.fakes.fake_tensorrt import (
    GENERATIONS,
    FakeCuda,
    make_fake_tensorrt,
    make_stub_namespace,
    onnx_relu_model,
)

MIB = 1024 * 1024
SHAPES = {"images": InputShapes((1, 3, 4, 4), (4, 3, 4, 4), (8, 3, 4, 4))}
CAPS = {
    "8.6": trtb.Capabilities(
        version="8.6.1.6",
        explicit_batch_flag_needed=True,
        strongly_typed_available=False,
        int8_fp16_flags=True,
        io_tensors_api=True,
        bindings_api=True,
    ),
    "10.3": trtb.Capabilities(
        version="10.3.0.30",
        explicit_batch_flag_needed=False,
        strongly_typed_available=True,
        int8_fp16_flags=True,
        io_tensors_api=True,
        bindings_api=False,
    ),
    "11.0": trtb.Capabilities(
        version="11.0.0.11",
        explicit_batch_flag_needed=False,
        strongly_typed_available=True,
        int8_fp16_flags=False,
        io_tensors_api=True,
        bindings_api=False,
    ),
}
EXPECTED_FLAGS = {
    # generation: (network flags, builder flags for int8, for fp16)
    "8.6": (("EXPLICIT_BATCH",), ("INT8", "FP16"), ("FP16",)),
    "10.3": ((), ("INT8", "FP16"), ("FP16",)),
    "11.0": (("STRONGLY_TYPED",), (), ()),
}


def _request(tmp_path: Path, **overrides: Any) -> BuildRequest:
    fields: dict[str, Any] = {
        "onnx_path": tmp_path / "model.onnx",
        "out_dir": tmp_path / "artifact",
        "precision": "int8",
        "shapes": SHAPES,
        "workspace_mib": 256,
        "optimization_level": 2,
        "timing_cache": None,
    }
    fields.update(overrides)
    return BuildRequest(**fields)


# --------------------------------------------------------------------------- plan_build (no module)


@pytest.mark.parametrize("gen", GENERATIONS)
@pytest.mark.parametrize("precision", ["int8", "fp16", "fp32"])
def test_plan_precision_flags_per_generation(tmp_path: Path, gen: str, precision: str) -> None:
    plan = trtb.plan_build(_request(tmp_path, precision=precision), CAPS[gen])
    network_flags, int8_flags, fp16_flags = EXPECTED_FLAGS[gen]
    expected = {"int8": int8_flags, "fp16": fp16_flags, "fp32": ()}[precision]
    assert plan.network_flags == network_flags
    assert plan.builder_flags == expected
    assert plan.strongly_typed is (gen == "11.0")
    if gen == "11.0" and precision == "fp16":
        assert any("fp16 ONNX" in note for note in plan.notes)


def test_plan_limits_profile_and_level(tmp_path: Path) -> None:
    cache = tmp_path / "cache.bin"
    plan = trtb.plan_build(_request(tmp_path, timing_cache=cache), CAPS["10.3"])
    assert plan.workspace_bytes == 256 * MIB
    assert plan.optimization_level == 2
    assert dict(plan.profile) == SHAPES
    assert plan.timing_cache == cache
    assert plan.device_type == "GPU" and plan.dla_core is None
    assert "GPU_FALLBACK" not in plan.builder_flags
    doc = plan.to_json()
    assert doc["profile"]["images"] == {
        "min": [1, 3, 4, 4],
        "opt": [4, 3, 4, 4],
        "max": [8, 3, 4, 4],
    }
    json.dumps(doc)  # serialisable for BuildResult.info


def test_plan_static_shapes_pins_profile_to_opt(tmp_path: Path) -> None:
    plan = trtb.plan_build(_request(tmp_path, static_shapes=True), CAPS["10.3"])
    assert plan.profile["images"] == InputShapes((4, 3, 4, 4), (4, 3, 4, 4), (4, 3, 4, 4))


@pytest.mark.parametrize("gen", GENERATIONS)
def test_plan_dla_with_and_without_gpu_fallback(tmp_path: Path, gen: str) -> None:
    plan = trtb.plan_build(_request(tmp_path, dla_core=1), CAPS[gen])
    assert plan.device_type == "DLA" and plan.dla_core == 1
    assert "GPU_FALLBACK" in plan.builder_flags
    plan = trtb.plan_build(_request(tmp_path, dla_core=0, gpu_fallback=False), CAPS[gen])
    assert plan.device_type == "DLA" and plan.dla_core == 0
    assert "GPU_FALLBACK" not in plan.builder_flags


def test_plan_dla_fp32_is_refused_with_a_fix(tmp_path: Path) -> None:
    with pytest.raises(BuildFailed, match="DLA runs only INT8 and FP16") as err:
        trtb.plan_build(_request(tmp_path, precision="fp32", dla_core=0), CAPS["10.3"])
    assert err.value.fix and "int8 or fp16" in err.value.fix


@pytest.mark.parametrize(
    "shapes",
    [
        {"images": InputShapes((8, 3, 4, 4), (4, 3, 4, 4), (1, 3, 4, 4))},
        {"images": InputShapes((1, 3, 4), (4, 3, 4, 4), (8, 3, 4, 4))},
        {"images": InputShapes((0, 3, 4, 4), (4, 3, 4, 4), (8, 3, 4, 4))},
    ],
)
def test_plan_rejects_bad_profile_shapes(tmp_path: Path, shapes: dict[str, InputShapes]) -> None:
    with pytest.raises(BuildFailed):
        trtb.plan_build(_request(tmp_path, shapes=shapes), CAPS["10.3"])


def test_plan_rejects_bad_optimization_level(tmp_path: Path) -> None:
    with pytest.raises(BuildFailed, match=r"outside 0\.\.5"):
        trtb.plan_build(_request(tmp_path, optimization_level=7), CAPS["10.3"])


def test_plan_without_optional_apis(tmp_path: Path) -> None:
    caps = trtb.Capabilities(builder_optimization_level=False, timing_cache=False)
    plan = trtb.plan_build(_request(tmp_path, timing_cache=tmp_path / "c"), caps)
    assert plan.optimization_level is None and plan.timing_cache is None
    assert len(plan.notes) == 2


# --------------------------------------------------------------------------- capabilities


@pytest.mark.parametrize("gen", GENERATIONS)
def test_capabilities_detected_from_the_module(gen: str) -> None:
    caps = trtb.detect_capabilities(make_fake_tensorrt(gen))
    assert caps == CAPS[gen]


def test_stub_namespace_is_not_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", make_stub_namespace())
    with pytest.raises(BackendUnavailable, match="no Builder") as err:
        trtb.load_trt()
    assert err.value.fix == trtb.INSTALL_FIX
    assert "sudo apt install python3-libnvinfer" in str(err.value)
    assert "--system-site-packages" in str(err.value)
    ok, why = trtb.BACKEND.available()
    assert not ok and "python3-libnvinfer" in why
    with pytest.raises(BackendUnavailable):
        get_backend("tensorrt")


def test_missing_module_reports_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail
    with pytest.raises(BackendUnavailable, match="cannot import tensorrt") as err:
        trtb.load_trt()
    assert err.value.fix == trtb.INSTALL_FIX


def test_get_backend_with_fake(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt("10.3"))
    backend = get_backend("tensorrt")
    assert backend is trtb.BACKEND and backend.name == "tensorrt"
    assert backend.version() == "10.3.0.30"
    assert backend.available() == (True, "TensorRT 10.3.0.30")
    assert backend.precisions == ("int8", "fp16", "fp32")


# --------------------------------------------------------------------------- build with the fake


@pytest.fixture(params=GENERATIONS)
def fake(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    module = make_fake_tensorrt(request.param)
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    return module


def _gen(fake: Any) -> str:
    return fake._fake.version


def _build(tmp_path: Path, fake: Any, **overrides: Any) -> Any:
    onnx_relu_model(tmp_path / "model.onnx")
    progress: list[tuple[str, float, str]] = []
    result = trtb.BACKEND.build(
        _request(tmp_path, **overrides), lambda s, f, m: progress.append((s, f, m))
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
    _build(tmp_path, fake, precision="fp16")
    assert tuple(f for _, f in fake._fake.named("set_flag")) == fp16_flags


def test_build_dla_core_and_gpu_fallback(tmp_path: Path, fake: Any) -> None:
    rec = fake._fake
    result = _build(tmp_path, fake, dla_core=1)
    assert rec.named("DLA_core") == [("DLA_core", 1)]
    assert rec.named("default_device_type") == [("default_device_type", "DLA")]
    assert "GPU_FALLBACK" in rec.configs[0].flags_set
    assert result.info["plan"]["device_type"] == "DLA"


def test_build_dla_without_gpu_fallback(tmp_path: Path, fake: Any) -> None:
    _build(tmp_path, fake, dla_core=0, gpu_fallback=False)
    assert fake._fake.named("DLA_core") == [("DLA_core", 0)]
    assert "GPU_FALLBACK" not in fake._fake.configs[0].flags_set


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
        trtb.BACKEND.build(_request(tmp_path))


# --------------------------------------------------------------------------- runner and inspect


def test_runner_round_trip_through_device_buffers(tmp_path: Path, fake: Any) -> None:
    result = _build(tmp_path, fake)
    cuda = FakeCuda(fake._fake.memory)
    runner = trtb.TrtRunner(tmp_path / "artifact", result.main_file, cuda=cuda)
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
    with trtb.TrtRunner(tmp_path / "artifact", result.main_file, cuda=cuda) as runner:
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
    assert trtb.detect_capabilities(module).io_tensors_api is False
    with trtb.TrtRunner(
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
    runner = trtb.TrtRunner(
        tmp_path / "artifact", result.main_file, cuda=FakeCuda(other._fake.memory)
    )
    with pytest.raises(ArtifactError, match="rebuild"):
        runner.activate()
    with pytest.raises(ArtifactError, match="missing"):
        trtb.TrtRunner(tmp_path, "nope.plan", cuda=FakeCuda(other._fake.memory)).activate()


def test_runner_sets_the_dla_core_before_deserializing(
    tmp_path: Path, fake: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _build(tmp_path, fake, dla_core=1)
    rec = fake._fake
    monkeypatch.setitem(sys.modules, "agent.backends.cuda", FakeCuda(rec.memory))
    start = len(rec.calls)
    with trtb.BACKEND.runner(tmp_path / "artifact", result.main_file, dla_core=1):
        pass
    calls = [c[0] for c in rec.calls[start:]]
    assert ("runtime.DLA_core", 1) in rec.calls[start:]
    assert calls.index("runtime.DLA_core") < calls.index("deserialize_cuda_engine")
    start = len(rec.calls)
    with trtb.TrtRunner(tmp_path / "artifact", result.main_file, cuda=FakeCuda(rec.memory)):
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
    result = trtb.BACKEND.build(_request(tmp_path))
    rec = fake._fake
    cuda = FakeCuda(rec.memory)
    monkeypatch.setitem(sys.modules, "agent.backends.cuda", cuda)  # what activate() imports
    feeds = {"images": np.ones((2, 3, 4, 4), np.float32)}
    layers = trtb.BACKEND.profile_layers(
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
    layers = trtb.BACKEND.inspect(tmp_path / "artifact", result.main_file)
    expected = "fp32" if _gen(fake) == "11.0" else "int8"
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
    (a,) = trtb.layers_from_inspector_json(json.dumps(old))
    assert (a["name"], a["type"], a["precision"], a["tactic"]) == (
        "conv1 + relu1",
        "CaskConvolution",
        "fp16",
        "sm87_xmma",
    )
    assert a["outputs"][0]["precision"] == "int8"
    (b,) = trtb.layers_from_inspector_json(json.dumps(new))
    assert b["precision"] == "fp32" and b["outputs"][0]["precision"] == "int8"
    names_only = trtb.layers_from_inspector_json(json.dumps({"Layers": ["a", "b"]}))
    assert [(x["name"], x["precision"]) for x in names_only] == [("a", "unknown"), ("b", "unknown")]


# --------------------------------------------------------------------------- the fake vs the stubs

# Names in the fake that tensorrt-stubs 10.13 lacks, on purpose: the 8.6-only API that TensorRT 10
# removed, and helpers the fake uses internally.
_NOT_IN_STUBS_10 = {
    "Builder": {"build_engine", "max_batch_size"},
    "ICudaEngine": {"num_bindings", "binding_is_input", "get_binding_name", "get_binding_shape",
                    "get_binding_dtype", "max_batch_size", "profile_for"},
    "IExecutionContext": {"set_binding_shape", "get_binding_shape", "execute_async_v2"},
    "IBuilderConfig": {"max_workspace_size"},
    "INetworkDefinition": {"strongly_typed"},
}  # fmt: skip


FAKE_CLASSES = (
    "Builder", "IBuilderConfig", "INetworkDefinition", "ITensor", "OnnxParser", "ParserError",
    "IOptimizationProfile", "ITimingCache", "Runtime", "ICudaEngine", "IExecutionContext",
    "EngineInspector", "ILogger", "IProfiler",
)  # fmt: skip
FAKE_ENUMS = (
    "BuilderFlag", "NetworkDefinitionCreationFlag", "MemoryPoolType", "DeviceType",
    "ProfilingVerbosity", "LayerInformationFormat", "TensorIOMode", "DataType",
)  # fmt: skip


def _param_names(arglist: str) -> list[str]:
    names: list[str] = []
    depth, current = 0, ""
    for ch in arglist + ",":
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            name = re.split(r"[:=]", current, maxsplit=1)[0].strip()
            if name and not name.startswith("*"):
                names.append(name)
            current = ""
        else:
            current += ch
    return names[1:]  # drop self


def _stub_classes() -> dict[str, dict[str, list[str]]]:
    """Top-level classes of tensorrt-stubs with their members and parameter names. Read with
    regular expressions: the generated .pyi is not valid Python for ast (a non-default argument
    follows a default one in add_scale_nd)."""
    spec = importlib.util.find_spec("tensorrt_bindings")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tensorrt-stubs is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "tensorrt.pyi"
    classes: dict[str, dict[str, list[str]]] = {}
    members: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if m := re.match(r"^class (\w+)", line):
            members = classes.setdefault(m.group(1), {})
        elif m := re.match(r"^    def (\w+)\((.*)\)", line):
            members.setdefault(m.group(1), _param_names(m.group(2)))
        elif m := re.match(r"^    (\w+): ", line):
            members.setdefault(m.group(1), [])
    return classes


@pytest.mark.parametrize("gen", GENERATIONS)
def test_fake_names_and_parameters_match_tensorrt_stubs(gen: str) -> None:
    stubs = _stub_classes()
    module = make_fake_tensorrt(gen)
    checked = 0
    for cls_name in FAKE_CLASSES:
        stub = stubs[cls_name]
        for name, value in vars(getattr(module, cls_name)).items():
            if name.startswith("_") and (name != "__init__" or name not in stub):
                continue  # private, or a class TensorRT constructs itself (no stub __init__)
            if name in _NOT_IN_STUBS_10.get(cls_name, set()):
                continue
            if name in ("ERROR", "WARNING", "INFO", "VERBOSE", "INTERNAL_ERROR", "Severity"):
                continue
            assert name in stub, f"{cls_name}.{name} is not in tensorrt-stubs"
            if inspect.isfunction(value) and stub[name]:
                params = list(inspect.signature(value).parameters)[1:]
                assert params == stub[name][: len(params)], f"{cls_name}.{name}{params}"
            checked += 1
    assert checked > 40
    for enum_name in FAKE_ENUMS:
        for member in getattr(module, enum_name).__members__:
            assert member in stubs[enum_name], f"{enum_name}.{member}"


# --------------------------------------------------------------------------- real TensorRT

REAL_SKIP = "TensorRT is not installed (import tensorrt failed or is the stubs package)"


def _real_trt_available() -> bool:
    try:
        module = importlib.import_module("tensorrt")
    except ImportError:
        return False
    return hasattr(module, "Builder") and not hasattr(module, "_fake")


@pytest.mark.skipif(_real_trt_available(), reason="a real TensorRT is installed here")
def test_load_trt_here_reports_the_fix() -> None:
    with pytest.raises(BackendUnavailable) as err:
        trtb.load_trt()
    assert err.value.fix == trtb.INSTALL_FIX


def _matmul_relu_model(path: Path) -> Path:
    from onnx import TensorProto, helper, numpy_helper, save

    w = np.random.default_rng(1).standard_normal((16, 8)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "mlp",
        [x],
        [y],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.tensorrt
@pytest.mark.skipif(not _real_trt_available(), reason=REAL_SKIP)
def test_real_tensorrt_build_and_infer_matches_onnxruntime(tmp_path: Path) -> None:
    import onnxruntime as ort

    model = _matmul_relu_model(tmp_path / "mlp.onnx")
    request = BuildRequest(
        onnx_path=model,
        out_dir=tmp_path / "artifact",
        precision="fp32",
        shapes={"x": InputShapes((1, 16), (4, 16), (8, 16))},
        workspace_mib=64,
        optimization_level=1,
        timing_cache=tmp_path / "timing.cache",
    )
    result = trtb.BACKEND.build(request)
    assert (tmp_path / "timing.cache").stat().st_size > 0
    x = np.random.default_rng(2).standard_normal((3, 16)).astype(np.float32)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    expected = np.asarray(session.run(None, {"x": x})[0])
    with trtb.BACKEND.runner(request.out_dir, result.main_file) as runner:
        got = runner.infer({"x": x})["y"]
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)
    assert trtb.BACKEND.inspect(request.out_dir, result.main_file)
