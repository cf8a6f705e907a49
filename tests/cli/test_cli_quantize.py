"""``edge-agent quantize``: the bundled detector quantized for an Orin profile (TensorRT recipe,
through ONNX Runtime's quantizer: no TensorRT here) is a valid Q/DQ ONNX with the structure
TensorRT's parser and fusions need; the CPU profile gets the ONNX Runtime recipe; bad input is
a user error with its exit code and leaves ``--out`` as it was (in process, real ONNX Runtime)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from agent.cli.main import main as cli_main
from agent.config.profiles.store import ProfileStore
from agent.engine.build.qdq_export import report_path, static_shapes
from tests.assets import DET_BUNDLE, DET_CALIB, PROFILES_DIR
from tests.fakes.tensorrt.onnx_rules import (
    FUSED_OPS,
    consumers_of,
    dequantize_input_errors,
    producer_map,
)

ORIN = "orin-nano-8gb"


def _quantize(out: Path, profile: str, *extra: str) -> tuple[int, str]:
    argv = ["quantize", str(DET_BUNDLE), "--profile", profile, "--profiles-dir", str(PROFILES_DIR)]
    argv += ["--calib", str(DET_CALIB), "--out", str(out), *extra]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = cli_main(argv)
    return code, stdout.getvalue()


@pytest.fixture(scope="module")
def orin(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], onnx.ModelProto]:
    """The detector quantized for Orin Nano 8 GB with --json: (summary, model)."""
    out = tmp_path_factory.mktemp("orin") / "det.qdq.onnx"
    code, stdout = _quantize(out, ORIN, "--json")
    assert code == 0
    return json.loads(stdout), onnx.load(str(out))


def test_json_summary_and_report_beside_the_model(
    orin: tuple[dict[str, Any], onnx.ModelProto],
) -> None:
    summary, _ = orin
    assert summary["recipe"] == "tensorrt" and summary["method"] == "entropy"  # the profile's
    assert summary["profile"] == ORIN and summary["calibration_frames"] == 64
    # TensorRT on the GPU keeps the dynamic batch; H x W are fixed by the bundle
    assert summary["static_shapes"] is False
    assert summary["peak_rss_mib"] > 0 and summary["seconds"] > 0
    assert 0 < len(summary["sensitivity_top"]) <= 10
    assert {"node", "op", "added_error"} <= set(summary["sensitivity_top"][0])
    assert summary["float_layers"] and all(f["reason"] for f in summary["float_layers"])
    path = Path(summary["path"])
    assert Path(summary["report_path"]) == report_path(path) == path.with_suffix(".json")
    on_disk = json.loads(report_path(path).read_text())
    assert on_disk["recipe"] == "tensorrt" and on_disk["float_layers"] == summary["float_layers"]
    assert not list(path.parent.glob(".tmp-quantize-*"))


def test_model_is_valid_onnx_that_trt_parses(orin: tuple[dict[str, Any], onnx.ModelProto]) -> None:
    _, model = orin
    onnx.checker.check_model(model, full_check=True)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    for major in (8, 10, 11):  # no INT32 bias (nor any non-INT8) into DequantizeLinear
        assert dequantize_input_errors(model.graph, major) == []


def test_conv_weights_are_per_channel_s8(orin: tuple[dict[str, Any], onnx.ModelProto]) -> None:
    _, model = orin
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = producer_map(model)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    quantized = [n for n in convs if producers.get(n.input[1], n).op_type == "DequantizeLinear"]
    assert len(quantized) == len(convs) > 0
    for node in quantized:
        dq = producers[node.input[1]]
        weight, scale = inits[dq.input[0]], inits[dq.input[1]]
        assert weight.dtype == np.int8, node.name
        assert next(a.i for a in dq.attribute if a.name == "axis") == 0, node.name
        assert scale.shape == (weight.shape[0],), node.name


def test_no_output_qdq_where_trt_fuses(orin: tuple[dict[str, Any], onnx.ModelProto]) -> None:
    """A fused layer's output feeds no QuantizeLinear, unless every layer behind that Q/DQ
    quantizes its own input (a residual Add, which TensorRT fuses into the layer)."""
    _, model = orin
    for node in model.graph.node:
        if node.op_type not in FUSED_OPS:
            continue
        for q in consumers_of(model, node.output[0]):
            if q.op_type != "QuantizeLinear":
                continue
            behind = [
                c
                for dq in consumers_of(model, q.output[0])
                for c in consumers_of(model, dq.output[0])
            ]
            assert behind and all(c.op_type == "Add" for c in behind), f"{node.name} -> {q.name}"


def test_residual_adds_have_qdq_on_both_inputs(
    orin: tuple[dict[str, Any], onnx.ModelProto],
) -> None:
    summary, model = orin
    floats = {f["node"] for f in summary["float_layers"]}
    inits = {t.name for t in model.graph.initializer}
    producers = producer_map(model)
    adds = [
        n
        for n in model.graph.node
        if n.op_type == "Add" and n.name not in floats and not inits & set(n.input)
    ]
    assert adds  # the detector's feature-pyramid merges
    for add in adds:
        for name in add.input:
            dq = producers[name]
            assert dq.op_type == "DequantizeLinear", add.name
            assert producers[dq.input[0]].op_type == "QuantizeLinear", add.name


def test_cpu_profile_gets_the_onnxruntime_recipe_and_text_summary(tmp_path: Path) -> None:
    out = tmp_path / "det.cpu.onnx"
    code, stdout = _quantize(out, "cpu", "--method", "minmax")
    assert code == 0
    assert "recipe:   onnxruntime, minmax calibration" in stdout
    assert "kept in float" in stdout and "peak RSS of quantization" in stdout
    report = json.loads(report_path(out).read_text())
    assert report["recipe"] == "onnxruntime" and report["static_shapes"] is True
    model = onnx.load(str(out))
    assert any(n.op_type == "DequantizeLinear" for n in model.graph.node)


def test_dla_needs_static_shapes() -> None:
    profile = ProfileStore(PROFILES_DIR).load("agx-orin-32gb")
    assert not static_shapes(profile)
    dla = profile.build.dla.model_copy(update={"enabled": True})
    build = profile.build.model_copy(update={"dla": dla})
    assert static_shapes(profile.model_copy(update={"build": build}))


@pytest.mark.parametrize(
    ("what", "expect"),
    [
        ("profile", "no-such-board"),
        ("bundle", "model.yaml"),
        ("calib", "calib"),
    ],
)
def test_bad_input_is_a_user_error_and_keeps_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], what: str, expect: str
) -> None:
    out = tmp_path / "det.qdq.onnx"
    out.write_bytes(b"previous")
    profile = "no-such-board" if what == "profile" else ORIN
    bundle = tmp_path / "missing" if what == "bundle" else DET_BUNDLE
    calib = tmp_path / "empty" if what == "calib" else DET_CALIB
    (tmp_path / "empty").mkdir()
    argv = ["quantize", str(bundle), "--profile", profile, "--profiles-dir", str(PROFILES_DIR)]
    code = cli_main([*argv, "--calib", str(calib), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "edge-agent: error:" in err and expect in err
    assert "Traceback" not in err
    assert out.read_bytes() == b"previous"
    assert not report_path(out).exists()
    assert not list(tmp_path.glob(".tmp-quantize-*"))
