"""Tiny ONNX models for the fake TensorRT and the build request the backend tests use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from agent.backends.base import BuildRequest, InputShapes

#: the optimization-profile shapes of :func:`onnx_relu_model`'s input
SHAPES = {"images": InputShapes((1, 3, 4, 4), (4, 3, 4, 4), (8, 3, 4, 4))}


def onnx_relu_model(
    path: Path, *, input_name: str = "images", channels: int = 3, layers: int = 1
) -> Path:
    """A tiny ONNX model ``Relu(images[N, C, 4, 4])`` with a dynamic batch, for the fake; with
    ``layers > 1`` a chain of Relu nodes named ``relu``, ``relu_1``, ..."""
    from onnx import TensorProto, helper, save

    x = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", channels, 4, 4])
    y = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", channels, 4, 4])
    names = [input_name] + [f"h{i}" for i in range(1, layers)] + ["scores"]
    nodes = [
        helper.make_node("Relu", [names[i]], [names[i + 1]], name="relu" + (f"_{i}" if i else ""))
        for i in range(layers)
    ]
    graph = helper.make_graph(nodes, "g", [x], [y])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def onnx_dq_model(path: Path, *, quantized: str = "int8") -> Path:
    """``Relu(images) + DequantizeLinear(b_q)`` with ``b_q`` a constant of ``quantized`` type
    ("int8", or "int32" as ORT writes a quantized bias): the fake parser's DequantizeLinear rule."""
    from onnx import TensorProto, helper, numpy_helper, save

    dtype = {"int8": np.int8, "int32": np.int32}[quantized]
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 4, 4])
    y = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3, 4, 4])
    inits = [
        numpy_helper.from_array(np.ones((3, 1, 1), dtype), "b_q"),
        numpy_helper.from_array(np.array(0.5, np.float32), "b_scale"),
    ]
    nodes = [
        helper.make_node("Relu", ["images"], ["r"], name="relu"),
        helper.make_node("DequantizeLinear", ["b_q", "b_scale"], ["b"], name="b_DequantizeLinear"),
        helper.make_node("Add", ["r", "b"], ["scores"], name="add"),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=inits)
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def onnx_nonzero_model(path: Path) -> Path:
    """``scores = Relu(images)``, ``where = NonZero(scores)``: ``where`` is ``[4, nz]`` int64,
    its length known only once the model has run (a data-dependent shape, as in the NMS/NonZero
    tails of exported detectors)."""
    from onnx import TensorProto, helper, save

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 4, 4])
    y = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3, 4, 4])
    w = helper.make_tensor_value_info("where", TensorProto.INT64, [4, "nz"])
    nodes = [
        helper.make_node("Relu", ["images"], ["scores"], name="relu"),
        helper.make_node("NonZero", ["scores"], ["where"], name="nonzero"),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y, w])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def onnx_fp16_model(path: Path) -> Path:
    """``Cast(fp32 → fp16) → Relu → Cast(fp16 → fp32)``: an ONNX that computes in FP16 with FP32
    I/O, as Model Optimizer AutoCast writes with ``keep_io_types``."""
    from onnx import TensorProto, helper, save

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 4, 4])
    y = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3, 4, 4])
    nodes = [
        helper.make_node("Cast", ["images"], ["h"], name="to_fp16", to=TensorProto.FLOAT16),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Cast", ["r"], ["scores"], name="to_fp32", to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def build_request(tmp_path: Path, **overrides: Any) -> BuildRequest:
    """A build of ``tmp_path/model.onnx`` (:func:`onnx_relu_model`) into ``tmp_path/artifact``:
    int8, :data:`SHAPES`, 256 MiB workspace, optimization level 2; ``overrides`` replace fields."""
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
