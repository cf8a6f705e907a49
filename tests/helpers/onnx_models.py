"""Small ONNX models and bundles built in code, shared by the engine and backend tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def convnet(
    *,
    opset: int = 17,
    dims: tuple[int | str, ...] = ("batch", 3, "height", "width"),
    seed: int = 0,
) -> onnx.ModelProto:
    """Conv-Relu-Conv-Relu-Add-GAP-Flatten-Gemm classifier with random weights."""
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []

    def w(name: str, shape: tuple[int, ...], scale: float = 0.3) -> str:
        inits.append(
            numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)
        )
        return name

    nodes = [
        helper.make_node(
            "Conv",
            ["images", w("w1", (8, 3, 3, 3)), w("b1", (8,))],
            ["c1"],
            name="conv1",
            pads=[1, 1, 1, 1],
            strides=[2, 2],
        ),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node(
            "Conv",
            ["r1", w("w2", (8, 8, 3, 3), 0.2), w("b2", (8,))],
            ["c2"],
            name="conv2",
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Add", ["r1", "r2"], ["a1"], name="add1"),
        helper.make_node("GlobalAveragePool", ["a1"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node(
            "Gemm", ["f", w("wf", (4, 8)), w("bf", (4,))], ["logits"], name="fc", transB=1
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "net",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, list(dims))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [dims[0], 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7 if opset < 15 else 8
    return model


YAML = """name: tiny
version: 1
task: classify
input:
  name: images
  layout: {layout}
  resize: stretch
  size: {size}
output:
  decode: softmax_topk
"""


def make_bundle(
    tmp_path: Path,
    model: onnx.ModelProto | bytes,
    *,
    size: str = "[32, 32]",
    layout: str = "NCHW",
    name: str = "bundle",
) -> Path:
    d = tmp_path / name
    d.mkdir()
    if isinstance(model, bytes):
        (d / "model.onnx").write_bytes(model)
    else:
        onnx.save(model, d / "model.onnx")
    (d / "model.yaml").write_text(YAML.format(layout=layout, size=size))
    return d
