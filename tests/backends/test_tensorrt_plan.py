"""TensorRT backend, the pure side: capability detection per release (8.6 through 11.4.1),
the build plan (no TensorRT module needed), the checked import and the registry entry."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from agent.backends.base import InputShapes
from agent.backends.registry import get_backend
from agent.backends.tensorrt import backend as trt_backend
from agent.backends.tensorrt import loader as trt_loader
from agent.backends.tensorrt import plan as trt_plan
from agent.core.errors import BackendUnavailable, BuildFailed
from tests.fakes.tensorrt import (
    ALL_GENERATIONS,
    EXPECTED_FLAGS,
    GENERATIONS,
    SHAPES,
    build_request,
    make_fake_tensorrt,
    make_stub_namespace,
)

MIB = 1024 * 1024
_POOLS_10 = (*trt_plan.Capabilities.memory_pools, "TACTIC_SHARED_MEMORY")

CAPS = {
    "8.6": trt_plan.Capabilities(
        version="8.6.1.6",
        explicit_batch_flag_needed=True,
        strongly_typed_available=False,
        int8_fp16_flags=True,
        io_tensors_api=True,
        bindings_api=True,
    ),
    "10.3": trt_plan.Capabilities(
        version="10.3.0.30",
        memory_pools=(*trt_plan.Capabilities.memory_pools, "TACTIC_SHARED_MEMORY"),
        explicit_batch_flag_needed=False,
        strongly_typed_available=True,
        int8_fp16_flags=True,
        io_tensors_api=True,
        bindings_api=False,
    ),
    **{
        gen: trt_plan.Capabilities(
            version=version,
            memory_pools=_POOLS_10,
            explicit_batch_flag_needed=False,
            strongly_typed_available=True,
            int8_fp16_flags=gen.startswith("10."),
            io_tensors_api=True,
            bindings_api=False,
        )
        for gen, version in (
            ("10.13", "10.13.3.9"),
            ("10.16", "10.16.1.11"),
            ("11.0", "11.0.0.11"),
            ("11.4.0", "11.4.0"),
            ("11.4.1", "11.4.1"),
        )
    },
}


# --------------------------------------------------------------------------- plan_build (no module)


@pytest.mark.parametrize("gen", ALL_GENERATIONS)
@pytest.mark.parametrize("precision", ["int8", "fp16", "fp32"])
def test_plan_precision_flags_per_generation(tmp_path: Path, gen: str, precision: str) -> None:
    plan = trt_plan.plan_build(build_request(tmp_path, precision=precision), CAPS[gen])
    network_flags, int8_flags, fp16_flags = EXPECTED_FLAGS[gen]
    expected = {"int8": int8_flags, "fp16": fp16_flags, "fp32": ()}[precision]
    assert plan.network_flags == network_flags
    assert plan.builder_flags == expected
    assert plan.strongly_typed is gen.startswith("11.")
    if gen.startswith("11.") and precision == "fp16":
        assert any("AutoCast" in note for note in plan.notes)
    # BuilderFlag.FP16/INT8 are deprecated from 10.12 on: said where they are set
    deprecated = any("deprecated since 10.12" in note for note in plan.notes)
    assert deprecated is (gen in ("10.13", "10.16") and precision != "fp32")


def test_plan_limits_profile_and_level(tmp_path: Path) -> None:
    cache = tmp_path / "cache.bin"
    plan = trt_plan.plan_build(build_request(tmp_path, timing_cache=cache), CAPS["10.3"])
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
    plan = trt_plan.plan_build(build_request(tmp_path, static_shapes=True), CAPS["10.3"])
    assert plan.profile["images"] == InputShapes((4, 3, 4, 4), (4, 3, 4, 4), (4, 3, 4, 4))


@pytest.mark.parametrize("gen", GENERATIONS)
def test_plan_dla_with_and_without_gpu_fallback(tmp_path: Path, gen: str) -> None:
    plan = trt_plan.plan_build(build_request(tmp_path, dla_core=1), CAPS[gen])
    assert plan.device_type == "DLA" and plan.dla_core == 1
    assert "GPU_FALLBACK" in plan.builder_flags
    plan = trt_plan.plan_build(build_request(tmp_path, dla_core=0, gpu_fallback=False), CAPS[gen])
    assert plan.device_type == "DLA" and plan.dla_core == 0
    assert "GPU_FALLBACK" not in plan.builder_flags


@pytest.mark.parametrize("gen", GENERATIONS)
def test_plan_dla_pins_a_dynamic_profile_to_opt(tmp_path: Path, gen: str) -> None:
    opt = SHAPES["images"].opt
    plan = trt_plan.plan_build(build_request(tmp_path, dla_core=0), CAPS[gen])
    assert plan.profile["images"] == InputShapes(opt, opt, opt)
    assert [n for n in plan.notes if "DLA needs static shapes" in n]
    gpu = trt_plan.plan_build(build_request(tmp_path), CAPS[gen])
    assert gpu.profile["images"] == SHAPES["images"]  # the GPU keeps the dynamic range
    static = InputShapes(opt, opt, opt)
    plan = trt_plan.plan_build(
        build_request(tmp_path, dla_core=0, shapes={"images": static}), CAPS[gen]
    )
    assert plan.profile["images"] == static and not any("DLA needs" in n for n in plan.notes)


def test_plan_dla_fp32_is_refused_with_a_fix(tmp_path: Path) -> None:
    with pytest.raises(BuildFailed, match="DLA runs only INT8 and FP16") as err:
        trt_plan.plan_build(build_request(tmp_path, precision="fp32", dla_core=0), CAPS["10.3"])
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
        trt_plan.plan_build(build_request(tmp_path, shapes=shapes), CAPS["10.3"])


def test_plan_rejects_bad_optimization_level(tmp_path: Path) -> None:
    with pytest.raises(BuildFailed, match=r"outside 0\.\.5"):
        trt_plan.plan_build(build_request(tmp_path, optimization_level=7), CAPS["10.3"])


def test_plan_without_optional_apis(tmp_path: Path) -> None:
    caps = trt_plan.Capabilities(builder_optimization_level=False, timing_cache=False)
    plan = trt_plan.plan_build(build_request(tmp_path, timing_cache=tmp_path / "c"), caps)
    assert plan.optimization_level is None and plan.timing_cache is None
    assert len(plan.notes) == 2


# --------------------------------------------------------------------------- capabilities


@pytest.mark.parametrize("gen", ALL_GENERATIONS)
def test_capabilities_detected_from_the_module(gen: str) -> None:
    caps = trt_plan.detect_capabilities(make_fake_tensorrt(gen))
    assert caps == CAPS[gen]


def test_stub_namespace_is_not_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", make_stub_namespace())
    with pytest.raises(BackendUnavailable, match="no Builder") as err:
        trt_loader.load_trt()
    assert err.value.fix == trt_loader.INSTALL_FIX
    assert "sudo apt install python3-libnvinfer" in str(err.value)
    assert "--system-site-packages" in str(err.value)
    ok, why = trt_backend.BACKEND.available()
    assert not ok and "python3-libnvinfer" in why
    with pytest.raises(BackendUnavailable):
        get_backend("tensorrt")


def test_missing_module_reports_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail
    with pytest.raises(BackendUnavailable, match="cannot import tensorrt") as err:
        trt_loader.load_trt()
    assert err.value.fix == trt_loader.INSTALL_FIX


def test_get_backend_with_fake(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt("10.3"))
    backend = get_backend("tensorrt")
    assert backend is trt_backend.BACKEND and backend.name == "tensorrt"
    assert backend.version() == "10.3.0.30"
    assert backend.available() == (True, "TensorRT 10.3.0.30")
    assert backend.precisions == ("int8", "fp16", "fp32")
