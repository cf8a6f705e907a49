"""One small classifier with different heads (logits, Softmax, Exp of LogSoftmax ...), for the
tests of ``output.softmax`` (the decoder must not softmax a model that ends in Softmax)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tests.helpers.onnx_models import convnet

Head = list[tuple[str, list[str], dict[str, Any]]]

#: head name -> (nodes after the scaled logits, what ``output.softmax: auto`` settles to)
HEADS: dict[str, tuple[Head, str]] = {
    "logits": ([("Identity", ["scaled"], {})], "apply"),
    "softmax": ([("Softmax", ["scaled"], {"axis": -1})], "none"),
    "logsoftmax-exp": (
        [("LogSoftmax", ["scaled"], {"axis": -1}), ("Exp", ["h0"], {})],
        "none",
    ),
    "softmax-flatten": (
        [("Softmax", ["scaled"], {"axis": 1}), ("Flatten", ["h0"], {"axis": 1})],
        "none",
    ),
    "logsoftmax": ([("LogSoftmax", ["scaled"], {"axis": -1})], "apply"),
}


def classifier_with_head(head: str, size: int = 32) -> onnx.ModelProto:
    """``convnet`` (input ``images`` [batch, 3, size, size], same weights for every head) with
    its 4 logits x 6 (peaked probabilities), then ``head``'s nodes into the output ``out``."""
    model = convnet(dims=("batch", 3, size, size))
    graph = model.graph
    graph.initializer.append(numpy_helper.from_array(np.array(6.0, np.float32), "six"))
    graph.node.append(helper.make_node("Mul", ["logits", "six"], ["scaled"], name="scale"))
    nodes = HEADS[head][0]
    for i, (op, inputs, attrs) in enumerate(nodes):
        out = "out" if i == len(nodes) - 1 else f"h{i}"
        graph.node.append(helper.make_node(op, inputs, [out], name=f"head{i}", **attrs))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, ["batch", 4]))
    return model
