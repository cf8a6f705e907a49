"""The build's typed records: what a build returns (:class:`BuildOutcome`), what each freshly
built candidate records in its manifest, and the stage stopwatch."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from agent.engine.cache import Artifact
from agent.engine.validate.results import GateReport

__all__ = [
    "BuildOutcome",
    "BuildRecord",
    "FloatLayer",
    "QuantizationRecord",
    "Stopwatch",
    "max_rss",
]

log = logging.getLogger(__name__)


@dataclass
class BuildOutcome:
    """The chosen artifact, the gate report and how the build went."""

    artifact: Artifact
    report: GateReport
    cache_hit: bool
    timings: dict[str, float]
    peak_rss_mib: float | None
    artifacts: dict[str, Artifact] = field(default_factory=dict[str, Artifact])
    notes: list[str] = field(default_factory=list[str])

    def to_json(self) -> dict[str, Any]:
        return {
            "artifact": str(self.artifact.dir),
            "precision": self.artifact.precision,
            "why": self.report.why,
            "cache_hit": self.cache_hit,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "peak_rss_mib": None if self.peak_rss_mib is None else round(self.peak_rss_mib, 1),
            "artifacts": {p: str(a.dir) for p, a in self.artifacts.items()},
            "report": self.report.to_json(),
            "notes": self.notes,
        }


@dataclass(frozen=True)
class FloatLayer:
    """A node the INT8 engine keeps in float, and why."""

    node: str
    op: str
    reason: str
    added_error: float | None = None

    def to_json(self) -> dict[str, Any]:
        err = None if self.added_error is None else round(self.added_error, 6)
        return {"node": self.node, "op": self.op, "reason": self.reason, "added_error": err}


@dataclass(frozen=True)
class QuantizationRecord:
    """How an int8 candidate was quantized (the manifest's ``quantization`` section).

    ``float_layers`` lists every node kept in float with its reason; ``search`` is the
    gate-driven accuracy search's record (attempts, choice) when it ran."""

    recipe: str
    method: str
    excluded_nodes: tuple[str, ...]
    auto_excluded: tuple[str, ...]
    calib_sha256: str
    calibration_frames: int
    report: dict[str, Any]
    float_layers: tuple[FloatLayer, ...] = ()
    search: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "method": self.method,
            "excluded_nodes": list(self.excluded_nodes),
            "auto_excluded": list(self.auto_excluded),
            "float_layers": [f.to_json() for f in self.float_layers],
            "search": self.search,
            "calib_sha256": self.calib_sha256,
            "calibration_frames": self.calibration_frames,
            "report": self.report,
        }


@dataclass(frozen=True)
class BuildRecord:
    """How a candidate's backend build went (the manifest's ``build`` section)."""

    workspace_mib: int
    info: dict[str, Any]
    peak_rss_mib: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "workspace_mib": self.workspace_mib,
            "info": dict(self.info),
            "peak_rss_mib": None if self.peak_rss_mib is None else round(self.peak_rss_mib, 1),
        }


class Stopwatch:
    """Wall time per build stage (a stage entered twice adds up)."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self.timings[name] = self.timings.get(name, 0.0) + seconds


def max_rss(a: float | None, b: float | None) -> float | None:
    """The larger of two peak RSS figures, either of which may be unknown."""
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)
