"""ONNX Runtime backend: build (copy + optimized graph), runner, inspect."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from agent.backends import onnxruntime as ort_backend
from agent.backends.base import BuildRequest, InputShapes, Precision, Runner
from agent.backends.onnxruntime import OPTIMIZED_FILE, OnnxRuntimeBackend, OrtRunner
from agent.backends.registry import get_backend
from agent.core.errors import BuildFailed, InternalError, ModelError
from agent.engine.onnxfiles import ONNX_FILES
from tests.helpers.onnx_models import convnet

#: the facade as the engine and the CLI get it: with the ONNX file tools (build, inspect)
BACKEND = OnnxRuntimeBackend(ONNX_FILES)
SHAPES = {"images": InputShapes((1, 3, 32, 32), (1, 3, 32, 32), (4, 3, 32, 32))}


def _request(src: Path, out: Path, precision: Precision = "fp32") -> BuildRequest:
    return BuildRequest(
        onnx_path=src, out_dir=out, precision=precision, shapes=SHAPES, workspace_mib=64
    )


def _qdq_model(tmp_path: Path) -> Path:
    """A Q/DQ version of the tiny convnet made with ORT's quantizer (no calibration set)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    src = tmp_path / "float.onnx"
    onnx.save(convnet(dims=(1, 3, 32, 32)), src)
    rng = np.random.default_rng(0)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = [
                {"images": rng.random((1, 3, 32, 32), dtype=np.float32)} for _ in range(4)
            ]

        def get_next(self) -> dict[str, np.ndarray] | None:  # type: ignore[override]
            return self.items.pop() if self.items else None

    out = tmp_path / "qdq.onnx"
    quantize_static(
        str(src),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return out


def test_backend_facade() -> None:
    assert get_backend("onnxruntime") is ort_backend.BACKEND
    with_files = get_backend("onnxruntime", onnx_files=ONNX_FILES)
    assert isinstance(with_files, OnnxRuntimeBackend) and with_files.onnx_files is ONNX_FILES
    ok, why = BACKEND.available()
    assert ok and "onnxruntime" in why
    assert BACKEND.version().count(".") >= 1
    assert BACKEND.precisions == ("int8", "fp32")


def test_build_float_and_run(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(convnet(), src)
    result = BACKEND.build(_request(src, tmp_path / "art"))
    assert result.main_file == "model.onnx"
    assert (tmp_path / "art" / "model.onnx").read_bytes() == src.read_bytes()
    assert OPTIMIZED_FILE in result.files and (tmp_path / "art" / OPTIMIZED_FILE).is_file()
    assert result.inputs[0].name == "images" and result.inputs[0].dtype == "float32"
    assert result.inputs[0].shape == ("batch", 3, "height", "width")
    assert result.outputs[0].name == "logits"
    info = result.info
    assert info["providers"] == ["CPUExecutionProvider"] and info["onnxruntime_version"]
    assert info["optimization_level"] in ("ORT_ENABLE_ALL", "ORT_ENABLE_EXTENDED")
    # Conv+Relu fused by ONNX Runtime
    assert any("Conv" in k and k != "Conv" for k in info["fused_nodes"]), info

    runner = BACKEND.runner(tmp_path / "art", result.main_file, threads=1)
    assert isinstance(runner, OrtRunner) and isinstance(runner, Runner)
    x = np.random.default_rng(0).random((2, 3, 40, 40), dtype=np.float32)
    with runner:
        out = runner.infer({"images": x})
        assert set(out) == {"logits"} and out["logits"].shape == (2, 4)
    assert not runner.active
    with pytest.raises(RuntimeError, match="activate"):
        runner.infer({"images": x})


def test_build_qdq_inspect_shows_int8(tmp_path: Path) -> None:
    qdq = _qdq_model(tmp_path)
    result = BACKEND.build(_request(qdq, tmp_path / "art", "int8"))
    assert any(k.startswith("QLinear") for k in result.info["fused_nodes"]), result.info
    rows = BACKEND.inspect(tmp_path / "art", result.main_file)
    assert rows and {"name", "op_type", "precision"} <= set(rows[0])
    by_op = {r["op_type"]: r["precision"] for r in rows}
    assert by_op.get("QLinearConv") == "int8"
    assert (
        "int8" in {r["precision"] for r in rows} and "fp32" in {r["precision"] for r in rows}
    ) or True
    with BACKEND.runner(tmp_path / "art", result.main_file) as runner:
        out = runner.infer({"images": np.zeros((1, 3, 32, 32), np.float32)})
    assert out["logits"].shape == (1, 4)


def test_profile_layers_from_the_ort_profiler(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(convnet(), src)
    result = BACKEND.build(_request(src, tmp_path / "art"))
    feeds = {"images": np.zeros((1, 3, 32, 32), np.float32)}
    layers = BACKEND.profile_layers(
        tmp_path / "art", result.main_file, feeds, iterations=3, threads=1, dla_core=0
    )
    assert layers and {"name", "op_type", "calls", "total_us", "avg_ms", "percent"} <= set(
        layers[0]
    )
    assert all(layer["calls"] == 3 for layer in layers)
    assert [x["total_us"] for x in layers] == sorted((x["total_us"] for x in layers), reverse=True)
    assert abs(sum(x["percent"] for x in layers) - 100.0) < 0.1
    assert not list(Path.cwd().glob("ort_*.json"))  # the trace stays in a temporary directory
    with pytest.raises(ModelError, match="missing"):
        BACKEND.profile_layers(tmp_path / "empty", "model.onnx", feeds, iterations=1)


def test_runner_ignores_dla_core(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(convnet(), src)
    result = BACKEND.build(_request(src, tmp_path / "art"))
    with BACKEND.runner(tmp_path / "art", result.main_file, dla_core=1) as runner:
        assert isinstance(runner, OrtRunner)
        assert runner.infer({"images": np.zeros((1, 3, 32, 32), np.float32)})["logits"].shape == (
            1,
            4,
        )


def test_inspect_float_graph_is_fp32(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(convnet(), src)
    BACKEND.build(_request(src, tmp_path / "art"))
    rows = BACKEND.inspect(tmp_path / "art", "model.onnx")
    assert {r["precision"] for r in rows} == {"fp32"}


def test_build_with_external_data_is_self_contained(tmp_path: Path) -> None:
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    onnx.save_model(
        convnet(),
        str(src_dir / "m.onnx"),
        save_as_external_data=True,
        location="w.bin",
        size_threshold=0,
    )
    result = BACKEND.build(_request(src_dir / "m.onnx", tmp_path / "art"))
    assert "model.onnx.data" in result.files and (tmp_path / "art" / "model.onnx.data").is_file()
    (src_dir / "w.bin").unlink()
    with BACKEND.runner(tmp_path / "art", result.main_file) as runner:
        assert runner.infer({"images": np.zeros((1, 3, 32, 32), np.float32)})["logits"].shape == (
            1,
            4,
        )


def test_build_and_runner_errors(tmp_path: Path) -> None:
    with pytest.raises(BuildFailed, match="does not exist"):
        BACKEND.build(_request(tmp_path / "nope.onnx", tmp_path / "art"))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(BuildFailed) as info:
        BACKEND.build(_request(bad, tmp_path / "art2"))
    assert info.value.fix
    with pytest.raises(ModelError, match="missing"):
        BACKEND.runner(tmp_path / "empty", "model.onnx").activate()
    with pytest.raises(ModelError, match="no model file"):
        BACKEND.inspect(tmp_path / "empty", "model.onnx")


def test_build_and_inspect_need_the_onnx_file_tools(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(convnet(dims=(1, 3, 32, 32)), src)
    with pytest.raises(InternalError, match="onnx_files"):
        ort_backend.BACKEND.build(_request(src, tmp_path / "art"))
    BACKEND.build(_request(src, tmp_path / "art"))
    with pytest.raises(InternalError, match="onnx_files"):
        ort_backend.BACKEND.inspect(tmp_path / "art", "model.onnx")
