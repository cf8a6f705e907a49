"""Rolling back: which version to fall back to, the rollback after a failed probation, and the
operator's ``rollback-model`` command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.core.errors import OtaReason
from agent.ota.building import build_bundle
from agent.ota.context import UpdateContext
from agent.ota.control import StepFailed
from agent.ota.probation import Verdict
from agent.ota.record import RollbackTarget
from agent.ota.states import UpdateState
from agent.ota.store import CommittedVersion

S = UpdateState


def rollback_target(
    ctx: UpdateContext, model: str, *, exclude_version: int | None
) -> RollbackTarget | None:
    """The version to fall back to: the committed one (during an update), else the newest
    previously committed version still installed, else the configured bundle."""
    candidates: list[CommittedVersion] = []
    current = ctx.store.committed(model)
    if current is not None:
        candidates.append(current)
    candidates.extend(ctx.store.history(model))
    for c in candidates:
        if c.version == exclude_version:
            continue
        if ctx.store.verify_installed(model, c.version):
            return RollbackTarget(c.version, c.bundle_dir, "ota")
    initial = ctx.initial_bundles.get(model)
    if initial is not None:
        return RollbackTarget(None, str(initial), "config")
    return None


def roll_back_after_verdict(
    ctx: UpdateContext, model: str, previous: RollbackTarget | None, verdict: Verdict
) -> None:
    """The new model failed probation: serve ``previous`` again (rolled_back), or fail."""
    reason, detail = verdict.reason, verdict.detail
    if previous is None:
        raise StepFailed(
            S.FAILED,
            reason,
            f"{detail}; no previous version to roll back to — the new model keeps serving",
        )
    try:
        back = build_bundle(ctx, Path(previous.bundle_dir), "rollback build failed")
        ctx.ports.serving.activate(model, Path(previous.bundle_dir), back)
    except StepFailed as exc:
        raise StepFailed(S.FAILED, reason, f"{detail}; {exc.detail}") from exc
    except Exception as exc:
        raise StepFailed(S.FAILED, reason, f"{detail}; rollback activation failed: {exc}") from exc
    ctx.tracker.transition(S.ROLLED_BACK, reason, f"{detail}; rolled back to {previous.describe()}")


def operator_rollback(ctx: UpdateContext, model: str) -> dict[str, Any]:
    """Roll ``model`` back to its previous kept version; the final record (as published)."""
    current = ctx.store.committed(model)
    version = None if current is None else current.version
    ctx.tracker.begin("rollback", S.BUILDING, model=model, version=version)
    with ctx.tracker.ending_errors("OTA rollback", ota_errors=False):
        if current is None:
            raise StepFailed(
                S.FAILED,
                OtaReason.NO_ROLLBACK_TARGET,
                f"no OTA version of {model} is committed; the configured bundle serves",
            )
        target = rollback_target(ctx, model, exclude_version=current.version)
        if target is None:
            raise StepFailed(
                S.FAILED,
                OtaReason.NO_ROLLBACK_TARGET,
                f"no earlier version of {model} is kept and none is configured",
            )
        _serve_target(ctx, model, target)
        ctx.tracker.transition(
            S.ROLLED_BACK,
            OtaReason.ROLLBACK_REQUESTED,
            f"rolled back from v{current.version} to {target.describe()}",
        )
    status = ctx.tracker.status()
    assert status is not None
    return status


def _serve_target(ctx: UpdateContext, model: str, target: RollbackTarget) -> None:
    """Build, swap in and commit the rollback target (un-commit for the configured bundle)."""
    ctx.tracker.update(previous=target)
    bundle_dir = Path(target.bundle_dir)
    result = build_bundle(ctx, bundle_dir, "rollback build failed")
    ctx.tracker.transition(S.ACTIVATING)
    try:
        ctx.ports.serving.activate(model, bundle_dir, result)
    except Exception as exc:
        raise StepFailed(
            S.FAILED, OtaReason.ACTIVATE_FAILED, f"rollback activation failed: {exc}"
        ) from exc
    if target.version is None:
        ctx.store.uncommit(model)
    else:
        ctx.store.commit(
            model,
            target.version,
            bundle_dir,
            engine_sha256=result.engine_sha256,
            artifact_dir=result.artifact_dir,
            demote_current=False,
        )
