"""The ONNX-side rules the fake parser applies: which DequantizeLinear inputs TensorRT's parser
takes, the type each node's output has in a strongly typed network, and which outputs have
data-dependent shapes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: ONNX element types TensorRT's parser takes as DequantizeLinear input (its "quantized types"):
#: INT8 only up to 8.6 (onnx-tensorrt 8.x docs/operators.md lists INT8 as the one quantized
#: type); INT8, INT4 and FLOAT8E4M3FN from 10.0 (onnx-tensorrt 10.x docs/operators.md: "INT8,
#: INT4, and FP8 are treated as Quantized Types"). An INT32 bias behind a DequantizeLinear (ORT's
#: default QuantizeBias) fails with "only activation types allowed as input to this layer"
#: (microsoft/onnxruntime#14229, onnx/onnx-tensorrt#850).
DQ_INPUT_TYPES = {8: {3}, 10: {3, 22, 17}, 11: {3, 22, 17}}
_ONNX_TYPE_NAMES = {1: "FLOAT", 2: "UINT8", 3: "INT8", 6: "INT32", 7: "INT64", 10: "FLOAT16"}


def _elem_types(graph: Any) -> dict[str, int]:
    """Tensor name -> ONNX element type, from initializers, value infos, inputs and the zero
    point of each QuantizeLinear (its output type; uint8 without one, as the ONNX spec says)."""
    types_: dict[str, int] = {t.name: t.data_type for t in graph.initializer}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        types_.setdefault(vi.name, vi.type.tensor_type.elem_type)
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            zero_point = node.input[2] if len(node.input) > 2 and node.input[2] else None
            types_[node.output[0]] = types_.get(zero_point, 2) if zero_point else 2
    return types_


def dequantize_input_errors(graph: Any, major: int) -> list[tuple[int, str]]:
    """(node index, message) for each DequantizeLinear whose input is not a quantized type this
    TensorRT generation parses, worded as onnx-tensorrt's importer reports it."""
    allowed = DQ_INPUT_TYPES[major]
    types_ = _elem_types(graph)
    errors: list[tuple[int, str]] = []
    for index, node in enumerate(graph.node):
        if node.op_type != "DequantizeLinear":
            continue
        elem = types_.get(node.input[0])
        if elem is not None and elem not in allowed:
            name = _ONNX_TYPE_NAMES.get(elem, str(elem))
            errors.append(
                (
                    index,
                    f"{node.name}: only activation types allowed as input to this layer "
                    f"(DequantizeLinear input '{node.input[0]}' is {name})",
                )
            )
    return errors


#: ops whose output size depends on the input *values* (TensorRT: "data-dependent shapes";
#: onnx-tensorrt docs/operators.md lists NonZero and NonMaxSuppression among them)
DDS_OPS = frozenset({"NonZero", "NonMaxSuppression"})
#: ops whose output is INT64 whatever the input type (ONNX operator spec)
_INT64_OPS = frozenset({"NonZero", "NonMaxSuppression", "Shape", "Size", "ArgMax", "ArgMin"})


@dataclass(frozen=True)
class LayerInfo:
    """One node as the fake network holds it."""

    name: str
    op: str
    #: ONNX element type of each output (as a strongly typed network infers it)
    out_types: tuple[int, ...]
    outputs: tuple[str, ...]


def _node_out_type(node: Any, types_: dict[str, int]) -> int:
    """The element type of ``node``'s outputs under strong typing: from the node's semantics
    (Cast's ``to``, DequantizeLinear's scale type, QuantizeLinear's zero point, INT64 ops), else
    the type of its first typed input."""
    if node.op_type == "Cast":
        return next(int(a.i) for a in node.attribute if a.name == "to")
    if node.op_type in _INT64_OPS:
        return 7
    if node.op_type == "DequantizeLinear":
        return types_.get(node.input[1], 1)
    if node.op_type == "QuantizeLinear":
        zero_point = node.input[2] if len(node.input) > 2 and node.input[2] else None
        return types_.get(zero_point, 2) if zero_point else 2
    return next((types_[i] for i in node.input if i in types_), 1)


def layer_infos(graph: Any) -> tuple[list[LayerInfo], set[str]]:
    """Each node with its output types, and the names of tensors with data-dependent shapes
    (produced by a :data:`DDS_OPS` node, or computed from one)."""
    types_ = {t.name: t.data_type for t in graph.initializer}
    for vi in graph.input:
        types_.setdefault(vi.name, vi.type.tensor_type.elem_type)
    dds: set[str] = set()
    layers: list[LayerInfo] = []
    for node in graph.node:
        out_type = _node_out_type(node, types_)
        outputs = tuple(o for o in node.output if o)
        for out in outputs:
            types_[out] = out_type
        if node.op_type in DDS_OPS or dds.intersection(node.input):
            dds.update(outputs)
        layers.append(
            LayerInfo(node.name or node.op_type, node.op_type, (out_type,) * len(outputs), outputs)
        )
    return layers, dds


#: layers TensorRT fuses with what follows them: their outputs get no Q/DQ of their own
FUSED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def producer_map(model: Any) -> dict[str, Any]:
    """tensor name -> the node that produces it."""
    return {o: n for n in model.graph.node for o in n.output}


def consumers_of(model: Any, name: str) -> list[Any]:
    """The nodes that read tensor ``name``."""
    return [n for n in model.graph.node if name in n.input]
