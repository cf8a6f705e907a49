"""The build orchestrator: model bundle → validated, cached engine artifact.

::

    load bundle → prepare → calibration set → for each candidate precision:
        cache lookup → (miss) quantize (int8, isolated) → backend build (isolated; one retry at
        half the workspace after running out of memory; under ``auto`` a candidate that fails
        is skipped with its reason) → validate against the float reference (a fresh INT8 that
        fails: the accuracy search, :mod:`agent.engine.build.search`) → commit to the cache
        (manifest carries the gate report) → choose

The float reference is the prepared float model run by ONNX Runtime on the CPU. Everything is
built in a ``.tmp-build-*`` directory under the cache root, claimed while the build lives
(:mod:`agent.engine.tmpdirs`: a build SIGKILLed leaves it to the next sweep) and removed at the
end whatever happens; only complete, verified entries are ever published (by
:meth:`EngineCache.commit`).

This function parses and transforms the model in the calling process: the daemon calls it
through :func:`agent.engine.build.isolated.build_engine_isolated`, which runs it whole in the
memory-capped child.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from agent.backends.registry import get_backend
from agent.config.device import DeviceProfile
from agent.core.progress import ProgressFn, no_progress
from agent.engine.build.candidates import (
    RequestedPrecision,
    cached_outcome,
    lookup_candidates,
    wanted_precisions,
)
from agent.engine.build.context import BuildOptions, SearchLimits, open_context
from agent.engine.build.fallback import build_or_skip, live_candidates
from agent.engine.build.outcome import BuildOutcome
from agent.engine.build.overrides import BuildOverrides, apply_overrides
from agent.engine.build.publish import commit_candidates, finish
from agent.engine.build.search import gate_and_recover
from agent.engine.build.steps import prepare_inputs
from agent.engine.bundle import load_bundle
from agent.engine.tmpdirs import claim_dir

__all__ = ["build_engine"]

log = logging.getLogger(__name__)


def build_engine(
    bundle_path: Path,
    profile: DeviceProfile,
    *,
    precision: RequestedPrecision,
    calib_dir: Path | None,
    cache_dir: Path,
    l4t_release: str | None = None,
    progress: ProgressFn = no_progress,
    force: bool = False,
    gate_seconds: float = 3.0,
    gate_iterations: int = 200,
    search: SearchLimits | None = None,
    overrides: BuildOverrides | None = None,
) -> BuildOutcome:
    """Build (or fetch from the cache) a validated engine for ``bundle_path`` on ``profile``.

    With ``precision="auto"`` a candidate that cannot be built is skipped (the reason is in
    the notes and the gate report's ``why``); a fresh INT8 that fails the gate goes through
    the accuracy search (``search`` bounds it). ``overrides`` (``build --shapes`` ...) win over
    the profile (:mod:`agent.engine.build.overrides`). Raises :class:`ModelError`,
    :class:`CalibrationError`, :class:`BuildFailed` or :class:`ValidationFailed`, each saying
    how to fix the problem; nothing half-written is left in ``cache_dir``.
    """
    backend = get_backend(profile.build.backend)
    backend_version = backend.version()
    wanted = wanted_precisions(precision, profile, backend.precisions)
    progress("load", 0.0, f"loading bundle {bundle_path}")
    bundle = load_bundle(Path(bundle_path))
    overrides = overrides or BuildOverrides()
    profile = apply_overrides(profile, overrides, bundle)
    limits = search or SearchLimits()
    options = BuildOptions(
        precision, calib_dir, l4t_release, force, gate_seconds, gate_iterations, limits, overrides
    )
    ctx = open_context(
        profile=profile,
        backend=backend,
        backend_version=backend_version,
        bundle=bundle,
        cache_dir=cache_dir,
        options=options,
        progress=progress,
    )
    claim = claim_dir(ctx.work)  # a sweep elsewhere leaves a live build's directory alone
    try:
        inputs = prepare_inputs(ctx)
        candidates = lookup_candidates(ctx, inputs, wanted)
        cached = cached_outcome(ctx, candidates)
        if cached is not None:
            return cached
        build_or_skip(ctx, inputs, candidates)
        verdict = gate_and_recover(ctx, inputs, candidates)
        artifacts = commit_candidates(ctx, inputs, live_candidates(candidates), verdict)
        return finish(ctx, inputs, verdict, artifacts)
    finally:
        claim.release()
        shutil.rmtree(ctx.work, ignore_errors=True)
