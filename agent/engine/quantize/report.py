"""The quantization report: recipe, ranges, probe results, the per-node sensitivity ranking
and, per node kept in float, why."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from agent.engine.isolate.limits import peak_rss_mib
from agent.engine.onnxgraph import ModelProto
from agent.engine.quantize.exclusion import Exclusion
from agent.engine.quantize.job import Job
from agent.engine.quantize.placement import quantized_consumers
from agent.engine.quantize.qdq import count_qdq

__all__ = ["REASONS", "FloatReasons", "build_report"]

log = logging.getLogger(__name__)

#: Why a node is kept in float (``report["kept_float"][i]["reason"]``).
REASONS = {
    "keep_float": "keep_float in model.yaml",
    "tail": "float tail (post-processing)",
    "auto": "auto: added error outlier",
    "search": "requested by search",
}


@dataclass(frozen=True)
class FloatReasons:
    """The nodes asked to stay float, by who asked."""

    keep_float: list[str]
    search: list[str]
    tail: list[str]

    def requested(self) -> list[str]:
        """Every node asked to stay float, once, in a stable order."""
        return list(dict.fromkeys([*self.keep_float, *self.search, *self.tail]))

    def kept(self, auto: list[str], errors: dict[str, float]) -> list[dict[str, Any]]:
        """``[{"node", "reason", "added_error"}]``: the first reason that applies per node;
        ``added_error`` is the probe's measurement with the node quantized (None where the
        node was float during the measurement)."""
        rows: list[dict[str, Any]] = []
        seen: set[str] = set()
        for key, names in (
            ("keep_float", self.keep_float),
            ("search", self.search),
            ("tail", self.tail),
            ("auto", auto),
        ):
            for name in names:
                if name in seen:
                    continue
                seen.add(name)
                error = errors.get(name) if key == "auto" else None
                rows.append(
                    {
                        "node": name,
                        "reason": REASONS[key],
                        "added_error": None if error is None else round(error, 6),
                    }
                )
        return rows


def _sensitivity(
    job: Job, model: ModelProto, exclusion: Exclusion, requested: list[str]
) -> list[dict[str, Any]]:
    """Every quantized node with its added error (first measurement), worst first, with the
    quantized consumers that must stay float with it for its outputs to stay float."""
    ops = {n.name: n.op_type for n in model.graph.node}
    consumers = quantized_consumers(model, job.recipe)
    skip = set(requested)
    ranked = sorted(
        ((n, e) for n, e in exclusion.errors.items() if n not in skip),
        key=lambda kv: (-kv[1], kv[0]),
    )
    return [
        {
            "node": name,
            "op": ops.get(name, ""),
            "added_error": round(error, 6),
            "float_with": [c for c in consumers.get(name, []) if c not in skip],
        }
        for name, error in ranked
    ]


def build_report(
    job: Job, model: ModelProto, reasons: FloatReasons, exclusion: Exclusion
) -> dict[str, Any]:
    """The report of one quantization (ranges and memory are added by the caller)."""
    rcp, method = job.recipe, job.method
    requested = reasons.requested()
    kept = reasons.kept(exclusion.auto, exclusion.errors)
    worst = sorted(exclusion.final_errors.items(), key=lambda kv: -kv[1])[:8]
    return {
        "recipe": rcp.name,
        "recipe_description": rcp.description,
        "activation_type": rcp.activation_type,
        "weight_type": rcp.weight_type,
        "per_channel": rcp.per_channel,
        "op_types": list(rcp.op_types) if rcp.op_types else "all",
        "method": method,
        "percentile": job.percentile if method == "percentile" else None,
        "calibration_frames": len(job.calib.calib),
        "calibration_batch": job.batch,
        "qdq_nodes": count_qdq(job.out_path),
        "node_error_before": {n: round(e, 6) for n, e in sorted(exclusion.errors.items())},
        "output_error_before": exclusion.out_err,
        "output_error": exclusion.final_out_err,
        "auto_exclusion_reverted": exclusion.reverted,
        "float_tail": reasons.tail,
        "worst_node_errors": {n: round(e, 6) for n, e in worst},
        "sensitivity": _sensitivity(job, model, exclusion, requested),
        "kept_float": kept,
        "float_reasons": {row["node"]: row["reason"] for row in kept},
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "prepare_notes": list(job.prepared.notes),
    }
