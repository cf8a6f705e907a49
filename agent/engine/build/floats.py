"""Which nodes an INT8 engine keeps in float, and why: the per-layer sensitivity ranking the
accuracy search reads, and the reasons the build report and ``inspect`` show."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.engine.build.outcome import FloatLayer
from agent.engine.onnxgraph import load_model
from agent.engine.quantize.entry import QuantizedModel
from agent.engine.quantize.placement import quantized_consumers
from agent.engine.quantize.recipes import RECIPES

__all__ = [
    "GraphFacts",
    "SearchReason",
    "explain_float_layers",
    "graph_facts",
    "sensitivity_ranking",
]

log = logging.getLogger(__name__)

REASON_MODEL_YAML = "keep_float in model.yaml"
REASON_TAIL = "float tail: after the last weighted layer (post-processing)"
REASON_AUTO = "automatic: its added error was far above the other layers'"

#: why the accuracy search keeps a node in float, and the error it added when ranked
SearchReason = tuple[str, float | None]


class GraphFacts:
    """Op type of each node and, per node, the consumers the recipe quantizes (which would
    quantize the node's output again unless they stay float with it)."""

    def __init__(self, ops: Mapping[str, str], consumers: Mapping[str, Sequence[str]]) -> None:
        self.ops = dict(ops)
        self.consumers = {k: list(v) for k, v in consumers.items()}


@functools.lru_cache(maxsize=4)
def graph_facts(onnx_path: Path, recipe: str) -> GraphFacts:
    """Read the prepared model's node op types and quantized consumers (once per prepared
    file: every attempt of a build's accuracy search asks for the same one)."""
    model = load_model(onnx_path, external_data=False)
    ops = {n.name: n.op_type for n in model.graph.node}
    return GraphFacts(ops, quantized_consumers(model, RECIPES[recipe]))


def sensitivity_ranking(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``[{"node", "op", "added_error"}, ...]`` worst first: the quantizer's own ranking
    (``report["sensitivity"]``, always written for INT8)."""
    ranked = report.get("sensitivity")
    if not isinstance(ranked, list):
        return []
    return [dict(r) for r in ranked if isinstance(r, Mapping) and "node" in r]


def _errors(report: Mapping[str, Any]) -> dict[str, float]:
    return {
        str(r["node"]): float(r["added_error"])
        for r in sensitivity_ranking(report)
        if r.get("added_error") is not None
    }


def explain_float_layers(
    quantized: QuantizedModel,
    keep_float: Sequence[str],
    ops: Mapping[str, str],
    search_reasons: Mapping[str, SearchReason] | None = None,
) -> tuple[FloatLayer, ...]:
    """One :class:`FloatLayer` per node ``quantized`` keeps in float, with its reason: the
    accuracy search, the quantizer's own reason (``report["float_reasons"]``), ``keep_float``
    in model.yaml, the float tail or the automatic exclusion."""
    report = quantized.report
    errors = _errors(report)
    quantizer_reasons = report.get("float_reasons")
    own = dict(quantizer_reasons) if isinstance(quantizer_reasons, Mapping) else {}
    tail = set(report.get("float_tail") or ())
    search = dict(search_reasons or {})
    layers: list[FloatLayer] = []
    for node in quantized.excluded_nodes:
        if node in search:
            reason, error = search[node]
            error = errors.get(node) if error is None else error
            layers.append(FloatLayer(node, ops.get(node, ""), reason, error))
            continue
        if node in own:
            reason = str(own[node])
        elif node in keep_float:
            reason = REASON_MODEL_YAML
        elif node in tail:
            reason = REASON_TAIL
        elif node in quantized.auto_excluded:
            reason = REASON_AUTO
        else:
            reason = "kept in float by the quantizer"
        layers.append(FloatLayer(node, ops.get(node, ""), reason, errors.get(node)))
    return tuple(layers)
