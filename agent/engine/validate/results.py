"""What the gate measured and decided: latency, metric and per-precision results, the report
stored in each artifact's manifest."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["GateReport", "LatencyStats", "MetricResult", "PrecisionResult"]

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
