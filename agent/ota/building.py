"""Build + validate a bundle through the :class:`~agent.ota.ports.EngineBuilder` port, once the
governor admits builds."""

from __future__ import annotations

import time
from pathlib import Path

from agent.core.errors import EdgeAgentError, OtaReason
from agent.ota.context import UpdateContext
from agent.ota.control import StepFailed, Stopped
from agent.ota.record import BuildResult
from agent.ota.states import UpdateState


def wait_for_build_admission(ctx: UpdateContext) -> None:
    """Poll the build admission (``waiting_for`` on the record while held back); fail after
    ``ota.build_wait_max_s``."""
    cfg = ctx.config
    start = time.monotonic()
    announced = False
    while not ctx.ports.admission.builds_allowed():
        waited = time.monotonic() - start
        if waited >= cfg.build_wait_max_s:
            raise StepFailed(
                UpdateState.FAILED,
                OtaReason.BUILD_NOT_ADMITTED,
                f"the governor held builds back for {waited:.0f} s "
                f"(ota.build_wait_max_s {cfg.build_wait_max_s:g})",
            )
        if not announced:
            ctx.tracker.update(waiting_for="build_admission")
            announced = True
        if ctx.stop.wait(min(cfg.build_poll_s, cfg.build_wait_max_s)):
            raise Stopped
    if announced:
        ctx.tracker.update(waiting_for=None)


def build_bundle(ctx: UpdateContext, bundle_dir: Path, what: str) -> BuildResult:
    try:
        return ctx.ports.builder.build(bundle_dir)
    except EdgeAgentError as exc:
        raise StepFailed(UpdateState.FAILED, OtaReason.BUILD_FAILED, f"{what}: {exc}") from exc


def check_golden(ctx: UpdateContext, result: BuildResult, bundle_dir: Path) -> None:
    try:
        ctx.ports.builder.check_golden(result, bundle_dir)
    except EdgeAgentError as exc:
        raise StepFailed(UpdateState.FAILED, OtaReason.GOLDEN_MISMATCH, str(exc)) from exc
