"""Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction", section 4.2, with E[x] measured on calibration data).

Rounding weights to INT8 shifts a layer's expected output: with ``eps = W_q - W``,
``E[y_q] = E[y] + eps . E[x]``. Per-channel rounding errors rarely cancel in depthwise and
small convolutions, so the shift biases every activation after them. The correction subtracts
``eps . E[x]`` from the bias of each quantized Conv/Gemm, per output channel:

* ``E[x]`` is the per-input-channel mean of the layer's float input over the calibration
  frames, streamed group by group (:mod:`agent.engine.quantize.stream`);
* ``W_q`` is read back from the Q/DQ model ORT wrote for the recipe (its INT8 weight, scale
  and zero point), so it is exactly what runs;
* the corrected biases go into a copy of the float model, which ORT then quantizes (an INT32
  bias for the ONNX Runtime recipe, a float one for TensorRT).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from agent.engine.onnxgraph import (
    ModelProto,
    NodeProto,
    TensorProto,
    array_to_tensor,
    attribute_values,
    load_model,
    save_model,
    tensor_to_array,
)
from agent.engine.quantize.memory import MemoryPlan, activation_bytes, plan_groups
from agent.engine.quantize.stream import Feeds, stream

__all__ = ["bias_deltas", "corrected_model", "input_means", "weighted_inputs"]

log = logging.getLogger(__name__)

_TWO_GIB = (1 << 31) - (64 << 20)


def weighted_inputs(model: ModelProto) -> dict[str, str]:
    """Conv / Gemm node (constant weight, a bias slot ORT can fill) -> its activation input."""
    inits = {t.name for t in model.graph.initializer}
    found: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2 or not node.name:
            continue
        if node.input[1] not in inits or node.input[0] in inits:
            continue
        if len(node.input) > 2 and node.input[2] and node.input[2] not in inits:
            continue  # bias computed in the graph: leave it alone
        if node.op_type == "Gemm" and attribute_values(node).get("transA", 0):
            continue
        found[node.name] = node.input[0]
    return found


class _Means:
    """Per-channel (axis 1) running means of tensors, frame by frame."""

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}

    def fold(self, tensors: Mapping[str, np.ndarray]) -> None:
        for name, value in tensors.items():
            if value.ndim < 2:
                continue
            axes = (0, *range(2, value.ndim))
            total = np.asarray(np.sum(value, axis=axes, dtype=np.float64))
            self.sums[name] = self.sums[name] + total if name in self.sums else total
            self.counts[name] = self.counts.get(name, 0) + value.size // value.shape[1]

    def means(self) -> dict[str, np.ndarray]:
        return {n: s / max(1, self.counts[n]) for n, s in self.sums.items()}


def input_means(
    model_path: Path, tensors: Sequence[str], feeds: Feeds, *, budget_mib: int, tmp_dir: Path
) -> dict[str, np.ndarray]:
    """E[x] per channel of each of ``tensors`` over ``feeds`` (bounded memory)."""
    model = load_model(model_path)
    names = list(dict.fromkeys(tensors))
    first = next(iter(feeds()))
    sizes = activation_bytes(model, names, next(iter(first.values())).shape)
    plan = MemoryPlan.of(budget_mib, model.ByteSize(), max(sizes.values(), default=0), 1)
    means = _Means()
    stream(model, plan_groups(names, sizes, plan.group_bytes), feeds, means.fold, tmp_dir)
    return means.means()


def _dequantized_weight(qdq: ModelProto, node: NodeProto) -> np.ndarray | None:
    """The weight ``node`` really uses in the Q/DQ model, or None where it is not quantized."""
    inits = {t.name: t for t in qdq.graph.initializer}
    producer = next((n for n in qdq.graph.node if node.input[1] in n.output), None)
    if producer is None or producer.op_type != "DequantizeLinear":
        return None
    if producer.input[0] not in inits or producer.input[1] not in inits:
        return None
    q = tensor_to_array(inits[producer.input[0]]).astype(np.float64)
    scale = tensor_to_array(inits[producer.input[1]]).astype(np.float64)
    zero = np.zeros_like(scale)
    if len(producer.input) > 2 and producer.input[2] in inits:
        zero = tensor_to_array(inits[producer.input[2]]).astype(np.float64)
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * q.ndim
        shape[int(attribute_values(producer).get("axis", 1))] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (q - zero) * scale


def _delta(node: NodeProto, eps: np.ndarray, mean: np.ndarray) -> np.ndarray | None:
    """``-(W_q - W) . E[x]`` per output channel, in the units of the node's bias."""
    attrs = attribute_values(node)
    if node.op_type == "Conv":
        groups = int(attrs.get("group", 1))
        out, per_group = eps.shape[0], eps.shape[1]
        if mean.size != groups * per_group or out % groups:
            return None
        summed = eps.reshape(groups, out // groups, per_group, -1).sum(axis=-1)
        return -np.einsum("goc,gc->go", summed, mean.reshape(groups, per_group)).reshape(out)
    beta = float(attrs.get("beta", 1.0))
    if beta == 0.0:
        return None
    eps = eps if attrs.get("transB", 0) else eps.T  # -> [N, K]
    if mean.size != eps.shape[1]:
        return None
    return -float(attrs.get("alpha", 1.0)) * (eps @ mean) / beta


def bias_deltas(
    float_model: ModelProto, qdq_path: Path, means: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Node name -> the bias change that removes its weight quantization's mean shift, for
    every Conv/Gemm whose weight the Q/DQ model quantized."""
    qdq = load_model(qdq_path)
    qdq_nodes = {n.name: n for n in qdq.graph.node if n.name}
    inits = {t.name: t for t in float_model.graph.initializer}
    targets = weighted_inputs(float_model)
    deltas: dict[str, np.ndarray] = {}
    for node in float_model.graph.node:
        if node.name not in targets or node.name not in qdq_nodes:
            continue
        mean = means.get(targets[node.name])
        w_q = _dequantized_weight(qdq, qdq_nodes[node.name])
        if mean is None or w_q is None:
            continue
        w = tensor_to_array(inits[node.input[1]]).astype(np.float64)
        if w.shape != w_q.shape:
            continue
        delta = _delta(node, w_q - w, mean)
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if (
            bias is not None
            and delta is not None
            and int(np.prod(inits[bias].dims)) not in (1, delta.size)
        ):
            continue  # a [M, N] Gemm C: no per-channel bias to correct
        if delta is not None and np.all(np.isfinite(delta)):
            deltas[node.name] = delta
    return deltas


def _new_bias(node: NodeProto, inits: Mapping[str, TensorProto], delta: np.ndarray) -> np.ndarray:
    if len(node.input) > 2 and node.input[2]:
        old = tensor_to_array(inits[node.input[2]]).astype(np.float64).reshape(-1)
        return (np.broadcast_to(old, delta.shape) + delta).astype(np.float32)
    return delta.astype(np.float32)


def corrected_model(
    float_path: Path, deltas: Mapping[str, np.ndarray], exclude: Sequence[str], out_path: Path
) -> int:
    """Write ``float_path`` with the bias corrections of the nodes not in ``exclude`` (those
    stay float, their weights exact) to ``out_path``; returns how many biases changed."""
    model = load_model(float_path)
    inits = {t.name: t for t in model.graph.initializer}
    skip = set(exclude)
    changed = 0
    for node in model.graph.node:
        delta = deltas.get(node.name)
        if delta is None or node.name in skip:
            continue
        name = f"{node.name}.bias_corrected"
        model.graph.initializer.append(array_to_tensor(_new_bias(node, inits, delta), name))
        if len(node.input) > 2:
            node.input[2] = name
        else:
            node.input.append(name)
        changed += 1
    save_model(model, out_path, external_data=model.ByteSize() > _TWO_GIB)
    return changed
