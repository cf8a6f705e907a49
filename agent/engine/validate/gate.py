"""The validation gate: a candidate engine serves only if it agrees with the float reference.

On held-out frames (never used for calibration) the float reference runner and each candidate
run side by side, and a task-aware metric compares them (top-1 agreement, matched-box
agreement or relative error: :mod:`agent.engine.validate.metrics`).

Latency is measured per precision at batch 1 (warm-up first, then iterations bounded by a count
and a time budget, interleaved between candidates so that a noisy neighbour hurts all of them
alike). :func:`~agent.engine.validate.choice.choose_precision` then picks the fastest precision
that passes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from agent.config.model import ModelBundleConfig
from agent.core.errors import ValidationFailed
from agent.core.progress import ProgressFn, no_progress
from agent.engine.validate.metrics import compare_outputs, tolerance_for
from agent.engine.validate.results import LatencyStats, MetricResult, PrecisionResult

__all__ = ["Inferer", "measure_latency", "run_outputs", "validate_candidates"]

log = logging.getLogger(__name__)


class Inferer(Protocol):
    """What the gate needs of an (already active) runner."""

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def run_outputs(
    runner: Inferer, feeds: Sequence[Mapping[str, np.ndarray]]
) -> list[dict[str, np.ndarray]]:
    """Run every feed through an active runner; copies of the outputs, one dict per feed."""
    return [{k: np.array(v, copy=True) for k, v in runner.infer(f).items()} for f in feeds]


def measure_latency(
    runners: Mapping[str, Inferer],
    feed: Mapping[str, np.ndarray],
    *,
    warmup: int = 5,
    iterations: int = 200,
    max_seconds: float = 3.0,
) -> dict[str, LatencyStats]:
    """Batch-1 latency of each (active) runner, interleaved round-robin.

    Each runner gets ``warmup`` untimed runs, then rounds of one timed run per runner until each
    has ``iterations`` samples or ``max_seconds`` (for all of them together) have passed; at
    least 3 samples each are always taken.
    """
    for runner in runners.values():
        for _ in range(max(0, warmup)):
            runner.infer(feed)
    samples: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    deadline = time.perf_counter() + max(0.0, max_seconds)
    rounds = 0
    while rounds < iterations:
        # rotate the order each round so no runner always follows the same one
        shift = rounds % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            runners[name].infer(feed)
            samples[name].append(time.perf_counter() - start)
        rounds += 1
        if rounds >= 3 and time.perf_counter() > deadline:
            break
    return {name: LatencyStats.from_samples(s, warmup) for name, s in samples.items()}


def _compare(
    config: ModelBundleConfig,
    ref_out: list[dict[str, np.ndarray]],
    candidates: Mapping[str, Inferer],
    feeds: Sequence[Mapping[str, np.ndarray]],
    progress: ProgressFn,
) -> dict[str, MetricResult]:
    """The agreement metric of each candidate's outputs with the reference's."""
    metrics: dict[str, MetricResult] = {}
    total = max(1, len(candidates))
    for index, (prec, runner) in enumerate(candidates.items()):
        progress("validate", (index + 0.5) / (total + 1), f"{prec} on held-out frames")
        cand_out = run_outputs(runner, feeds)
        metrics[prec] = compare_outputs(config, ref_out, cand_out)
        # A NaN/inf output fails the gate whatever the agreement metric makes of it.
        metrics[prec].details["non_finite_frames"] = sum(
            1
            for out in cand_out
            if any(v.dtype.kind == "f" and not np.isfinite(v).all() for v in out.values())
        )
    return metrics


def _verdict(
    prec: str, metric: MetricResult, tolerance: float, latency: LatencyStats | None
) -> PrecisionResult:
    passed = metric.value >= tolerance if metric.higher_is_better else metric.value <= tolerance
    passed = passed and not metric.details.get("non_finite_frames")
    result = PrecisionResult(
        precision=prec,
        metric=metric.metric,
        value=float(metric.value),
        tolerance=tolerance,
        passed=bool(passed),
        higher_is_better=metric.higher_is_better,
        latency=latency,
        details=metric.details,
    )
    log.info(
        "validation result",
        extra={
            "precision": prec,
            "metric": metric.metric,
            "value": metric.value,
            "passed": passed,
            "p50_ms": result.p50_ms,
        },
    )
    return result


def validate_candidates(
    config: ModelBundleConfig,
    reference: Inferer,
    candidates: Mapping[str, Inferer],
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    latency_feed: Mapping[str, np.ndarray] | None = None,
    warmup: int = 5,
    iterations: int = 200,
    max_seconds: float = 3.0,
    progress: ProgressFn = no_progress,
) -> dict[str, PrecisionResult]:
    """Compare each (active) candidate with the (active) reference on ``feeds``, then measure
    the candidates' batch-1 latency. Returns one :class:`PrecisionResult` per candidate."""
    if not feeds:
        raise ValidationFailed(
            "no held-out frames to validate on",
            fix="add frames to the calibration folder (at least calibration.frames + "
            "calibration.heldout_frames files)",
        )
    progress("validate", 0.0, f"float reference on {len(feeds)} held-out frames")
    ref_out = run_outputs(reference, feeds)
    tolerance = tolerance_for(config)
    metrics = _compare(config, ref_out, candidates, feeds, progress)
    total = max(1, len(candidates))
    progress("validate", total / (total + 1), "latency at batch 1")
    feed = latency_feed if latency_feed is not None else feeds[0]
    latency = measure_latency(
        candidates, feed, warmup=warmup, iterations=iterations, max_seconds=max_seconds
    )
    results = {p: _verdict(p, m, tolerance, latency.get(p)) for p, m in metrics.items()}
    progress("validate", 1.0, "done")
    return results
