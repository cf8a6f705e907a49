"""The whole build in the isolated child: what the daemon calls instead of
:func:`~agent.engine.build.orchestrator.build_engine`.

Everything that parses or transforms a model (loading the bundle and settling ``output.softmax``,
``prepare`` with ONNX Runtime's symbolic shape inference and external data, calibration, the
quantize and backend-build children, the validation gate's ONNX Runtime sessions, the cache
commit) runs in one spawned child under the profile's ``build.build_memory_cap_mib``; the
daemon only sees progress messages and the typed :class:`BuildOutcome` (or the typed error).
A model bomb (a few hundred bytes of ONNX that make a multi-GiB tensor) therefore costs the
daemon nothing: the child runs out of memory under its cap and the daemon raises
:class:`~agent.core.errors.BuildFailed` with ``out_of_memory`` set.

The child starts the quantize and backend-build children itself (nested isolation, each under
its own cap and ``build.build_timeout_s``); the whole build gets
:data:`WHOLE_BUILD_TIMEOUTS` × ``build_timeout_s``, a safety net over the per-step timeouts.
``edge-agent build`` keeps calling :func:`build_engine` in its own process: it is not the
daemon, and its memory is the user's to spend.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from agent.config.device import DeviceProfile
from agent.core.errors import BuildFailed
from agent.core.progress import ProgressFn, no_progress
from agent.engine.build.candidates import RequestedPrecision
from agent.engine.build.context import SearchLimits
from agent.engine.build.orchestrator import build_engine
from agent.engine.build.outcome import BuildOutcome, max_rss
from agent.engine.isolate.launch import run_isolated

__all__ = ["WHOLE_BUILD_TIMEOUTS", "BuildJob", "build_engine_isolated", "build_job_target"]

log = logging.getLogger(__name__)

#: the whole isolated build may take this many times the profile's per-step build_timeout_s
WHOLE_BUILD_TIMEOUTS = 4
#: backends whose runtime maps large virtual ranges (CUDA): no RLIMIT_AS in the build child
_CUDA_BACKENDS = frozenset({"tensorrt"})
_OOM_FIX = (
    "the model needs more memory to build than build.build_memory_cap_mib allows: check that "
    "its graph makes no huge tensors (a ConstantOfShape, Expand or Tile to a large size is a "
    "model bomb), lower build.workspace_mib, or raise the cap in the device profile"
)


@dataclass(frozen=True)
class BuildJob:
    """The arguments of one :func:`build_engine` call, as they travel to the child."""

    bundle_path: Path
    profile: DeviceProfile
    precision: RequestedPrecision
    calib_dir: Path | None
    cache_dir: Path
    l4t_release: str | None = None
    force: bool = False
    gate_seconds: float = 3.0
    gate_iterations: int = 200
    search: SearchLimits | None = None


def build_job_target(progress: ProgressFn, job: BuildJob) -> BuildOutcome:
    """Child side: the whole build (module level, so ``spawn`` pickles it by reference)."""
    return build_engine(
        job.bundle_path,
        job.profile,
        precision=job.precision,
        calib_dir=job.calib_dir,
        cache_dir=job.cache_dir,
        l4t_release=job.l4t_release,
        progress=progress,
        force=job.force,
        gate_seconds=job.gate_seconds,
        gate_iterations=job.gate_iterations,
        search=job.search,
    )


class _LastStage:
    """Relays progress and remembers the stage it was last in (named in an out-of-memory)."""

    def __init__(self, progress: ProgressFn) -> None:
        self.progress = progress
        self.stage = "start"

    def __call__(self, stage: str, fraction: float, message: str) -> None:
        self.stage = stage
        self.progress(stage, fraction, message)


def build_engine_isolated(job: BuildJob, progress: ProgressFn = no_progress) -> BuildOutcome:
    """:func:`build_engine` for ``job`` in a memory-capped child; its progress is relayed to
    ``progress`` here. Raises what the build raises (:class:`ModelError`,
    :class:`CalibrationError`, :class:`BuildFailed`, :class:`ValidationFailed`), and
    :class:`BuildFailed` (``out_of_memory`` set, naming the stage, when the cap was hit) when
    the child dies."""
    limits = job.profile.build
    stage = _LastStage(progress)
    try:
        isolated = run_isolated(
            build_job_target,
            (job,),
            memory_cap_mib=limits.build_memory_cap_mib,
            timeout_s=limits.build_timeout_s * WHOLE_BUILD_TIMEOUTS,
            progress=stage,
            what=f"build of {Path(job.bundle_path).name}",
            limit_address_space=limits.backend not in _CUDA_BACKENDS,
            allow_children=True,
        )
    except BuildFailed as exc:
        if not exc.out_of_memory:
            raise
        raise BuildFailed(
            f"{exc.message} (stage: {stage.stage})",
            fix=_OOM_FIX,
            out_of_memory=True,
            workspace_mib=exc.workspace_mib,
            memory_cap_mib=limits.build_memory_cap_mib,
        ) from exc
    outcome = isolated.value
    return replace(outcome, peak_rss_mib=max_rss(outcome.peak_rss_mib, isolated.peak_rss_mib))
