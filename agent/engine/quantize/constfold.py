"""Fold constant subgraphs into initializers before Q/DQ insertion.

A node whose inputs are all constants (initializers, or outputs of other such nodes: Constant,
Cast, Transpose of a weight, Concat of shape constants ...) is computed once, by ONNX Runtime on
exactly those nodes, and replaced by an initializer. Nothing that depends on the image input is
touched (Shape of a dynamic tensor stays), nodes keep their names, no fused or runtime-specific
ops appear. ONNX Runtime's own basic-level optimizer (``optimized_model_filepath``) does this and
more, but it also fuses MatMul+Add into a ``<name>/MatMulAddFusion`` Gemm, renaming nodes that
``keep_float`` refers to.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from agent.engine.onnxgraph import GraphProto, ModelProto, NodeProto, array_to_tensor, submodel

__all__ = ["ConstantFold", "fold_constants"]

log = logging.getLogger(__name__)

#: Ops whose result differs from run to run, or that hold subgraphs: never folded.
_NEVER = frozenset(
    {
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
        "If",
        "Loop",
        "Scan",
        # weights quantized by the exporter (QAT) stay as Q/DQ pairs
        "QuantizeLinear",
        "DequantizeLinear",
    }
)
#: Ops on sequences or optionals (SequenceAt, SplitToSequence, OptionalGetElement ...): never
#: folded, their results are not tensors.
_NOT_TENSORS = ("Sequence", "Optional")
#: A folded result this large that grew over its inputs (Expand, Tile, ConstantOfShape ...)
#: stays a node: storing it would bloat the model.
_MAX_GROWN_BYTES = 16 << 20


@dataclass
class ConstantFold:
    """What :func:`fold_constants` did."""

    #: op type -> how many nodes of it were replaced by initializers
    folded: Counter[str] = field(default_factory=Counter[str])
    #: why folding was given up (None when it ran)
    skipped: str | None = None


def _foldable(graph: GraphProto, keep: Collection[str]) -> list[int]:
    """Indices of the nodes computed from constants only."""
    const = {t.name for t in graph.initializer} | {""}
    outputs = {o.name for o in graph.output}
    found: list[int] = []
    for index, node in enumerate(graph.node):  # ONNX graphs are topologically sorted
        if (
            node.domain in ("", "ai.onnx")
            and node.op_type not in _NEVER
            and not any(word in node.op_type for word in _NOT_TENSORS)
            and node.name not in keep
            and all(i in const for i in node.input)
            and not any(o in outputs for o in node.output)
            and not any(a.HasField("g") or a.graphs for a in node.attribute)
        ):
            found.append(index)
            const.update(node.output)
    return found


def _evaluate(model: ModelProto, nodes: list[NodeProto]) -> dict[str, np.ndarray]:
    produced = {o for n in nodes for o in n.output if o}
    needed = {i for n in nodes for i in n.input} - produced
    inits = [t for t in model.graph.initializer if t.name in needed]
    names = sorted(produced)
    sub = submodel(model, nodes, inits, names)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(
        sub.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    values: dict[str, np.ndarray] = {}
    for name, value in zip(names, session.run(names, {}), strict=True):
        if not isinstance(value, np.ndarray):
            raise TypeError(f"constant {name!r} is a {type(value).__name__}, not a tensor")
        values[name] = value
    return values


def _grown(node: NodeProto, sizes: dict[str, int]) -> bool:
    """Whether ``node``'s folded output is too large to store (it grew over its inputs)."""
    out = sum(sizes[o] for o in node.output if o)
    return out > _MAX_GROWN_BYTES and out > 2 * sum(sizes.get(i, 0) for i in node.input)


def _live(graph: GraphProto, kept: set[int], constant: set[int]) -> set[int]:
    """``kept`` without the ``constant`` nodes whose outputs nothing uses any more (a constant
    node too large to fold whose only consumers were folded)."""
    outputs = {o.name for o in graph.output}
    while True:
        used = outputs | {i for k in kept for i in graph.node[k].input}
        live = {
            k for k in kept if k not in constant or any(o in used for o in graph.node[k].output)
        }
        if live == kept:
            return kept
        kept = live


def _names_used(graph: GraphProto) -> set[str]:
    """Every tensor name a node of ``graph`` or of its subgraphs reads, and its outputs."""
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node.input)
        for attr in node.attribute:
            for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                used |= _names_used(sub)
    return used


def _drop_initializers(graph: GraphProto, dead: set[str]) -> None:
    if not dead:
        return
    inits = [t for t in graph.initializer if t.name not in dead]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    inputs = [v for v in graph.input if v.name not in dead]
    del graph.input[:]
    graph.input.extend(inputs)


def _replace(graph: GraphProto, constant: list[int], values: dict[str, np.ndarray]) -> Counter[str]:
    """Replace the ``constant`` nodes by initializers (all but results too large to store)."""
    sizes = {t.name: len(t.raw_data) or t.ByteSize() for t in graph.initializer}
    sizes.update({name: int(v.nbytes) for name, v in values.items()})
    folded = {k for k in constant if not _grown(graph.node[k], sizes)}
    everything = set(range(len(graph.node)))
    kept = _live(graph, everything - folded, set(constant))
    used = {i for k in kept for i in graph.node[k].input} | {o.name for o in graph.output}
    counts: Counter[str] = Counter()
    names: set[str] = set()
    for k in sorted(everything - kept):
        node = graph.node[k]
        counts[node.op_type] += 1
        names.update(node.output)
        graph.initializer.extend(
            array_to_tensor(values[o], o) for o in node.output if o in used and o in values
        )
    released = {i for k in everything - kept for i in graph.node[k].input}
    for k in sorted(everything - kept, reverse=True):
        del graph.node[k]
    _drop_initializers(graph, released - _names_used(graph))
    stale = [v for v in graph.value_info if v.name not in names]
    del graph.value_info[:]
    graph.value_info.extend(stale)
    return counts


def fold_constants(model: ModelProto, keep: Collection[str] = ()) -> ConstantFold:
    """Replace every node of ``model`` computed from constants only by initializers, in place
    (nodes named in ``keep`` stay). Gives up with a reason, changing nothing, when ONNX Runtime
    cannot evaluate them."""
    result = ConstantFold()
    constant = _foldable(model.graph, keep)
    if not constant:
        return result
    try:
        values = _evaluate(model, [model.graph.node[k] for k in constant])
    except Exception as exc:  # an op ORT cannot run, a >2 GiB model ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        result.skipped = f"{type(exc).__name__}: {first}".rstrip(": ")
        log.info("constant folding skipped: %s", result.skipped)
        return result
    result.folded = _replace(model.graph, constant, values)
    return result
