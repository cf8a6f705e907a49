"""What the gate measured and decided: latency, metric and per-precision results, the report
stored in each artifact's manifest."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "GatePower",
    "GateReport",
    "LatencyStats",
    "MetricResult",
    "PrecisionResult",
    "TaskMetric",
]

log = logging.getLogger(__name__)


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


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class TaskMetric:
    """A task metric against the held-out labels (``top1_accuracy`` or ``map50``) with its 95 %
    interval; for a candidate also the difference to the float reference (``delta``, paired
    95 % interval), the largest drop allowed and whether it stays within it."""

    metric: str
    value: float
    ci_low: float
    ci_high: float
    frames: int
    objects: int
    method: str
    delta: float | None = None
    delta_low: float | None = None
    delta_high: float | None = None
    drop_max: float | None = None
    passed: bool | None = None

    def describe(self) -> str:
        text = f"{self.metric} {self.value:.4f} [{self.ci_low:.4f}, {self.ci_high:.4f}]"
        if self.delta is not None:
            text += f", {self.delta * 100:+.2f} pt vs float"
            if self.delta_low is not None and self.delta_high is not None:
                text += f" [{self.delta_low * 100:+.2f}, {self.delta_high * 100:+.2f}]"
            if self.drop_max is not None:
                text += f" (may drop {self.drop_max * 100:g} pt)"
        return text

    def to_json(self) -> dict[str, Any]:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TaskMetric:
        passed = data.get("passed")
        return cls(
            metric=str(data["metric"]),
            value=float(data["value"]),
            ci_low=float(data["ci_low"]),
            ci_high=float(data["ci_high"]),
            frames=int(data.get("frames", 0)),
            objects=int(data.get("objects", 0)),
            method=str(data.get("method", "")),
            delta=_opt_float(data.get("delta")),
            delta_low=_opt_float(data.get("delta_low")),
            delta_high=_opt_float(data.get("delta_high")),
            drop_max=_opt_float(data.get("drop_max")),
            passed=None if passed is None else bool(passed),
        )


@dataclass(frozen=True)
class GatePower:
    """The gate's power at the count it compared: the probability that a candidate whose true
    agreement is ``true_agreement`` fails ``tolerance`` with ``trials`` frames (or boxes);
    ``required`` trials reach ``target`` (see :mod:`agent.engine.validate.power`)."""

    unit: str
    trials: int
    tolerance: float
    true_agreement: float
    power: float
    target: float
    required: int

    @property
    def enough(self) -> bool:
        return self.required <= 0 or self.trials >= self.required

    @property
    def units(self) -> str:
        """The unit, plural (frames, boxes)."""
        return self.unit + ("es" if self.unit.endswith("x") else "s")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GatePower:
        return cls(
            unit=str(data["unit"]),
            trials=int(data["trials"]),
            tolerance=float(data["tolerance"]),
            true_agreement=float(data["true_agreement"]),
            power=float(data["power"]),
            target=float(data.get("target", 0.95)),
            required=int(data["required"]),
        )


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
    task_metric: TaskMetric | None = None

    @property
    def p50_ms(self) -> float | None:
        return self.latency.p50_ms if self.latency else None

    def describe(self) -> str:
        op = "≥" if self.higher_is_better else "≤"
        verdict = "passes" if self.passed else "FAILS"
        text = (
            f"{self.precision} {verdict}: {self.metric} {self.value:.4f} "
            f"(needs {op} {self.tolerance:g})"
        )
        if self.task_metric is not None:
            text += f", {self.task_metric.describe()}"
        return text

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
            "task_metric": None if self.task_metric is None else self.task_metric.to_json(),
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
            task_metric=TaskMetric.from_json(data["task_metric"])
            if data.get("task_metric")
            else None,
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
    reference_metric: TaskMetric | None = None
    power: GatePower | None = None
    notes: list[str] = field(default_factory=list[str])
    heldout: str = ""

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
            "heldout": self.heldout,
            "reference_metric": None
            if self.reference_metric is None
            else self.reference_metric.to_json(),
            "power": None if self.power is None else self.power.to_json(),
            "notes": list(self.notes),
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
            reference_metric=TaskMetric.from_json(data["reference_metric"])
            if data.get("reference_metric")
            else None,
            power=GatePower.from_json(data["power"]) if data.get("power") else None,
            notes=[str(n) for n in data.get("notes", [])],
            heldout=str(data.get("heldout", "")),
        )

    def summary_lines(self) -> list[str]:
        """Human lines: task metrics against labels (float and candidates) and the power."""
        lines: list[str] = []
        if self.reference_metric is not None:
            ref = self.reference_metric
            lines.append(
                f"labelled held-out ({ref.frames} frames, {self.heldout or 'heldout/'}): "
                f"float {ref.describe()}"
            )
            for prec, r in self.results.items():
                if r.task_metric is not None:
                    lines.append(f"  {prec}: {r.task_metric.describe()}")
        if self.power is not None:
            p = self.power
            lines.append(
                f"gate power: {p.power:.3f} to fail a candidate with true agreement "
                f"{p.true_agreement:g} (tolerance {p.tolerance:g}) on {p.trials} {p.units} "
                f"({p.required} needed for {p.target:.0%})"
            )
        return lines

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
