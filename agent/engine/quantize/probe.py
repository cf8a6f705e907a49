"""The node-error probe: how much error each node adds once the graph is quantized.

The float and the Q/DQ model run side by side (ONNX Runtime, no graph optimization) on a few
calibration frames; the error is measured per output channel, so a channel that quantization
wipes out is not hidden by a large neighbour (the classic YOLO "boxes and scores in one
Concat" failure). Memory is bounded: tensors are fetched group by group, frame by frame, and
folded into per-channel running sums (:mod:`agent.engine.quantize.chanstats`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from agent.engine.onnxgraph import FLOAT, ModelProto, elem_types, load_model
from agent.engine.quantize.chanstats import ChannelStats, channel_error
from agent.engine.quantize.memory import (
    DEFAULT_BUDGET_MIB,
    MemoryPlan,
    activation_bytes,
    plan_groups,
)
from agent.engine.quantize.stream import open_group

__all__ = ["channel_error", "find_outliers", "node_errors", "output_error"]

log = logging.getLogger(__name__)


def _post_qdq_names(model: ModelProto) -> dict[str, str]:
    """tensor -> the output of the DequantizeLinear fed by its QuantizeLinear (what consumers
    of the tensor really see in a Q/DQ graph)."""
    q_out = {n.input[0]: n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    dq_of = {n.input[0]: n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return {t: dq_of[q] for t, q in q_out.items() if q in dq_of}


def _probe_pairs(float_model: ModelProto, qdq_model: ModelProto) -> dict[str, str]:
    """Float tensor of the float model -> the Q/DQ model's tensor to compare it with (after
    its Q/DQ pair where it has one), for the float tensors both models produce."""
    float_types, qdq_types = elem_types(float_model), elem_types(qdq_model)
    produced = {o for node in qdq_model.graph.node for o in node.output}
    alias = _post_qdq_names(qdq_model)
    pairs: dict[str, str] = {}
    for node in float_model.graph.node:
        for name in node.output:
            real = alias.get(name, name)
            float_both = float_types.get(name) == FLOAT and qdq_types.get(real) == FLOAT
            if name and name in produced and float_both:
                pairs[name] = real
    return pairs


def _tensor_errors(
    float_model: ModelProto,
    qdq_model: ModelProto,
    pairs: Mapping[str, str],
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    budget_mib: int,
    tmp_dir: Path,
) -> dict[str, float]:
    """Per-channel error (:func:`channel_error`) of each tensor of ``pairs``, streamed: both
    models run once per tensor group per frame, each frame folded into running sums."""
    names = list(pairs)
    if not names or not feeds:
        return {}
    sizes = activation_bytes(float_model, names, next(iter(feeds[0].values())).shape)
    largest = max(sizes.values(), default=0)
    plan = MemoryPlan.of(budget_mib, float_model.ByteSize(), largest, copies=2)
    stats: dict[str, ChannelStats] = {}
    for group in plan_groups(names, sizes, plan.group_bytes):
        with (
            open_group(float_model, {n: n for n in group}, tmp_dir) as ref_run,
            open_group(qdq_model, {n: pairs[n] for n in group}, tmp_dir) as test_run,
        ):
            for feed in feeds:
                ref = ref_run.run(feed)
                test = test_run.run(feed)
                for name in group:
                    if name in ref and name in test:
                        stats.setdefault(name, ChannelStats()).add(ref[name], test[name])
                del ref, test
    return {name: s.error() for name, s in stats.items()}


def node_errors(
    float_path: Path,
    qdq_path: Path,
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    budget_mib: int = DEFAULT_BUDGET_MIB,
) -> tuple[dict[str, float], float]:
    """Error each node of the float model *adds* in the Q/DQ model: the noise ratio of its
    outputs minus the worst one of its activation inputs (graph inputs count as exact).

    Tensors keep their names through ORT's QDQ rewrite (a removed Relu's output is produced by
    its Conv), so matching is by name, reading each Q/DQ tensor after its DequantizeLinear (what
    consumers see), per channel (see :func:`channel_error`). Also returns the mean error of
    the graph outputs. Memory stays within ``budget_mib`` (see :mod:`.memory`)."""
    float_model = load_model(float_path)
    qdq_model = load_model(qdq_path)
    inits = {t.name for t in float_model.graph.initializer}
    pairs = _probe_pairs(float_model, qdq_model)
    err = _tensor_errors(
        float_model, qdq_model, pairs, feeds, budget_mib=budget_mib, tmp_dir=qdq_path.parent
    )
    added: dict[str, float] = {}
    for node in float_model.graph.node:
        outs = [err[o] for o in node.output if o in err]
        if not outs:
            continue
        ins = [err.get(i, 0.0) for i in node.input if i and i not in inits]
        added[node.name] = max(0.0, max(outs) - max(ins, default=0.0))
    outputs = [err[o.name] for o in float_model.graph.output if o.name in err]
    return added, float(np.mean(outputs)) if outputs else 0.0


def output_error(
    float_path: Path,
    qdq_path: Path,
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    budget_mib: int = DEFAULT_BUDGET_MIB,
) -> float:
    """Mean per-channel error of the graph outputs alone (one run per model and frame)."""
    float_model = load_model(float_path)
    qdq_model = load_model(qdq_path)
    outputs = {o.name for o in float_model.graph.output}
    pairs = {k: v for k, v in _probe_pairs(float_model, qdq_model).items() if k in outputs}
    err = _tensor_errors(
        float_model, qdq_model, pairs, feeds, budget_mib=budget_mib, tmp_dir=qdq_path.parent
    )
    return float(np.mean(list(err.values()))) if err else 0.0


def find_outliers(errors: Mapping[str, float], *, k: float = 6.0, floor: float = 0.05) -> list[str]:
    """Nodes whose added error is above ``median + k * MAD`` and above ``floor``, worst first."""
    if not errors:
        return []
    values = np.array(list(errors.values()), dtype=np.float64)
    median = float(np.median(values))
    mad = float(np.median(np.abs(values - median)))
    limit = max(median + k * mad, floor)
    return sorted((n for n, e in errors.items() if e > limit), key=lambda n: -errors[n])
