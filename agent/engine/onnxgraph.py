"""The one home of the ``onnx`` library: load, check, convert, save and read ONNX graphs.

Every other module handles models through these functions and type names, so the onnx
dependency (and its quirks: external data, checker errors, opset conversion) lives here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper, version_converter

from agent.backends.base import TensorSpec

__all__ = [
    "FLOAT",
    "FLOAT16",
    "GraphProto",
    "ModelProto",
    "NodeProto",
    "TensorProto",
    "ValidationError",
    "ValueInfoProto",
    "add_float_outputs",
    "array_to_tensor",
    "attribute_values",
    "check_model",
    "convert_opset",
    "default_opset",
    "dim_value",
    "elem_type_name",
    "elem_types",
    "external_locations",
    "has_standard_operator",
    "load_external_data",
    "load_model",
    "output_is_softmax",
    "save_model",
    "save_model_with_data_file",
    "submodel",
    "tensor_specs",
    "tensor_to_array",
]

log = logging.getLogger(__name__)

ModelProto = onnx.ModelProto
GraphProto = onnx.GraphProto
NodeProto = onnx.NodeProto
TensorProto = onnx.TensorProto
ValueInfoProto = onnx.ValueInfoProto
Dimension = onnx.TensorShapeProto.Dimension
#: What :func:`check_model` raises for an invalid model.
ValidationError = onnx.checker.ValidationError

FLOAT: int = onnx.TensorProto.FLOAT
FLOAT16: int = onnx.TensorProto.FLOAT16


# ---------------------------------------------------------------------------- files


def load_model(path: Path, *, external_data: bool = True) -> ModelProto:
    """Parse an ONNX file (raises protobuf's errors as they are)."""
    return onnx.load(str(path), load_external_data=external_data)


def load_external_data(model: ModelProto, base_dir: Path) -> None:
    """Load the external-data tensors of ``model`` from files under ``base_dir``."""
    onnx.load_external_data_for_model(model, str(base_dir))


def save_model(model: ModelProto, path: Path, *, external_data: bool = False) -> None:
    """Write ``model``; with ``external_data`` the tensors go to onnx's default data file."""
    onnx.save_model(model, str(path), save_as_external_data=external_data)


def save_model_with_data_file(model: ModelProto, path: Path) -> None:
    """Write ``model`` with every tensor over 1 KiB in one ``<name>.data`` file next to it."""
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=path.name + ".data",
        size_threshold=1024,
    )


def check_model(path: Path) -> None:
    """Run the ONNX checker on a file; raises :data:`ValidationError`."""
    onnx.checker.check_model(str(path))


def convert_opset(model: ModelProto, target: int) -> ModelProto:
    """``model`` converted to default-domain opset ``target``."""
    return version_converter.convert_version(model, target)


# ---------------------------------------------------------------------------- reading


def has_standard_operator(op_type: str, version: int) -> bool:
    """Whether ``op_type`` is a default-domain ONNX operator at opset ``version``."""
    return bool(onnx.defs.has(op_type, max_inclusive_version=version, domain=""))


def elem_type_name(elem_type: int) -> str:
    """The ``TensorProto.DataType`` name of an element type (``FLOAT``, ``INT64`` ...)."""
    return onnx.TensorProto.DataType.Name(elem_type)


def dim_value(d: Dimension) -> int | str:
    """A fixed dimension as int, a named one as its name, an unknown one as -1."""
    if d.HasField("dim_value") and d.dim_value > 0:
        return int(d.dim_value)
    if d.HasField("dim_param") and d.dim_param:
        return d.dim_param
    return -1


def _spec(vi: ValueInfoProto) -> TensorSpec:
    ttype = vi.type.tensor_type
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type).name
    except (KeyError, TypeError, ValueError):
        dtype = "unknown"
    shape = tuple(dim_value(d) for d in ttype.shape.dim) if ttype.HasField("shape") else ()
    return TensorSpec(vi.name, shape, dtype)


def tensor_specs(model: ModelProto) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """(inputs, outputs) of a model; initializers listed as inputs (old exporters) are skipped."""
    inits = {t.name for t in model.graph.initializer}
    inputs = tuple(_spec(v) for v in model.graph.input if v.name not in inits)
    return inputs, tuple(_spec(v) for v in model.graph.output)


def default_opset(model: ModelProto) -> int:
    """The model's default-domain opset (0 when it declares none)."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0


def _graph_tensors(graph: GraphProto) -> Iterator[TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for sub in attr.graphs:
                yield from _graph_tensors(sub)


def external_locations(model: ModelProto) -> dict[str, list[str]]:
    """``location`` -> names of the tensors stored there, for every external-data tensor."""
    found: dict[str, list[str]] = {}
    for tensor in _graph_tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            found.setdefault(location, []).append(tensor.name)
    return found


def elem_types(model: ModelProto) -> dict[str, int]:
    """tensor name -> element type, after ONNX shape inference (inputs, outputs, values)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    return {
        vi.name: vi.type.tensor_type.elem_type
        for vi in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)
    }


def add_float_outputs(model: ModelProto, names: Sequence[str]) -> None:
    """Make the float tensors ``names`` graph outputs (those that are not already)."""
    present = {o.name for o in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
            present.add(name)


#: Ops that only reshape or relabel a tensor: a Softmax before them still makes the output.
_RESHAPING_OPS = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast"})


def output_is_softmax(path: Path, output: str | None = None) -> bool:
    """Whether graph output ``output`` (default: the first) of the ONNX file at ``path`` is made
    by a Softmax node, or by Exp of a LogSoftmax, looking back through reshapes (Identity,
    Reshape, Flatten, Squeeze, Unsqueeze, Cast). Reads the graph only, not external weights."""
    graph = load_model(path, external_data=False).graph
    if not graph.output:
        return False
    producer = {name: node for node in graph.node for name in node.output}
    node = producer.get(output if output is not None else graph.output[0].name)
    for _ in range(len(graph.node)):  # bounded: a malformed graph may have a cycle
        if node is None or node.op_type not in _RESHAPING_OPS or not node.input:
            break
        node = producer.get(node.input[0])
    if node is None or node.domain not in ("", "ai.onnx"):
        return False
    if node.op_type == "Exp" and node.input:
        source = producer.get(node.input[0])
        return source is not None and source.op_type == "LogSoftmax"
    return node.op_type == "Softmax"


# ---------------------------------------------------------------------------- rewriting


def tensor_to_array(tensor: TensorProto) -> np.ndarray:
    """The values of an (in-memory) tensor as a numpy array."""
    return np.asarray(numpy_helper.to_array(tensor))


def array_to_tensor(array: np.ndarray, name: str) -> TensorProto:
    """A tensor named ``name`` holding ``array`` (its dtype and shape)."""
    return numpy_helper.from_array(np.asarray(array), name)


def attribute_values(node: NodeProto) -> dict[str, Any]:
    """A node's attributes as name -> Python value (ints, floats, lists, tensors ...)."""
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def submodel(
    model: ModelProto,
    nodes: Iterable[NodeProto],
    initializers: Iterable[TensorProto],
    outputs: Sequence[str],
) -> ModelProto:
    """A model without inputs made of copies of ``nodes`` and ``initializers`` that returns the
    tensors ``outputs`` (type left to the runtime), at ``model``'s opsets and IR version."""
    graph = onnx.helper.make_graph(
        list(nodes),
        "submodel",
        [],
        [onnx.ValueInfoProto(name=name) for name in outputs],
        list(initializers),
    )
    sub = onnx.helper.make_model(graph, opset_imports=list(model.opset_import))
    sub.ir_version = model.ir_version
    return sub
