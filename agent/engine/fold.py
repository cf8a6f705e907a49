"""Fold BatchNormalization into the Conv, ConvTranspose or Gemm before it.

Exporters that keep BatchNormalization as its own node (PaddlePaddle, torch ``PRESERVE``
exports) leave a float op after every quantized conv: the INT8 graph then runs slower than the
float one. Folding is exact arithmetic on the weights (``w * s``, ``(b - mean) * s + beta`` with
``s = gamma / sqrt(var + eps)``, in float64) and keeps the conv's node name, so ``keep_float``
names stay valid. A BatchNormalization named in ``keep_float`` is left as it is.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np

from agent.core.errors import InternalError
from agent.engine.onnxgraph import (
    GraphProto,
    NodeProto,
    array_to_tensor,
    attribute_values,
    tensor_to_array,
)

__all__ = ["BatchNormFold", "fold_batchnorm"]

log = logging.getLogger(__name__)

_FOLDABLE = ("Conv", "ConvTranspose", "Gemm")
_FLOATS = (np.float16, np.float32, np.float64)


@dataclass
class BatchNormFold:
    """What :func:`fold_batchnorm` did."""

    #: BatchNormalization node name -> name of the node it was folded into
    folded: dict[str, str] = field(default_factory=dict[str, str])
    #: BatchNormalization nodes left alone because ``keep_float`` names them -> their producer
    kept: dict[str, str] = field(default_factory=dict[str, str])
    #: BatchNormalization nodes that could not be folded -> why
    unfoldable: dict[str, str] = field(default_factory=dict[str, str])


def _count_uses(graph: GraphProto, uses: dict[str, int]) -> None:
    """Count every read of a tensor name, in subgraphs too (they may read outer names)."""
    for node in graph.node:
        for name in node.input:
            uses[name] += 1
        for attr in node.attribute:
            for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                _count_uses(sub, uses)


@dataclass
class _Graph:
    """Look-ups over a graph, kept current while nodes are folded away."""

    graph: GraphProto
    inits: dict[str, int] = field(default_factory=dict[str, int])
    producer: dict[str, NodeProto] = field(default_factory=dict[str, NodeProto])
    uses: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    outputs: set[str] = field(default_factory=set[str])
    #: initializers some uses were taken from (dropped at the end when none are left)
    released: set[str] = field(default_factory=set[str])

    def __post_init__(self) -> None:
        self.inits = {t.name: i for i, t in enumerate(self.graph.initializer)}
        for node in self.graph.node:
            for name in node.output:
                self.producer[name] = node
        _count_uses(self.graph, self.uses)
        self.outputs = {o.name for o in self.graph.output}

    def const(self, name: str) -> np.ndarray | None:
        index = self.inits.get(name)
        return None if index is None else tensor_to_array(self.graph.initializer[index])

    def array(self, name: str) -> np.ndarray:
        found = self.const(name)
        if found is None:
            raise InternalError(f"initializer {name!r} vanished while folding")
        return found

    def release(self, name: str) -> None:
        self.uses[name] -= 1
        self.released.add(name)

    def store(self, name: str, array: np.ndarray, owner: str) -> str:
        """Write ``array`` under ``name`` when only one node uses it, else under a new name."""
        if name in self.inits and self.uses[name] <= 1:
            self.graph.initializer[self.inits[name]].CopyFrom(array_to_tensor(array, name))
            return name
        new, n = f"{owner}_bnfold", 1
        while new in self.inits or new in self.producer or new in self.uses:
            n += 1
            new = f"{owner}_bnfold{n}"
        self.inits[new] = len(self.graph.initializer)
        self.graph.initializer.append(array_to_tensor(array, new))
        self.uses[new] += 1
        if name:
            self.release(name)
        return new


def _why_not(g: _Graph, bn: NodeProto) -> str | None:
    """Why ``bn`` cannot be folded into its producer (None when it can)."""
    if any(o for o in bn.output[1:]) or attribute_values(bn).get("training_mode", 0):
        return "training-mode BatchNormalization"
    if any(g.const(name) is None for name in bn.input[1:5]):
        return "its scale/bias/mean/var are not constants"
    prev = g.producer.get(bn.input[0])
    if prev is None or prev.op_type not in _FOLDABLE or prev.domain not in ("", "ai.onnx"):
        kind = "a graph input" if prev is None else f"{prev.op_type} '{prev.name}'"
        return f"its input comes from {kind}, not a Conv/ConvTranspose/Gemm"
    if g.uses[bn.input[0]] != 1 or bn.input[0] in g.outputs:
        return f"the output of {prev.op_type} '{prev.name}' is also used elsewhere"
    w = g.const(prev.input[1])
    bias = prev.input[2] if len(prev.input) > 2 else ""
    if w is None or w.dtype.type not in _FLOATS or (bias and g.const(bias) is None):
        return f"the weights of {prev.op_type} '{prev.name}' are not float constants"
    return None


def _scaled(prev: NodeProto, w: np.ndarray, s: np.ndarray) -> np.ndarray | None:
    """The weight ``w`` of ``prev`` with output channel ``c`` multiplied by ``s[c]``."""
    attrs = attribute_values(prev)
    if prev.op_type == "Conv":
        return w * s.reshape(-1, *([1] * (w.ndim - 1))) if w.shape[0] == s.size else None
    if prev.op_type == "ConvTranspose":
        group = int(attrs.get("group", 1))
        if w.shape[1] * group != s.size or w.shape[0] % group:
            return None
        grouped = w.reshape(group, w.shape[0] // group, *w.shape[1:])
        per = s.reshape(group, 1, w.shape[1], *([1] * (w.ndim - 2)))
        return (grouped * per).reshape(w.shape)
    alpha = float(attrs.get("alpha", 1.0))  # Gemm: Y = alpha * A @ B' + beta * C
    if w.ndim != 2:
        return None
    if attrs.get("transB", 0):
        return alpha * w * s[:, None] if w.shape[0] == s.size else None
    return alpha * w * s[None, :] if w.shape[1] == s.size else None


def _old_bias(g: _Graph, prev: NodeProto, channels: int) -> np.ndarray | None:
    bias = prev.input[2] if len(prev.input) > 2 else ""
    if not bias:
        return np.zeros(channels)
    b = g.array(bias).astype(np.float64)
    if prev.op_type == "Gemm":
        b = float(attribute_values(prev).get("beta", 1.0)) * b
        if b.size not in (1, channels) or b.ndim > 2 or (b.ndim == 2 and b.shape[0] != 1):
            return None  # a per-row C (M, N) cannot be folded into a per-channel bias
        return np.broadcast_to(b.reshape(-1), (channels,)).copy()
    return b if b.shape == (channels,) else None


def _fold_one(g: _Graph, bn: NodeProto) -> str | None:
    """Fold ``bn`` into its producer; returns why not when the shapes do not fit."""
    prev = g.producer[bn.input[0]]
    scale, beta, mean, var = (g.array(n).astype(np.float64) for n in bn.input[1:5])
    eps = float(attribute_values(bn).get("epsilon", 1e-5))
    s = scale / np.sqrt(var + eps)
    w = g.array(prev.input[1])
    new_w = _scaled(prev, w.astype(np.float64), s)
    old_b = _old_bias(g, prev, s.size)
    if new_w is None or old_b is None or not (s.shape == beta.shape == mean.shape == old_b.shape):
        return f"the shapes of {prev.op_type} '{prev.name}' do not match its channels"
    new_b = (old_b - mean) * s + beta
    dtype = w.dtype
    prev.input[1] = g.store(prev.input[1], new_w.astype(dtype), prev.name)
    bias = prev.input[2] if len(prev.input) > 2 else ""
    name = g.store(bias, new_b.astype(dtype), prev.name)
    if len(prev.input) > 2:
        prev.input[2] = name
    else:
        prev.input.append(name)
    if prev.op_type == "Gemm":  # alpha went into B, beta into C
        kept = [a for a in prev.attribute if a.name not in ("alpha", "beta")]
        del prev.attribute[:]
        prev.attribute.extend(kept)
    prev.output[0] = bn.output[0]
    g.producer[bn.output[0]] = prev
    for name in bn.input:
        g.release(name)
    return None


def _drop_unused(g: _Graph) -> None:
    graph = g.graph
    dead = {n for n in g.released if g.uses.get(n, 0) <= 0}
    kept = [t for t in graph.initializer if t.name not in dead]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    inputs = [v for v in graph.input if v.name not in dead]
    del graph.input[:]
    graph.input.extend(inputs)


def fold_batchnorm(graph: GraphProto, keep_float: Collection[str] = ()) -> BatchNormFold:
    """Fold every BatchNormalization whose input is made by a Conv, ConvTranspose or Gemm used
    by nothing else into that node's weights and bias, in place. BatchNormalization nodes named
    in ``keep_float`` stay."""
    g = _Graph(graph)
    result = BatchNormFold()
    removed: list[NodeProto] = []
    for bn in list(graph.node):
        if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx"):
            continue
        why = _why_not(g, bn)
        if why is None and bn.name in keep_float:
            result.kept[bn.name] = g.producer[bn.input[0]].name
            continue
        stale = bn.input[0]
        why = why or _fold_one(g, bn)
        if why is not None:
            result.unfoldable[bn.name or bn.output[0]] = why
            continue
        result.folded[bn.name or bn.output[0]] = g.producer[stale].name
        removed.append(bn)
        stale_vi = [v for v in graph.value_info if v.name != stale]
        del graph.value_info[:]
        graph.value_info.extend(stale_vi)
    for bn in removed:
        graph.node.remove(bn)
    _drop_unused(g)
    if result.folded:
        log.info("folded %d BatchNormalization nodes", len(result.folded))
    return result
