"""Where Q/DQ goes: the float tail every recipe keeps in float, and the quantized consumers
that must stay float together with a node the probe excludes."""

from __future__ import annotations

import logging

from agent.engine.onnxgraph import ModelProto, NodeProto
from agent.engine.quantize.recipes import Recipe

__all__ = ["float_tail", "quantized_consumers"]

log = logging.getLogger(__name__)


def quantized_consumers(model: ModelProto, recipe: Recipe) -> dict[str, list[str]]:
    """node -> names of the nodes that consume its outputs and that the recipe quantizes."""
    by_input: dict[str, list[NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            by_input.setdefault(name, []).append(node)
    result: dict[str, list[str]] = {}
    for node in model.graph.node:
        result[node.name] = [
            c.name
            for out in node.output
            for c in by_input.get(out, ())
            if recipe.op_types is None or c.op_type in recipe.op_types
        ]
    return result


_WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def float_tail(model: ModelProto) -> list[str]:
    """Names of the nodes downstream of the last weighted layers: no Conv/Gemm/MatMul with a
    constant weight is reachable from them. Those are post-processing (decode, activations
    on the outputs, Concat of boxes and scores) and stay float in every recipe."""
    initializers = {t.name for t in model.graph.initializer}
    initializers |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    by_input: dict[str, list[int]] = {}
    for index, node in enumerate(model.graph.node):
        for name in node.input:
            by_input.setdefault(name, []).append(index)
    nodes = list(model.graph.node)
    weighted = [
        n.op_type in _WEIGHTED and any(i in initializers for i in n.input[1:]) for n in nodes
    ]
    # leads[i]: a weighted node is i itself or downstream of i. Graph nodes are topologically
    # sorted (ONNX requires it), so one reverse pass settles every node.
    leads = [False] * len(nodes)
    for index in range(len(nodes) - 1, -1, -1):
        node = nodes[index]
        leads[index] = weighted[index] or any(
            leads[c] for out in node.output for c in by_input.get(out, ())
        )
    return [n.name for i, n in enumerate(nodes) if not leads[i] and n.name]
