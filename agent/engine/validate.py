"""The validation gate: a candidate engine serves only if it agrees with the float reference.

On held-out frames (never used for calibration) the float reference runner and each candidate
run side by side, and a task-aware metric compares them:

* ``classify`` — top-1 agreement (fraction of frames whose arg-max class is the same);
* ``detect`` — matched-box agreement: reference detections matched one-to-one by a candidate
  detection of the same class with IoU ≥ 0.5 (``ref_matched``), and the symmetric fraction of
  candidate detections matched by a reference one (``cand_matched``); the gate uses the minimum;
* ``raw`` — mean relative error ``Σ|cand − ref| / Σ|ref|`` over all outputs (lower is better).

Latency is measured per precision at batch 1 (warm-up first, then iterations bounded by a count
and a time budget, interleaved between candidates so that a noisy neighbour hurts all of them
alike). :func:`choose_precision` then picks the fastest precision that passes; INT8 that is not
faster than float is not chosen, and the report says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from agent.backends.base import ProgressFn, no_progress
from agent.config.schema import ModelBundleConfig, OutputSpec
from agent.core.errors import ValidationFailed
from agent.vision.decode import Detections, box_iou, decode_yolov8

__all__ = [
    "GateReport",
    "LatencyStats",
    "MetricResult",
    "PrecisionResult",
    "box_agreement",
    "choose_precision",
    "compare_outputs",
    "measure_latency",
    "run_outputs",
    "select_output",
    "validate_candidates",
]

log = logging.getLogger(__name__)


class Inferer(Protocol):
    """What the gate needs of an (already active) runner."""

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


#: IoU for a candidate box to count as the same detection as a reference box.
MATCH_IOU = 0.5
_FLOAT_FIRST = ("fp32", "fp16", "int8")


# ---------------------------------------------------------------------------- results


@dataclass(frozen=True)
class LatencyStats:
    """Batch-1 latency over ``iterations`` timed runs (after ``warmup`` untimed ones)."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    iterations: int
    warmup: int

    @property
    def throughput(self) -> float:
        """Inferences per second of one stream (1000 / mean latency)."""
        return 1000.0 / self.mean_ms if self.mean_ms > 0 else 0.0

    @classmethod
    def from_samples(cls, samples_s: Sequence[float], warmup: int) -> LatencyStats:
        if not samples_s:
            return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0, warmup)
        ms = np.asarray(samples_s, dtype=np.float64) * 1000.0
        return cls(
            p50_ms=float(np.percentile(ms, 50)),
            p90_ms=float(np.percentile(ms, 90)),
            p99_ms=float(np.percentile(ms, 99)),
            mean_ms=float(ms.mean()),
            max_ms=float(ms.max()),
            iterations=len(ms),
            warmup=warmup,
        )

    def to_json(self) -> dict[str, Any]:
        out = {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}
        out["throughput"] = round(self.throughput, 2)
        return out


@dataclass(frozen=True)
class MetricResult:
    metric: str
    value: float
    higher_is_better: bool
    details: dict[str, Any] = field(default_factory=dict[str, Any])


@dataclass(frozen=True)
class PrecisionResult:
    """The gate's verdict on one precision."""

    precision: str
    metric: str
    value: float
    tolerance: float
    passed: bool
    higher_is_better: bool
    latency: LatencyStats | None
    details: dict[str, Any] = field(default_factory=dict[str, Any])

    @property
    def p50_ms(self) -> float | None:
        return self.latency.p50_ms if self.latency else None

    def describe(self) -> str:
        op = "≥" if self.higher_is_better else "≤"
        verdict = "passes" if self.passed else "FAILS"
        return (
            f"{self.precision} {verdict}: {self.metric} {self.value:.4f} "
            f"(needs {op} {self.tolerance:g})"
        )

    def to_json(self) -> dict[str, Any]:
        lat = self.latency
        return {
            "precision": self.precision,
            "metric": self.metric,
            "value": round(self.value, 6),
            "tolerance": self.tolerance,
            "higher_is_better": self.higher_is_better,
            "passed": self.passed,
            "latency_ms": None
            if lat is None
            else {
                "p50": round(lat.p50_ms, 4),
                "p99": round(lat.p99_ms, 4),
                "p90": round(lat.p90_ms, 4),
                "mean": round(lat.mean_ms, 4),
                "iterations": lat.iterations,
            },
            "throughput": None if lat is None else round(lat.throughput, 2),
            "details": self.details,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PrecisionResult:
        lat = data.get("latency_ms")
        latency = None
        if lat:
            latency = LatencyStats(
                p50_ms=float(lat["p50"]),
                p90_ms=float(lat.get("p90", lat["p99"])),
                p99_ms=float(lat["p99"]),
                mean_ms=float(lat.get("mean", lat["p50"])),
                max_ms=float(lat.get("max", lat["p99"])),
                iterations=int(lat.get("iterations", 0)),
                warmup=0,
            )
        return cls(
            precision=str(data["precision"]),
            metric=str(data["metric"]),
            value=float(data["value"]),
            tolerance=float(data["tolerance"]),
            passed=bool(data["passed"]),
            higher_is_better=bool(data.get("higher_is_better", True)),
            latency=latency,
            details=dict(data.get("details", {})),
        )


@dataclass
class GateReport:
    """Everything the gate measured and decided; stored in each artifact's manifest."""

    task: str
    frames: int
    reference: str
    results: dict[str, PrecisionResult]
    requested: str
    chosen: str | None = None
    why: str = ""
    measured_at: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "frames": self.frames,
            "reference": self.reference,
            "requested": self.requested,
            "chosen": self.chosen,
            "why": self.why,
            "measured_at": self.measured_at,
            "results": {p: r.to_json() for p, r in self.results.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GateReport:
        return cls(
            task=str(data["task"]),
            frames=int(data["frames"]),
            reference=str(data.get("reference", "")),
            results={p: PrecisionResult.from_json(r) for p, r in data["results"].items()},
            requested=str(data.get("requested", "auto")),
            chosen=data.get("chosen"),
            why=str(data.get("why", "")),
            measured_at=str(data.get("measured_at", "")),
        )

    def table_rows(self) -> list[list[str]]:
        rows: list[list[str]] = []
        for prec, r in self.results.items():
            rows.append(
                [
                    prec + (" *" if prec == self.chosen else ""),
                    r.metric,
                    f"{r.value:.4f}",
                    "-" if r.latency is None else f"{r.latency.p50_ms:.3f}",
                    "-" if r.latency is None else f"{r.latency.p99_ms:.3f}",
                    "yes" if r.passed else "NO",
                ]
            )
        return rows


# ---------------------------------------------------------------------------- metrics


def select_output(outputs: Mapping[str, np.ndarray], spec: OutputSpec) -> np.ndarray:
    """The output the bundle decodes: ``output.name`` or the first one."""
    if spec.name is not None:
        if spec.name not in outputs:
            raise ValidationFailed(
                f"output '{spec.name}' named in model.yaml is not produced by the engine "
                f"(outputs: {sorted(outputs)})",
                fix="fix output.name in model.yaml",
            )
        return outputs[spec.name]
    return next(iter(outputs.values()))


def _match_count(ref: Detections, cand: Detections, iou_min: float) -> int:
    """One-to-one greedy matching (reference by score) of same-class boxes with IoU ≥ iou_min."""
    if len(ref) == 0 or len(cand) == 0:
        return 0
    iou = box_iou(ref.boxes, cand.boxes)
    iou[ref.class_ids[:, None] != cand.class_ids[None, :]] = 0.0
    taken = np.zeros(len(cand), dtype=bool)
    matched = 0
    for i in np.argsort(-ref.scores, kind="stable"):
        row = np.where(taken, 0.0, iou[i])
        j = int(np.argmax(row))
        if row[j] >= iou_min:
            taken[j] = True
            matched += 1
    return matched


def box_agreement(
    reference: Sequence[Detections],
    candidate: Sequence[Detections],
    iou_min: float = MATCH_IOU,
) -> MetricResult:
    """Matched-box agreement over frames; value = min(ref_matched, cand_matched)."""
    n_ref = sum(len(d) for d in reference)
    n_cand = sum(len(d) for d in candidate)
    matched = sum(_match_count(r, c, iou_min) for r, c in zip(reference, candidate, strict=True))
    ref_frac = matched / n_ref if n_ref else (1.0 if n_cand == 0 else 0.0)
    cand_frac = matched / n_cand if n_cand else (1.0 if n_ref == 0 else 0.0)
    return MetricResult(
        "box_agreement",
        min(ref_frac, cand_frac),
        True,
        {
            "ref_matched": round(ref_frac, 6),
            "cand_matched": round(cand_frac, 6),
            "reference_boxes": n_ref,
            "candidate_boxes": n_cand,
            "matched": matched,
            "iou": iou_min,
        },
    )


def compare_outputs(
    config: ModelBundleConfig,
    reference: Sequence[Mapping[str, np.ndarray]],
    candidate: Sequence[Mapping[str, np.ndarray]],
) -> MetricResult:
    """The task-aware agreement of candidate outputs with reference outputs (one per frame)."""
    if len(reference) != len(candidate):
        raise ValueError("reference and candidate need the same number of frames")
    spec = config.output
    if config.task == "classify":
        ref = [np.asarray(select_output(o, spec)).reshape(-1) for o in reference]
        cand = [np.asarray(select_output(o, spec)).reshape(-1) for o in candidate]
        same = sum(int(np.argmax(r) == np.argmax(c)) for r, c in zip(ref, cand, strict=True))
        frames = len(ref)
        return MetricResult(
            "top1_agreement",
            same / frames if frames else 1.0,
            True,
            {"agree": same, "frames": frames},
        )
    if config.task == "detect":
        ref_dets: list[Detections] = []
        cand_dets: list[Detections] = []
        for r, c in zip(reference, candidate, strict=True):
            kwargs = {
                "conf": spec.conf_threshold,
                "iou": spec.iou_threshold,
                "max_det": spec.max_detections,
            }
            ref_dets.extend(decode_yolov8(select_output(r, spec), **kwargs))
            cand_dets.extend(decode_yolov8(select_output(c, spec), **kwargs))
        result = box_agreement(ref_dets, cand_dets)
        result.details["frames"] = len(reference)
        return result
    num = 0.0
    den = 0.0
    for r, c in zip(reference, candidate, strict=True):
        for name, ref_arr in r.items():
            a = np.asarray(ref_arr, dtype=np.float64)
            b = np.asarray(c[name], dtype=np.float64)
            num += float(np.abs(b - a).sum())
            den += float(np.abs(a).sum())
    value = num / den if den > 0 else (0.0 if num == 0 else float("inf"))
    return MetricResult("relative_error", value, False, {"frames": len(reference)})


def tolerance_for(config: ModelBundleConfig) -> float:
    tol = config.tolerance
    if config.task == "classify":
        return tol.top1_agreement_min
    if config.task == "detect":
        return tol.box_agreement_min
    return tol.relative_error_max


# ---------------------------------------------------------------------------- running


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
    progress("validate", total / (total + 1), "latency at batch 1")
    feed = latency_feed if latency_feed is not None else feeds[0]
    latency = measure_latency(
        candidates, feed, warmup=warmup, iterations=iterations, max_seconds=max_seconds
    )
    results: dict[str, PrecisionResult] = {}
    for prec, metric in metrics.items():
        passed = metric.value >= tolerance if metric.higher_is_better else metric.value <= tolerance
        passed = passed and not metric.details.get("non_finite_frames")
        results[prec] = PrecisionResult(
            precision=prec,
            metric=metric.metric,
            value=float(metric.value),
            tolerance=tolerance,
            passed=bool(passed),
            higher_is_better=metric.higher_is_better,
            latency=latency.get(prec),
            details=metric.details,
        )
        log.info(
            "validation result",
            extra={
                "precision": prec,
                "metric": metric.metric,
                "value": metric.value,
                "passed": passed,
                "p50_ms": results[prec].p50_ms,
            },
        )
    progress("validate", 1.0, "done")
    return results


# ---------------------------------------------------------------------------- decision


def choose_precision(
    results: Mapping[str, PrecisionResult],
    requested: str,
    allowed: Sequence[str],
    available: Sequence[str],
) -> tuple[str, str]:
    """Pick the precision to serve; returns ``(precision, why)``.

    ``requested`` ``auto``: the fastest (by p50) precision that is allowed by the profile,
    available on the backend and passes the gate; INT8 that is not faster than the best float
    precision is not chosen. An explicit precision must pass, else :class:`ValidationFailed`
    with the numbers.
    """
    if requested != "auto":
        result = results.get(requested)
        if result is None:
            raise ValidationFailed(
                f"precision {requested} was requested but not validated",
                fix="this is a bug in the build orchestrator; report it",
            )
        if not result.passed:
            lat = f", p50 {result.p50_ms:.3f} ms" if result.p50_ms is not None else ""
            raise ValidationFailed(
                f"{result.describe()} against the float reference on "
                f"{result.details.get('frames', '?')} held-out frames{lat}; details "
                f"{result.details}",
                fix="calibrate with more representative frames (--calib), try "
                "calibration.method percentile or minmax, keep sensitive nodes in float "
                "(keep_float in model.yaml), or build --precision auto/fp32",
            )
        return requested, f"{requested} requested explicitly; {result.describe()}"

    considered = [p for p in allowed if p in available and p in results]
    skipped = [p for p in allowed if p not in available]
    notes: list[str] = []
    if skipped:
        notes.append(f"{', '.join(skipped)} not available on this backend")
    failing = [results[p] for p in considered if not results[p].passed]
    for r in failing:
        notes.append(r.describe())
    passing = [results[p] for p in considered if results[p].passed]
    if not passing:
        raise ValidationFailed(
            "no precision passed the validation gate: "
            + "; ".join(r.describe() for r in (results[p] for p in considered)),
            fix="check the calibration frames and the model's tolerance in model.yaml; the "
            "float engine should always match its own reference — if fp32 fails, the backend "
            "or the model is broken",
        )

    def speed(r: PrecisionResult) -> tuple[float, int]:
        p50 = r.p50_ms if r.p50_ms is not None else float("inf")
        return (p50, _FLOAT_FIRST.index(r.precision) if r.precision in _FLOAT_FIRST else 9)

    floats = [r for r in passing if r.precision != "int8"]
    best_float = min(floats, key=speed) if floats else None
    int8 = next((r for r in passing if r.precision == "int8"), None)
    if int8 is not None and best_float is not None and speed(int8)[0] >= speed(best_float)[0]:
        notes.append(
            f"int8 passes but is not faster than {best_float.precision} "
            f"(p50 {int8.p50_ms:.3f} ms vs {best_float.p50_ms:.3f} ms), so it is not chosen"
        )
        passing = [r for r in passing if r.precision != "int8"]
    chosen = min(passing, key=speed)
    why = f"auto: {chosen.precision} is the fastest passing precision"
    if chosen.p50_ms is not None:
        why += f" (p50 {chosen.p50_ms:.3f} ms"
        others = [r for r in passing if r is not chosen and r.p50_ms is not None]
        if others:
            why += "; " + ", ".join(f"{r.precision} {r.p50_ms:.3f} ms" for r in others)
        why += ")"
    why += f"; {chosen.describe()}"
    if notes:
        why += "; " + "; ".join(notes)
    return chosen.precision, why
