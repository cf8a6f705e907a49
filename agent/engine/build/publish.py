"""The build steps after the backend build: validate every candidate against the float
reference, choose, and commit the fresh ones to the engine cache (the manifest carries the
gate report).

The float reference is the prepared float model run by ONNX Runtime on the CPU.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from agent.backends.base import Runner
from agent.backends.registry import get_backend
from agent.core.errors import ValidationFailed
from agent.engine.build.candidates import Candidate
from agent.engine.build.context import BuildContext, BuildInputs
from agent.engine.build.outcome import BuildOutcome
from agent.engine.cache import Artifact
from agent.engine.calibration import HeldoutFrames
from agent.engine.validate.choice import choose_precision
from agent.engine.validate.frames import GateFrame
from agent.engine.validate.gate import GateLimits, GateRun, run_validation
from agent.engine.validate.results import GateReport, PrecisionResult

__all__ = [
    "REFERENCE",
    "Verdict",
    "commit_candidates",
    "finish",
    "run_gate",
    "run_gate_report",
    "validate_step",
]

log = logging.getLogger(__name__)

REFERENCE = "fp32 onnxruntime CPU (prepared float model)"


@dataclass
class Verdict:
    """The gate's report and choice; ``failure`` when no precision may serve."""

    report: GateReport
    chosen: str | None
    failure: ValidationFailed | None


def _gate_limits(ctx: BuildContext, inputs: BuildInputs) -> GateLimits:
    """The gate's limits: the profile's ``build.gate`` section (a model.yaml override of the
    task-metric drop wins) and the held-out count wanted."""
    gate, task = ctx.build_cfg.gate, ctx.bundle.config.task
    drop: float | None = {"classify": gate.top1_drop_max, "detect": gate.map50_drop_max}.get(task)
    override = ctx.bundle.config.tolerance.metric_drop_max
    if override is not None:
        drop = override
    return GateLimits(
        drop_max=drop,
        bootstrap_samples=gate.bootstrap_samples,
        seed=gate.seed,
        wanted_frames=inputs.calib.heldout_wanted or None,
    )


def _gate_frames(inputs: BuildInputs) -> Iterator[GateFrame | dict[str, np.ndarray]]:
    """The held-out frames one at a time (read and preprocessed on demand)."""
    held = inputs.calib.heldout
    if isinstance(held, HeldoutFrames):
        return held.gate_frames(inputs.input_name)
    return ({inputs.input_name: np.ascontiguousarray(t)} for t in held)


def run_gate_report(ctx: BuildContext, inputs: BuildInputs, candidates: list[Candidate]) -> GateRun:
    """Validate ``candidates`` against the float reference on the held-out frames (streamed):
    agreement, task metric against labels when the frames have them, power, latency."""
    with contextlib.ExitStack() as stack:
        backend = ctx.backend
        ref_backend = backend if ctx.backend_name == "onnxruntime" else get_backend("onnxruntime")
        prepared = inputs.prepared
        reference = ref_backend.runner(
            prepared.path.parent, prepared.path.name, threads=ctx.threads
        )
        stack.enter_context(reference)
        runners: dict[str, Runner] = {}
        for cand in candidates:
            where, main_file = cand.location()
            # the cache key carries the DLA core the engine was built for
            runner = backend.runner(
                where, main_file, threads=ctx.threads, dla_core=cand.key.dla_core
            )
            stack.enter_context(runner)
            runners[cand.precision] = runner
        return run_validation(
            ctx.bundle.config,
            reference,
            runners,
            _gate_frames(inputs),
            limits=_gate_limits(ctx, inputs),
            total=len(inputs.calib.heldout),
            max_seconds=ctx.options.gate_seconds,
            iterations=ctx.options.gate_iterations,
            progress=ctx.progress,
        )


def run_gate(
    ctx: BuildContext, inputs: BuildInputs, candidates: list[Candidate]
) -> tuple[dict[str, PrecisionResult], int]:
    """The gate's verdict per candidate and the number of held-out frames it used
    (:func:`run_gate_report` has the whole run: task metrics, power, notes)."""
    run = run_gate_report(ctx, inputs, candidates)
    return run.results, run.frames


def validate_step(ctx: BuildContext, inputs: BuildInputs, candidates: list[Candidate]) -> Verdict:
    """Run the gate on every candidate and choose the precision to serve."""
    with ctx.watch.stage("validate"):
        run = run_gate_report(ctx, inputs, candidates)
    requested = ctx.options.precision
    report = GateReport(
        task=ctx.bundle.config.task,
        frames=run.frames,
        reference=REFERENCE,
        results=run.results,
        requested=requested,
        measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        reference_metric=run.reference_metric,
        power=run.power,
        notes=list(run.notes),
        heldout=("labelled " if inputs.calib.heldout_labelled else "unlabelled ")
        + inputs.calib.heldout_dir,
    )
    ctx.notes.extend(report.summary_lines())
    ctx.notes.extend(run.notes)
    try:
        chosen, why = choose_precision(
            run.results, requested, ctx.build_cfg.precisions, ctx.backend.precisions
        )
    except ValidationFailed as exc:
        report.why = exc.message
        return Verdict(report, None, exc)
    report.chosen, report.why = chosen, why
    return Verdict(report, chosen, None)


def _manifest(
    ctx: BuildContext, inputs: BuildInputs, cand: Candidate, verdict: Verdict
) -> dict[str, Any]:
    assert cand.result is not None
    config, bundle, calib, prepared = ctx.bundle.config, ctx.bundle, inputs.calib, inputs.prepared
    return {
        "backend": ctx.backend_name,
        "backend_version": ctx.backend_version,
        "precision": cand.precision,
        "main_file": cand.result.main_file,
        "inputs": [t.to_json() for t in cand.result.inputs],
        "outputs": [t.to_json() for t in cand.result.outputs],
        "static_shapes": ctx.static,
        "dynamic_batch": ctx.dynamic_batch,
        "overrides": ctx.options.overrides.key_json(),
        "shapes": {k: v.to_json() for k, v in prepared.shapes.items()},
        "input_size_hw": list(inputs.size_hw),
        "bundle": {
            "name": config.name,
            "version": config.version,
            "directory": str(bundle.directory),
            "onnx_sha256": bundle.onnx_sha256,
            "config": config.model_dump(mode="json"),
            "labels": list(bundle.labels),
        },
        "profile": ctx.profile.name,
        "calibration": {
            "directory": str(inputs.calib_dir),
            "sha256": calib.sha256,
            "calib_frames": len(calib.calib),
            "heldout_frames": len(calib.heldout),
            "heldout_dir": calib.heldout_dir,
            "heldout_labelled": calib.heldout_labelled,
        },
        "prepare_notes": list(prepared.notes),
        "validation": verdict.report.to_json(),
        "gate": {
            "passed": verdict.report.results[cand.precision].passed,
            "chosen": cand.precision == verdict.chosen,
        },
        **cand.manifest_extra(),
    }


def commit_candidates(
    ctx: BuildContext, inputs: BuildInputs, candidates: list[Candidate], verdict: Verdict
) -> dict[str, Artifact]:
    """Publish every fresh candidate to the cache (passing or not); returns every artifact."""
    artifacts: dict[str, Artifact] = {}
    ctx.progress("commit", 0.0, "publishing to the engine cache")
    for cand in candidates:
        if cand.artifact is not None:
            artifacts[cand.precision] = cand.artifact
            continue
        assert cand.staged is not None
        manifest = _manifest(ctx, inputs, cand, verdict)
        artifacts[cand.precision] = ctx.cache.commit(cand.key, cand.staged, manifest)
    ctx.progress("commit", 1.0, "done")
    return artifacts


def finish(
    ctx: BuildContext, inputs: BuildInputs, verdict: Verdict, artifacts: dict[str, Artifact]
) -> BuildOutcome:
    """The outcome of a fresh build, or the gate's :class:`ValidationFailed`."""
    chosen = verdict.chosen
    if verdict.failure is not None or chosen is None:
        raise verdict.failure or ValidationFailed("no precision chosen")
    config = ctx.bundle.config
    log.info(
        "engine built",
        extra={"model": config.name, "precision": chosen, "artifact": str(artifacts[chosen].dir)},
    )
    return BuildOutcome(
        artifact=artifacts[chosen],
        report=verdict.report,
        cache_hit=False,
        timings=ctx.watch.timings,
        peak_rss_mib=ctx.peak_rss,
        artifacts=artifacts,
        notes=ctx.notes + list(inputs.prepared.notes),
    )
