"""One attempt of the INT8 accuracy search: its record, its build context (another calibration
method, more nodes kept in float) and why it keeps each of its nodes in float."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.engine.build.candidates import Candidate
from agent.engine.build.context import BuildContext
from agent.engine.build.floats import SearchReason
from agent.engine.build.outcome import QuantizationRecord
from agent.engine.validate.results import PrecisionResult

__all__ = ["Attempt", "attempt_context", "search_reasons"]

log = logging.getLogger(__name__)


@dataclass
class Attempt:
    """An INT8 quantization tried by the search: ``rank`` most sensitive layers kept in float
    with ``method``; its gate ``result``, or the ``error`` that stopped it."""

    index: int
    method: str
    rank: int
    cand: Candidate
    result: PrecisionResult | None
    error: str | None
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.result is not None and self.result.passed

    @property
    def p50_ms(self) -> float | None:
        return None if self.result is None else self.result.p50_ms

    @property
    def float_count(self) -> int:
        """Every node this attempt keeps in float (the speed it trades)."""
        q = self.cand.quantization
        return 0 if q is None else len(q.excluded_nodes)

    @property
    def search_nodes(self) -> list[str]:
        q = self.cand.quantization
        if q is None:
            return []
        return [f.node for f in q.float_layers if f.reason.startswith("gate-driven search")]

    def describe(self) -> str:
        head = f"attempt {self.index} ({self.method}, {self.rank} layer(s) kept in float)"
        if self.error is not None:
            return f"{head}: failed: {self.error}"
        assert self.result is not None
        lat = "" if self.p50_ms is None else f", p50 {self.p50_ms:.3f} ms"
        return f"{head}: {self.result.describe()}{lat}"

    def to_json(self) -> dict[str, Any]:
        r = self.result
        return {
            "index": self.index,
            "method": self.method,
            "rank": self.rank,
            "float_layers": self.float_count,
            "search_float": self.search_nodes,
            "metric": None if r is None else r.metric,
            "value": None if r is None else round(r.value, 6),
            "tolerance": None if r is None else r.tolerance,
            "passed": self.passed,
            "p50_ms": None if self.p50_ms is None else round(self.p50_ms, 4),
            "seconds": round(self.seconds, 2),
            "error": self.error,
        }


def search_reasons(
    ranked: Sequence[Mapping[str, Any]],
    consumers: Mapping[str, Sequence[str]],
    base: QuantizationRecord | None,
) -> dict[str, SearchReason]:
    """node -> why the search keeps it in float: the ``ranked`` layers (rank k, worst first,
    with the error each added in the attempt they were ranked from) and the quantized
    consumers of their outputs, which would quantize those outputs again. Nodes ``base``
    already keeps in float are left out."""
    already = set(base.excluded_nodes) if base is not None else set()
    reasons: dict[str, SearchReason] = {}
    for rank, entry in enumerate(ranked, start=1):
        err = entry.get("added_error")
        error = None if err is None else float(err)
        reasons.setdefault(str(entry["node"]), (f"gate-driven search: rank {rank}", error))
    for rank, entry in enumerate(ranked, start=1):
        node = str(entry["node"])
        for consumer in consumers.get(node, ()):
            reasons.setdefault(
                consumer,
                (
                    f"gate-driven search: consumer of rank-{rank} layer {node} (it would "
                    "quantize that layer's output)",
                    None,
                ),
            )
    return {n: r for n, r in reasons.items() if n not in already}


def attempt_context(ctx: BuildContext, method: str, keep_float: Sequence[str]) -> BuildContext:
    """``ctx`` with another calibration method and more nodes in ``keep_float``; it shares
    the stopwatch and the notes, and starts its own peak RSS (the caller records it)."""
    cal = ctx.build_cfg.calibration.model_copy(update={"method": method})
    build = ctx.build_cfg.model_copy(update={"calibration": cal})
    profile = ctx.profile.model_copy(update={"build": build})
    keep = list(dict.fromkeys([*ctx.bundle.config.keep_float, *keep_float]))
    config = ctx.bundle.config.model_copy(update={"keep_float": keep})
    bundle = dataclasses.replace(ctx.bundle, config=config)
    return dataclasses.replace(ctx, profile=profile, bundle=bundle, peak_rss=None)
