"""The validation gate: a candidate engine serves only if it agrees with the float reference.

On held-out frames (never used for calibration) the float reference runner and each candidate
run side by side, and a task-aware metric compares them (top-1 agreement, matched-box
agreement or relative error: :mod:`agent.engine.validate.metrics`). When the frames carry labels
(a bundle's ``heldout/``), the task metric against them (top-1 accuracy / mAP50,
:mod:`agent.engine.validate.taskmetric`) is measured for the float reference and each candidate,
and a candidate may fall at most ``drop_max`` below float. Frames stream: each frame is run
through every runner and folded into the accumulators before the next one is read, so memory
does not grow with the number of frames. The report says how much power the gate had
(:mod:`agent.engine.validate.power`) and warns when it had too few frames.

Latency is measured per precision at batch 1 (warm-up first, then iterations bounded by a count
and a time budget, interleaved between candidates so that a noisy neighbour hurts all of them
alike). :func:`~agent.engine.validate.choice.choose_precision` then picks the fastest precision
that passes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from agent.config.model import ModelBundleConfig
from agent.core.errors import ValidationFailed
from agent.core.progress import ProgressFn, no_progress
from agent.engine.validate.frames import GateFrame, as_gate_frame
from agent.engine.validate.metrics import Agreement, make_agreement, tolerance_for
from agent.engine.validate.power import gate_power
from agent.engine.validate.results import (
    GatePower,
    LatencyStats,
    MetricResult,
    PrecisionResult,
    TaskMetric,
)
from agent.engine.validate.taskmetric import BootstrapSpec, Tally, make_tally, task_metric

__all__ = [
    "GateLimits",
    "GateRun",
    "Inferer",
    "measure_latency",
    "run_outputs",
    "run_validation",
    "validate_candidates",
]

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


@dataclass(frozen=True)
class GateLimits:
    """What the gate checks beyond the agreement tolerance: how far the task metric against
    labels may drop below float (None: not checked), the bootstrap, and how many frames were
    wanted (for the warning when fewer came)."""

    drop_max: float | None = None
    bootstrap_samples: int = 1000
    seed: int = 0
    wanted_frames: int | None = None


@dataclass
class GateRun:
    """Everything one gate run measured."""

    results: dict[str, PrecisionResult]
    frames: int
    reference_metric: TaskMetric | None = None
    power: GatePower | None = None
    notes: list[str] = field(default_factory=list[str])


@dataclass
class _Tallies:
    """The accumulators of one streamed gate run."""

    agreement: dict[str, Agreement]
    tasks: dict[str, Tally]
    reference: Tally | None
    non_finite: dict[str, int]
    frames: int = 0
    first_feed: dict[str, np.ndarray] | None = None


def _copy(outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.array(v, copy=True) for k, v in outputs.items()}


def _non_finite(outputs: Mapping[str, np.ndarray]) -> bool:
    return any(v.dtype.kind == "f" and not np.isfinite(v).all() for v in outputs.values())


def _start(config: ModelBundleConfig, names: Iterable[str], labelled: bool) -> _Tallies:
    names = list(names)
    ref_tally = make_tally(config) if labelled else None
    tasks: dict[str, Tally] = {}
    if ref_tally is not None:
        tasks = {n: t for n in names if (t := make_tally(config)) is not None}
    return _Tallies(
        agreement={n: make_agreement(config) for n in names},
        tasks=tasks,
        reference=ref_tally,
        non_finite=dict.fromkeys(names, 0),
    )


def _stream(
    config: ModelBundleConfig,
    reference: Inferer,
    candidates: Mapping[str, Inferer],
    frames: Iterable[GateFrame | Mapping[str, np.ndarray]],
    *,
    progress: ProgressFn,
    total: int | None,
) -> _Tallies | None:
    """Run every frame through the reference and each candidate, folding the outputs into the
    accumulators before the next frame is read; None when there were no frames."""
    tallies: _Tallies | None = None
    for item in frames:
        frame = as_gate_frame(item)
        if tallies is None:
            tallies = _start(config, candidates, frame.label is not None)
            tallies.first_feed = {k: np.array(v, copy=True) for k, v in frame.feed.items()}
        ref_out = _copy(reference.infer(frame.feed))
        if tallies.reference is not None:
            tallies.reference.add(ref_out, frame)
        for name, runner in candidates.items():
            out = runner.infer(frame.feed)
            tallies.agreement[name].add(ref_out, out)
            tallies.non_finite[name] += int(_non_finite(out))
            if name in tallies.tasks:
                tallies.tasks[name].add(out, frame)
        tallies.frames += 1
        if total:
            progress("validate", 0.9 * tallies.frames / total, f"{tallies.frames}/{total} frames")
    return tallies


def _power(config: ModelBundleConfig, tallies: _Tallies, tolerance: float) -> GatePower | None:
    if config.task == "classify":
        return gate_power("frame", tallies.frames, tolerance)
    if config.task == "detect" and tallies.agreement:
        boxes = next(iter(tallies.agreement.values())).result().details["reference_boxes"]
        return gate_power("box", int(boxes), tolerance)
    return None


def _power_notes(power: GatePower | None, frames: int, limits: GateLimits) -> list[str]:
    """Warnings when the gate had fewer frames than wanted and too little power; a detector
    whose frames hold enough boxes has the power (agreement is per box) and is not warned."""
    notes: list[str] = []
    short = limits.wanted_frames is not None and frames < limits.wanted_frames
    if short and (power is None or not power.enough):
        notes.append(
            f"only {frames} held-out frames were available ({limits.wanted_frames} wanted by "
            "build.calibration.heldout_frames)"
        )
    if power is not None and not power.enough:
        notes.append(
            f"the gate had {power.trials} held-out {power.units}: a candidate whose true "
            f"agreement is {power.true_agreement:g} fails the {power.tolerance:g} tolerance with "
            f"probability {power.power:.2f} only ({power.required} {power.units} give "
            f"{power.target:.0%}); add labelled frames to the bundle's heldout/ folder "
            "(docs/validation.md)"
        )
    for note in notes:
        log.warning("validation gate: %s", note)
    return notes


def _verdict(
    prec: str,
    metric: MetricResult,
    tolerance: float,
    latency: LatencyStats | None,
    task: TaskMetric | None = None,
) -> PrecisionResult:
    passed = metric.value >= tolerance if metric.higher_is_better else metric.value <= tolerance
    passed = passed and not metric.details.get("non_finite_frames")
    passed = passed and (task is None or task.passed is not False)
    result = PrecisionResult(
        precision=prec,
        metric=metric.metric,
        value=float(metric.value),
        tolerance=tolerance,
        passed=bool(passed),
        higher_is_better=metric.higher_is_better,
        latency=latency,
        details=metric.details,
        task_metric=task,
    )
    log.info(
        "validation result",
        extra={
            "precision": prec,
            "metric": metric.metric,
            "value": metric.value,
            "task_metric": None if task is None else task.value,
            "passed": passed,
            "p50_ms": result.p50_ms,
        },
    )
    return result


def _task_metrics(
    tallies: _Tallies, limits: GateLimits
) -> tuple[TaskMetric | None, dict[str, TaskMetric]]:
    if tallies.reference is None:
        return None, {}
    boot = BootstrapSpec(limits.bootstrap_samples, limits.seed)
    ref = task_metric(tallies.reference, boot=boot)
    cands = {
        name: task_metric(t, tallies.reference, drop_max=limits.drop_max, boot=boot)
        for name, t in tallies.tasks.items()
    }
    return ref, cands


def run_validation(
    config: ModelBundleConfig,
    reference: Inferer,
    candidates: Mapping[str, Inferer],
    frames: Iterable[GateFrame | Mapping[str, np.ndarray]],
    *,
    limits: GateLimits | None = None,
    total: int | None = None,
    latency_feed: Mapping[str, np.ndarray] | None = None,
    warmup: int = 5,
    iterations: int = 200,
    max_seconds: float = 3.0,
    progress: ProgressFn = no_progress,
) -> GateRun:
    """Stream ``frames`` (feeds, or :class:`GateFrame` with labels) through the (active)
    reference and candidates, then measure the candidates' batch-1 latency."""
    limits = limits or GateLimits()
    if total is None and isinstance(frames, Sequence):
        total = len(frames)
    progress("validate", 0.0, "float reference and candidates on the held-out frames")
    tallies = _stream(config, reference, candidates, frames, progress=progress, total=total)
    if tallies is None or tallies.first_feed is None:
        raise ValidationFailed(
            "no held-out frames to validate on",
            fix="add labelled frames to the bundle's heldout/ folder, or frames to the "
            "calibration folder (at least calibration.frames + calibration.heldout_frames)",
        )
    tolerance = tolerance_for(config)
    metrics = {name: acc.result() for name, acc in tallies.agreement.items()}
    for name, metric in metrics.items():
        # A NaN/inf output fails the gate whatever the agreement metric makes of it.
        metric.details["non_finite_frames"] = tallies.non_finite[name]
    ref_metric, task = _task_metrics(tallies, limits)
    progress("validate", 0.9, "latency at batch 1")
    feed = latency_feed if latency_feed is not None else tallies.first_feed
    latency = measure_latency(
        candidates, feed, warmup=warmup, iterations=iterations, max_seconds=max_seconds
    )
    results = {
        p: _verdict(p, m, tolerance, latency.get(p), task.get(p)) for p, m in metrics.items()
    }
    power = _power(config, tallies, tolerance)
    notes = _power_notes(power, tallies.frames, limits)
    progress("validate", 1.0, "done")
    return GateRun(results, tallies.frames, ref_metric, power, notes)


def validate_candidates(
    config: ModelBundleConfig,
    reference: Inferer,
    candidates: Mapping[str, Inferer],
    feeds: Iterable[GateFrame | Mapping[str, np.ndarray]],
    *,
    latency_feed: Mapping[str, np.ndarray] | None = None,
    warmup: int = 5,
    iterations: int = 200,
    max_seconds: float = 3.0,
    progress: ProgressFn = no_progress,
    limits: GateLimits | None = None,
) -> dict[str, PrecisionResult]:
    """Compare each (active) candidate with the (active) reference on ``feeds``, then measure
    the candidates' batch-1 latency. Returns one :class:`PrecisionResult` per candidate
    (:func:`run_validation` returns the whole run: task metrics, power, notes)."""
    return run_validation(
        config,
        reference,
        candidates,
        feeds,
        limits=limits,
        latency_feed=latency_feed,
        warmup=warmup,
        iterations=iterations,
        max_seconds=max_seconds,
        progress=progress,
    ).results
