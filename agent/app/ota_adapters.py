"""The adapters that implement OTA's ports (:mod:`agent.ota.ports`) with the engine and the
running pipelines.

* :class:`EngineBuilderAdapter` (``EngineBuilder``): builds through :func:`engine_build_hook`
  (the whole build in the isolated, memory-capped child, engine cache: a rollback to a version
  built before is a cache hit; the daemon itself reads only ``model.yaml`` and hashes) and
  checks golden outputs with :class:`GoldenChecker`.
* :class:`PipelineServing` (``ModelServing``): hot swap between frames, probation figures from
  the model's pipeline stats.
* :class:`EventPublisher` (``StatePublisher``): the ``ota.state`` event plus the retained record.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from agent.app.ota_host import OtaHost
from agent.backends.base import Runner
from agent.backends.registry import get_backend
from agent.config.device import DeviceProfile
from agent.core.errors import OtaError, OtaReason, ValidationFailed
from agent.core.progress import ProgressFn, no_progress
from agent.engine.artifact import engine_sha256
from agent.engine.build.isolated import BuildJob, build_engine_isolated
from agent.engine.bundle import read_bundle_files
from agent.engine.cache import load_artifact
from agent.engine.validate.results import GateReport, PrecisionResult
from agent.ota.manifest import Golden, GoldenCase, validate_manifest
from agent.ota.record import BuildResult, GateVerdict, ProbationSample
from agent.ota.store import ENVELOPE_FILE
from agent.pipeline.stats import PipelineStats

__all__ = [
    "EngineBuilderAdapter",
    "EventPublisher",
    "GoldenChecker",
    "PipelineServing",
    "engine_build_hook",
    "gate_verdict",
    "golden_checker",
]


def engine_build_hook(
    profile: DeviceProfile,
    *,
    cache_dir: Path,
    calib_dirs: Mapping[str, Path] | None = None,
    precision: str = "auto",
    l4t_release: str | None = None,
    progress: ProgressFn = no_progress,
    gate_seconds: float = 3.0,
) -> Callable[[Path], BuildResult]:
    """A build function: bundle → validated artifact with the gate's batch-1 throughput.

    ``calib_dirs`` maps model name → calibration frames (default: ``calib/<name>/`` or the
    bundle's own ``calib/``)."""
    calib = dict(calib_dirs or {})

    def build(bundle_dir: Path) -> BuildResult:
        name = read_bundle_files(bundle_dir).config.name
        job = BuildJob(
            bundle_dir,
            profile,
            precision=precision,  # pyright: ignore[reportArgumentType]
            calib_dir=calib.get(name),
            cache_dir=cache_dir,
            l4t_release=l4t_release,
            gate_seconds=gate_seconds,
        )
        outcome = build_engine_isolated(job, progress)
        artifact = outcome.artifact
        chosen = outcome.report.results.get(artifact.precision)
        fps = None
        if chosen is not None and chosen.latency is not None and chosen.latency.mean_ms > 0:
            fps = chosen.latency.throughput
        return BuildResult(
            artifact_dir=artifact.dir,
            engine_sha256=engine_sha256(artifact),
            validated_fps=fps,
            precision=artifact.precision,
            cache_hit=outcome.cache_hit,
            details={"why": outcome.report.why},
            gate=gate_verdict(outcome.report, chosen),
        )

    return build


def gate_verdict(report: GateReport, chosen: PrecisionResult | None) -> GateVerdict | None:
    """The gate's verdict on the chosen precision for the OTA record (``artifact.gate``):
    ``task_drop`` = float reference's task metric − the chosen engine's (> 0 = worse), None
    without held-out labels."""
    if chosen is None:
        return None
    task = chosen.task_metric
    drop: float | None = None
    if task is not None and task.delta is not None:
        drop = -task.delta  # delta = candidate − reference
    elif task is not None and report.reference_metric is not None:
        drop = report.reference_metric.value - task.value
    return GateVerdict(chosen.passed, chosen.metric, chosen.value, drop)


class GoldenChecker:
    """Runs the golden inputs of the installed bundle's signed manifest through the new engine;
    raises :class:`~agent.core.errors.ValidationFailed` on a mismatch."""

    def __init__(self, *, threads: int = 0):
        self.threads = threads

    def __call__(self, result: BuildResult, bundle_dir: Path) -> None:
        golden = _golden_of(bundle_dir)
        if golden is None:
            return
        artifact = load_artifact(result.artifact_dir)
        backend = get_backend(artifact.backend)
        with backend.runner(artifact.dir, artifact.main_file, threads=self.threads) as runner:
            for case in golden.cases:
                _check_case(runner, golden, case, bundle_dir)


def golden_checker(*, threads: int = 0) -> GoldenChecker:
    return GoldenChecker(threads=threads)


def _golden_of(bundle_dir: Path) -> Golden | None:
    envelope_path = bundle_dir / ENVELOPE_FILE
    try:
        envelope: Any = json.loads(envelope_path.read_text(encoding="utf-8"))
        manifest = validate_manifest(envelope["manifest"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OtaError(
            f"cannot read the signed manifest of the installed bundle: {exc}",
            reason=OtaReason.STATE_CORRUPT,
            fix="push the version again",
            path=envelope_path,
        ) from exc
    return manifest.golden


def _check_case(runner: Runner, golden: Golden, case: GoldenCase, bundle_dir: Path) -> None:
    atol, rtol = float(golden.atol), float(golden.rtol)
    try:
        feed = np.load(bundle_dir / case.input, allow_pickle=False)
        expected = np.load(bundle_dir / case.expected, allow_pickle=False)
        outputs = runner.infer({golden.input_name: np.ascontiguousarray(feed)})
    except Exception as exc:  # a bad .npy, a wrong shape/dtype/input name
        raise ValidationFailed(
            f"golden case {case.input}: cannot run it: {type(exc).__name__}: {exc}",
            fix="ship golden inputs as plain .npy arrays with the model input's "
            "name, shape and dtype (edge-agent push --golden DIR)",
        ) from exc
    name = golden.output_name or next(iter(outputs))
    if name not in outputs:
        raise ValidationFailed(
            f"golden output {name!r} is not an output of the engine ({sorted(outputs)})",
            fix="set the golden output name to one of the model's outputs",
        )
    got = outputs[name]
    if got.shape != expected.shape:
        raise ValidationFailed(
            f"golden case {case.input}: output shape {got.shape} != expected {expected.shape}",
            fix="regenerate the expected outputs with this model",
        )
    if not np.allclose(got, expected, atol=atol, rtol=rtol, equal_nan=False):
        worst = float(np.max(np.abs(got.astype(np.float64) - expected)))
        raise ValidationFailed(
            f"golden case {case.input}: max |Δ| {worst:.4g} exceeds atol {atol:g} + rtol {rtol:g}",
            fix="check the model export, or loosen the golden tolerance if the "
            "quantized engine is expected to differ this much",
        )


class EngineBuilderAdapter:
    """``EngineBuilder`` from a build function and an optional golden check."""

    def __init__(
        self,
        build: Callable[[Path], BuildResult],
        golden: Callable[[BuildResult, Path], None] | None = None,
    ):
        self._build = build
        self._golden = golden

    def build(self, bundle_dir: Path) -> BuildResult:
        return self._build(bundle_dir)

    def check_golden(self, result: BuildResult, bundle_dir: Path) -> None:
        if self._golden is not None:
            self._golden(result, bundle_dir)


def _inference_fps(stats: PipelineStats | None) -> float | None:
    """Inferences/s of one worker from the pipeline's p50 inference latency."""
    latency = stats.latency_ms.get("infer") if stats is not None else None
    infer = latency.p50 if latency is not None else None
    return 1000.0 / infer if infer is not None and infer > 0 else None


class PipelineServing:
    """``ModelServing`` on the daemon's model registry (through :class:`OtaHost`)."""

    def __init__(self, host: OtaHost):
        self.host = host
        self._lock = threading.Lock()
        self._model: str | None = None
        self._last_nan: dict[str, int] = {}
        self._last_restarts: dict[str, int] = {}

    def activate(self, model: str, bundle_dir: Path, result: BuildResult) -> None:
        self.host.swap_model(model, bundle_dir, result.artifact_dir)
        with self._lock:
            stats = self.host.pipeline_stats(model)
            self._last_nan[model] = stats.nan_outputs if stats is not None else 0
            self._last_restarts[model] = stats.worker_restarts if stats is not None else 0
            self._model = model

    def probation_sample(self) -> ProbationSample:
        with self._lock:
            model = self._model
            if model is None:
                return ProbationSample(fps=None)
            stats = self.host.pipeline_stats(model)
            if stats is None:
                return ProbationSample(fps=None, crashed=True)
            nan, restarts = stats.nan_outputs, stats.worker_restarts
            new_nan = max(0, nan - self._last_nan.get(model, 0))
            crashed = restarts > self._last_restarts.get(model, 0) or bool(
                self.host.pipeline_failures(model)
            )
            self._last_nan[model], self._last_restarts[model] = nan, restarts
        frames = sum(s.results for s in stats.sources.values())
        return ProbationSample(
            fps=_inference_fps(stats), nan_outputs=new_nan, crashed=crashed, frames=frames
        )

    def baseline_sample(self, model: str) -> ProbationSample | None:
        """The model serving now (before a swap), measured the way probation measures."""
        return ProbationSample(fps=_inference_fps(self.host.pipeline_stats(model)))


class EventPublisher:
    """``StatePublisher``: every record change as an ``ota.state`` event and to ``sink`` (the
    retained MQTT record, once telemetry is wired)."""

    def __init__(self, host: OtaHost):
        self.host = host
        self.sink: Callable[[dict[str, Any]], None] = lambda rec: None

    def publish_state(self, record: dict[str, Any]) -> None:
        self.host.emit("ota.state", record)
        self.sink(record)
