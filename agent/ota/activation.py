"""From an installed bundle to a committed version: build + validate, hot swap, probation,
then commit or roll back."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from agent.core.errors import OtaReason
from agent.core.logs import log_fields
from agent.ota.building import build_bundle, check_golden, wait_for_build_admission
from agent.ota.context import UpdateContext
from agent.ota.control import StepFailed, Stopped
from agent.ota.probation import Observation, Thresholds, Verdict, probation_verdict, sample_fault
from agent.ota.record import BuildResult
from agent.ota.rollback import roll_back_after_verdict, rollback_target
from agent.ota.states import UpdateState

log = logging.getLogger(__name__)

S = UpdateState


def build_and_activate(ctx: UpdateContext, model: str, version: int, bundle_dir: Path) -> None:
    """building → validating → activating → probation → active | rolled_back | failed."""
    wait_for_build_admission(ctx)
    ctx.tracker.transition(S.BUILDING)
    result = build_bundle(ctx, bundle_dir, "engine build failed")
    ctx.tracker.update(artifact=result.to_json(), validated_fps=result.validated_fps)
    ctx.tracker.transition(S.VALIDATING)
    check_golden(ctx, result, bundle_dir)
    previous = rollback_target(ctx, model, exclude_version=version)
    ctx.tracker.update(previous=previous)
    baseline = baseline_fps(ctx, model)
    ctx.tracker.update(baseline_fps=baseline)
    ctx.tracker.transition(S.ACTIVATING)
    try:
        ctx.ports.serving.activate(model, bundle_dir, result)
    except Exception as exc:
        raise StepFailed(
            S.FAILED,
            OtaReason.ACTIVATE_FAILED,
            f"activation failed, previous model serves: {exc}",
        ) from exc
    ctx.tracker.transition(S.PROBATION)
    verdict = watch_probation(ctx, result, baseline)
    if verdict is not None:
        roll_back_after_verdict(ctx, model, previous, verdict)
        return
    ctx.store.commit(
        model,
        version,
        bundle_dir,
        engine_sha256=result.engine_sha256,
        artifact_dir=result.artifact_dir,
    )
    ctx.tracker.transition(S.ACTIVE)


def baseline_fps(ctx: UpdateContext, model: str) -> float | None:
    """The serving (old) model's inference throughput in its pipeline, or None."""
    try:
        sample = ctx.ports.serving.baseline_sample(model)
    except Exception:  # a figure we cannot get must not stop the update
        log.exception("baseline_sample hook failed", extra=log_fields(model=model))
        return None
    fps = None if sample is None else sample.fps
    return fps if fps is not None and fps > 0 else None


def watch_probation(
    ctx: UpdateContext, result: BuildResult, baseline: float | None
) -> Verdict | None:
    """Sample the new model every ``ota.probation_interval_s`` for ``ota.probation_s``; None
    when it passes (see :mod:`agent.ota.probation` for the verdict)."""
    window = ctx.config.probation_s
    if window <= 0:
        return None
    start = time.monotonic()
    deadline = start + window
    observed: list[Observation] = []
    while (remaining := deadline - time.monotonic()) > 0:
        if ctx.stop.wait(min(ctx.config.probation_interval_s, remaining)):
            raise Stopped
        obs = Observation(ctx.ports.serving.probation_sample(), time.monotonic() - start)
        fault = sample_fault(obs)
        if fault is not None:
            return fault
        observed.append(obs)
    limits = Thresholds(result.validated_fps, baseline, ctx.config.probation_min_fps_fraction)
    return probation_verdict(observed, limits)
