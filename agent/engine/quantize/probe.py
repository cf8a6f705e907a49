"""The node-error probe: how much error each node adds once the graph is quantized.

The float and the Q/DQ model run side by side (ONNX Runtime, no graph optimization) on a few
calibration frames, with every intermediate float tensor fetched; the error is measured per
output channel, so a channel that quantization wipes out is not hidden by a large neighbour
(the classic YOLO "boxes and scores in one Concat" failure).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from agent.engine.onnxgraph import (
    FLOAT,
    ModelProto,
    add_float_outputs,
    elem_types,
    load_model,
    save_model,
)

__all__ = ["channel_error", "find_outliers", "node_errors"]

log = logging.getLogger(__name__)


def _post_qdq_names(model: ModelProto) -> dict[str, str]:
    """tensor -> the output of the DequantizeLinear fed by its QuantizeLinear (what consumers
    of the tensor really see in a Q/DQ graph)."""
    q_out = {n.input[0]: n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    dq_of = {n.input[0]: n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return {t: dq_of[q] for t, q in q_out.items() if q in dq_of}


def _run_intermediates(
    model_path: Path,
    names: Sequence[str],
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    post_qdq: bool = False,
) -> dict[str, np.ndarray]:
    """Run ``model_path`` (no graph optimization) returning the float tensors ``names``, with
    the frames concatenated along the batch axis. ``post_qdq`` reads each tensor after its
    Q/DQ pair where it has one."""
    model = load_model(model_path)
    types = elem_types(model)
    produced = {o for node in model.graph.node for o in node.output}
    alias = _post_qdq_names(model) if post_qdq else {}
    fetch = {n: alias.get(n, n) for n in names if n in produced}
    wanted = [f for f in fetch.values() if types.get(f) == FLOAT]
    add_float_outputs(model, wanted)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="acts.", dir=model_path.parent) as tmp:
        probe = Path(tmp) / "probe.onnx"
        large = model.ByteSize() > (1 << 31) - (64 << 20)
        save_model(model, probe, external_data=large)
        session = ort.InferenceSession(str(probe), options, providers=["CPUExecutionProvider"])
        out_names = [o.name for o in session.get_outputs() if o.name in set(wanted)]
        runs = [[np.asarray(v) for v in session.run(out_names, dict(feed))] for feed in feeds]
        del session
    values = {
        name: np.concatenate([np.asarray(r[i]) for r in runs], axis=0)
        if runs[0][i].ndim
        else np.asarray(runs[0][i])
        for i, name in enumerate(out_names)
    }
    return {n: values[f] for n, f in fetch.items() if f in values}


def channel_error(ref: np.ndarray, test: np.ndarray) -> float:
    """Mean over channels (axis 1) of the per-channel ratio of error power to the reference's
    variance, each capped at 2 (1.0 = that channel's variation is gone).

    Per channel, because channels can mean different things: a YOLO ``[N, 4+C, A]`` output
    whose class-score rows are wiped out by a scale sized for pixel coordinates has a tiny
    tensor-wide error but half its channels at ~1. The mean (not the max) keeps a few nearly
    dead feature-map channels from flagging a healthy layer. Constant channels are skipped.
    """
    ref = np.asarray(ref, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    if ref.shape != test.shape:
        return float("inf")
    if ref.size == 0:
        return 0.0
    if ref.ndim >= 2:
        ref = np.moveaxis(ref, 1, 0).reshape(ref.shape[1], -1)
        test = np.moveaxis(test, 1, 0).reshape(test.shape[1], -1)
    else:
        ref, test = ref.reshape(1, -1), test.reshape(1, -1)
    centred = ref - ref.mean(axis=1, keepdims=True)
    signal = np.sum(centred * centred, axis=1)  # the variation carries the information
    noise = np.sum((ref - test) ** 2, axis=1)
    live = signal > max(float(signal.max()) * 1e-9, 1e-20)
    if not live.any():
        return 0.0
    return float(np.mean(np.minimum(noise[live] / signal[live], 2.0)))


def node_errors(
    float_path: Path, qdq_path: Path, feeds: Sequence[Mapping[str, np.ndarray]]
) -> tuple[dict[str, float], float]:
    """Error each node of the float model *adds* in the Q/DQ model: the noise ratio of its
    outputs minus the worst one of its activation inputs (graph inputs count as exact).

    Tensors keep their names through ORT's QDQ rewrite (a removed Relu's output is produced by
    its Conv), so matching is by name, reading each Q/DQ tensor after its DequantizeLinear (what
    consumers see), per channel (see :func:`channel_error`). Also returns the mean error of
    the graph outputs."""
    float_model = load_model(float_path, external_data=False)
    inits = {t.name for t in float_model.graph.initializer}
    tensors = [o for node in float_model.graph.node for o in node.output if o]
    ref = _run_intermediates(float_path, tensors, feeds)
    test = _run_intermediates(qdq_path, [t for t in tensors if t in ref], feeds, post_qdq=True)
    err = {name: channel_error(ref[name], test[name]) for name in ref if name in test}
    added: dict[str, float] = {}
    for node in float_model.graph.node:
        outs = [err[o] for o in node.output if o in err]
        if not outs:
            continue
        ins = [err.get(i, 0.0) for i in node.input if i and i not in inits]
        added[node.name] = max(0.0, max(outs) - max(ins, default=0.0))
    outputs = [err[o.name] for o in float_model.graph.output if o.name in err]
    return added, float(np.mean(outputs)) if outputs else 0.0


def find_outliers(errors: Mapping[str, float], *, k: float = 6.0, floor: float = 0.05) -> list[str]:
    """Nodes whose added error is above ``median + k * MAD`` and above ``floor``, worst first."""
    if not errors:
        return []
    values = np.array(list(errors.values()), dtype=np.float64)
    median = float(np.median(values))
    mad = float(np.median(np.abs(values - median)))
    limit = max(median + k * mad, floor)
    return sorted((n for n, e in errors.items() if e > limit), key=lambda n: -errors[n])
