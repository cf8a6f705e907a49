"""The fake ``tensorrt`` checked against tensorrt-stubs (names and parameter names), and one
real TensorRT build and run where TensorRT is installed."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
from pathlib import Path

import numpy as np
import pytest

from agent.backends.base import BuildRequest, InputShapes
from agent.backends.tensorrt import backend as trt_backend
from agent.backends.tensorrt import loader as trt_loader
from agent.core.errors import BackendUnavailable
from tests.fakes.tensorrt import (
    ALL_GENERATIONS,
    make_fake_tensorrt,
)

# --------------------------------------------------------------------------- the fake vs the stubs

# Names in the fake that tensorrt-stubs 10.13 lacks, on purpose: the 8.6-only API that TensorRT 10
# removed, and helpers the fake uses internally.
_NOT_IN_STUBS_10 = {
    "Builder": {"build_engine", "max_batch_size"},
    "ICudaEngine": {"num_bindings", "binding_is_input", "get_binding_name", "get_binding_shape",
                    "get_binding_dtype", "max_batch_size", "profile_for", "get_profile_shape"},
    "IExecutionContext": {"set_binding_shape", "get_binding_shape", "execute_async_v2"},
    "IBuilderConfig": {"max_workspace_size"},
    "INetworkDefinition": {"strongly_typed"},
}  # fmt: skip


FAKE_CLASSES = (
    "Builder", "IBuilderConfig", "INetworkDefinition", "ITensor", "OnnxParser", "ParserError",
    "IOptimizationProfile", "ITimingCache", "Runtime", "ICudaEngine", "IExecutionContext",
    "EngineInspector", "ILogger", "IProfiler", "ILayer", "IOutputAllocator",
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


@pytest.mark.parametrize("gen", ALL_GENERATIONS)
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


#: removed in TensorRT 11.0 ("Removed Python APIs and Replacements", NVIDIA's 10.x → 11.x
#: migration guide; NetworkDefinitionCreationFlag from pyCore.cpp at tag v11.1), as (owner, name)
_REMOVED_IN_11 = (
    ("BuilderFlag", "FP16"),
    ("BuilderFlag", "INT8"),
    ("BuilderFlag", "OBEY_PRECISION_CONSTRAINTS"),
    ("Builder", "platform_has_fast_fp16"),
    ("IBuilderConfig", "int8_calibrator"),
    ("NetworkDefinitionCreationFlag", "EXPLICIT_BATCH"),
)


@pytest.mark.parametrize("gen", ALL_GENERATIONS)
def test_fake_has_what_each_release_has(gen: str) -> None:
    """Removed names are absent from the 11.x fakes and present before; the creation flags carry
    each release's bit (STRONGLY_TYPED moved from bit 1 to bit 0 in 11.0, NvInfer.h)."""
    module = make_fake_tensorrt(gen)
    eleven = gen.startswith("11.")
    present = {
        (owner, name) for owner, name in _REMOVED_IN_11 if hasattr(getattr(module, owner), name)
    }
    if eleven:
        assert not present
    else:  # the fake models int8_calibrator only on 8.6 (the agent never reads it)
        assert present >= set(_REMOVED_IN_11) - {("IBuilderConfig", "int8_calibrator")}
    ndcf = module.NetworkDefinitionCreationFlag
    if gen != "8.6":
        assert int(ndcf.STRONGLY_TYPED) == (0 if eleven else 1)
    plugins = hasattr(ndcf, "PREFER_JIT_PYTHON_PLUGINS")
    assert plugins is (gen not in ("8.6", "10.3"))


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
        trt_loader.load_trt()
    assert err.value.fix == trt_loader.INSTALL_FIX


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
    result = trt_backend.BACKEND.build(request)
    assert (tmp_path / "timing.cache").stat().st_size > 0
    x = np.random.default_rng(2).standard_normal((3, 16)).astype(np.float32)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    expected = np.asarray(session.run(None, {"x": x})[0])
    with trt_backend.BACKEND.runner(request.out_dir, result.main_file) as runner:
        got = runner.infer({"x": x})["y"]
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)
    assert trt_backend.BACKEND.inspect(request.out_dir, result.main_file)
