"""The probation verdict: a pure function of what was observed and the thresholds (no I/O).

Throughput: ``ProbationSample.fps`` is the serving engine's inference throughput (inferences per
second of one worker, i.e. 1000 / mean inference ms), comparable to the gate's batch-1 figure
in ``BuildResult.validated_fps`` — not the camera frame rate. The gate times a hot loop; a live
pipeline pays per-call costs that loop does not see (cold caches after idling between frames,
thread hand-offs), which for a small model are several times its inference time. So when the
old model's throughput in the same pipeline just before the swap is known (the baseline), the
new model is "slow" only when it is below ``min_fps_fraction`` of *both* its validated figure
and that baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent.core.errors import OtaReason
from agent.ota.record import ProbationSample


@dataclass(frozen=True)
class Observation:
    """One probation sample and when it was taken (seconds into probation)."""

    sample: ProbationSample
    elapsed_s: float


@dataclass(frozen=True)
class Verdict:
    """Why the new model failed probation."""

    reason: OtaReason
    detail: str


@dataclass(frozen=True)
class Thresholds:
    validated_fps: float | None
    baseline_fps: float | None
    min_fps_fraction: float


def sample_fault(obs: Observation) -> Verdict | None:
    """A fault one sample alone proves (a crash, NaN outputs): probation ends at once."""
    if obs.sample.crashed:
        return Verdict(
            OtaReason.PROBATION_CRASH,
            f"the new model crashed {obs.elapsed_s:.1f} s into probation",
        )
    if obs.sample.nan_outputs > 0:
        return Verdict(
            OtaReason.PROBATION_NAN,
            f"{obs.sample.nan_outputs} NaN outputs {obs.elapsed_s:.1f} s into probation",
        )
    return None


def throughput_verdict(fps: Sequence[float], samples: int, limits: Thresholds) -> Verdict | None:
    """Slow when the mean served throughput is below the fraction of the validated figure (and
    of the baseline, when known); no verdict without figures."""
    validated = limits.validated_fps
    if not fps or not validated:
        return None
    mean = sum(fps) / len(fps)
    fraction = limits.min_fps_fraction
    slow = mean < fraction * validated
    if slow and limits.baseline_fps is not None:
        slow = mean < fraction * limits.baseline_fps
    if not slow:
        return None
    before = ""
    if limits.baseline_fps is not None:
        before = f" and the {limits.baseline_fps:.1f}/s the previous model served"
    return Verdict(
        OtaReason.PROBATION_SLOW,
        f"served {mean:.1f} inferences/s over {samples} samples, below "
        f"{fraction:g} × the validated {validated:.1f}/s{before}",
    )


def probation_verdict(observed: Sequence[Observation], limits: Thresholds) -> Verdict | None:
    """None when the new model passes probation on these observations, else why not."""
    for obs in observed:
        fault = sample_fault(obs)
        if fault is not None:
            return fault
    fps = [o.sample.fps for o in observed if o.sample.fps is not None]
    return throughput_verdict(fps, len(observed), limits)
