"""The TensorRT recipe's Q/DQ graph has the structure TensorRT's ONNX parser and fusions need:
no INT32 into DequantizeLinear (bias stays float), per-channel S8 weights on the output-channel
axis, no Q/DQ on the outputs of the layers TensorRT fuses, Q/DQ on both inputs of residual Adds.
The fake parser applies the same DequantizeLinear rule as onnx-tensorrt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from agent.config.device import DeviceProfile
from agent.engine.bundle import load_bundle
from agent.engine.calibration import load_calibration_set
from agent.engine.prepare import prepare
from agent.engine.quantize.entry import quantize
from tests.assets import CALIB, MODELS
from tests.fakes.tensorrt.onnx_rules import (
    FUSED_OPS,
    consumers_of,
    dequantize_input_errors,
    producer_map,
)
from tests.helpers.engine_util import noise_frames
from tests.helpers.onnx_models import convnet, make_bundle


@pytest.fixture(scope="module")
def graphs(
    tmp_path_factory: pytest.TempPathFactory, cpu_profile: DeviceProfile
) -> dict[str, onnx.ModelProto]:
    """convnet (Conv-Relu-Conv-Relu-Add(residual)-GAP-Flatten-Gemm) quantized per recipe."""
    root = tmp_path_factory.mktemp("qdq")
    bundle = load_bundle(make_bundle(root, convnet()))
    prepared = prepare(bundle, cpu_profile, root / "work")
    calib = load_calibration_set(noise_frames(root / "calib", 12), bundle, (32, 32), 8, 4)
    out: dict[str, onnx.ModelProto] = {}
    for recipe in ("tensorrt", "onnxruntime"):
        q = quantize(
            prepared,
            calib,
            recipe=recipe,
            method="minmax",
            work_dir=root / recipe,
            cache_dir=root / "cache",
            auto_exclude=False,
        )
        out[recipe] = onnx.load(str(q.path))
    return out


def test_no_int32_into_dequantize_linear(graphs: dict[str, onnx.ModelProto]) -> None:
    model = graphs["tensorrt"]
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            assert inits[node.input[0]].data_type == onnx.TensorProto.INT8, node.name
    # the biases stay float initializers feeding the layer directly
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 2:
            assert inits[node.input[2]].data_type == onnx.TensorProto.FLOAT, node.name
    for major in (8, 10, 11):
        assert dequantize_input_errors(model.graph, major) == []


def test_the_fake_parser_rejects_the_int32_bias_ort_writes_by_default(
    graphs: dict[str, onnx.ModelProto],
) -> None:
    # the ONNX Runtime (CPU) recipe keeps ORT's default QuantizeBias: what TensorRT refuses
    # (and its U8 activations, which TensorRT does not take either)
    errors = [m for _, m in dequantize_input_errors(graphs["onnxruntime"].graph, 10)]
    assert all("only activation types allowed as input to this layer" in m for m in errors)
    # every Conv bias is an INT32 initializer behind a DequantizeLinear (names vary: bias
    # correction writes corrected biases under new names)
    int32 = {m.split(":")[0] for m in errors if m.endswith("is INT32)")}
    model = graphs["onnxruntime"]
    dq_of = {n.output[0]: n.name for n in model.graph.node if n.op_type == "DequantizeLinear"}
    bias_dqs = {
        dq_of[node.input[2]]
        for node in model.graph.node
        if node.op_type == "Conv" and len(node.input) > 2 and node.input[2] in dq_of
    }
    assert len(bias_dqs) >= 2 and bias_dqs <= int32


def test_weights_are_per_channel_s8_on_the_output_channel_axis(
    graphs: dict[str, onnx.ModelProto],
) -> None:
    model = graphs["tensorrt"]
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = producer_map(model)
    expected_axis = {"Conv": 0, "ConvTranspose": 1}
    weighted = [n for n in model.graph.node if n.op_type in FUSED_OPS]
    assert {n.op_type for n in weighted} == {"Conv", "Gemm"}
    for node in weighted:
        dq = producers[node.input[1]]
        assert dq.op_type == "DequantizeLinear", node.name
        weight, scale = inits[dq.input[0]], inits[dq.input[1]]
        assert weight.dtype == np.int8 and not inits[dq.input[2]].any()
        axis = next(a.i for a in dq.attribute if a.name == "axis")
        out_axis = expected_axis.get(node.op_type, 0)  # Gemm here has transB=1: [N, K]
        assert axis == out_axis and scale.shape == (weight.shape[out_axis],), node.name


def test_no_output_qdq_after_fused_layers(graphs: dict[str, onnx.ModelProto]) -> None:
    model = graphs["tensorrt"]
    for node in model.graph.node:
        if node.op_type in FUSED_OPS:
            for consumer in consumers_of(model, node.output[0]):
                assert consumer.op_type != "QuantizeLinear", f"{node.name} -> {consumer.name}"
    # Conv -> Relu stays adjacent (TensorRT fuses Conv+ReLU); the next layer's Q/DQ follows Relu
    names = {n.name: n for n in model.graph.node}
    for conv, relu in (("conv1", "relu1"), ("conv2", "relu2")):
        assert [c.name for c in consumers_of(model, names[conv].output[0])] == [relu]


def test_residual_add_has_qdq_on_both_inputs(graphs: dict[str, onnx.ModelProto]) -> None:
    model = graphs["tensorrt"]
    producers = producer_map(model)
    add = next(n for n in model.graph.node if n.name == "add1")
    for name in add.input:
        dq = producers[name]
        assert dq.op_type == "DequantizeLinear"
        assert producers[dq.input[0]].op_type == "QuantizeLinear"


def test_bundled_detector_tensorrt_qdq_parses_and_keeps_fusions(
    tmp_path: Path, cpu_profile: DeviceProfile
) -> None:
    bundle = load_bundle(MODELS / "shapes-det")
    prepared = prepare(bundle, cpu_profile, tmp_path / "w", static=True)
    calib = load_calibration_set(CALIB / "shapes-det", bundle, (256, 256), 16, 8)
    q = quantize(
        prepared, calib, recipe="tensorrt", method="minmax", work_dir=tmp_path, cache_dir=tmp_path
    )
    model = onnx.load(str(q.path))
    assert dequantize_input_errors(model.graph, 10) == []
    producers = producer_map(model)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    quantized = [n for n in convs if producers.get(n.input[1], n).op_type == "DequantizeLinear"]
    assert quantized
    for node in quantized:
        dq = producers[node.input[1]]
        assert next(a.i for a in dq.attribute if a.name == "axis") == 0
    for node in model.graph.node:
        if node.op_type in FUSED_OPS:
            assert all(c.op_type != "QuantizeLinear" for c in consumers_of(model, node.output[0]))
