"""The probation verdict: a pure function of observations and thresholds."""

from __future__ import annotations

from agent.core.errors import OtaReason
from agent.ota.probation import Observation, Thresholds, probation_verdict, sample_fault
from agent.ota.record import ProbationSample

LIMITS = Thresholds(validated_fps=100.0, baseline_fps=None, min_fps_fraction=0.5)


def obs(fps: float | None, at: float = 1.0, **kw: object) -> Observation:
    return Observation(ProbationSample(fps=fps, **kw), at)  # type: ignore[arg-type]


def test_no_observation_passes() -> None:
    assert probation_verdict([], LIMITS) is None


def test_fast_enough_passes() -> None:
    assert probation_verdict([obs(60.0), obs(50.0), obs(None)], LIMITS) is None


def test_crash_and_nan_are_faults_of_one_sample() -> None:
    crash = sample_fault(obs(None, 2.5, crashed=True))
    assert crash is not None and crash.reason is OtaReason.PROBATION_CRASH
    assert crash.detail == "the new model crashed 2.5 s into probation"
    nan = sample_fault(obs(99.0, 0.25, nan_outputs=4))
    assert nan is not None and nan.reason is OtaReason.PROBATION_NAN
    assert nan.detail == "4 NaN outputs 0.2 s into probation"
    assert sample_fault(obs(1.0)) is None


def test_the_first_fault_wins_over_throughput() -> None:
    seen = [obs(1.0), obs(90.0, 1.0, nan_outputs=1), obs(None, 2.0, crashed=True)]
    verdict = probation_verdict(seen, LIMITS)
    assert verdict is not None and verdict.reason is OtaReason.PROBATION_NAN


def test_slow_against_the_validated_figure() -> None:
    verdict = probation_verdict([obs(40.0), obs(30.0), obs(None)], LIMITS)
    assert verdict is not None and verdict.reason is OtaReason.PROBATION_SLOW
    assert verdict.detail == (
        "served 35.0 inferences/s over 3 samples, below 0.5 × the validated 100.0/s"
    )


def test_baseline_decides_like_for_like() -> None:
    with_baseline = Thresholds(validated_fps=100.0, baseline_fps=60.0, min_fps_fraction=0.5)
    assert probation_verdict([obs(35.0)], with_baseline) is None  # 35 ≥ 0.5 × 60
    slow = probation_verdict([obs(20.0)], with_baseline)
    assert slow is not None and slow.detail.endswith(
        "the validated 100.0/s and the 60.0/s the previous model served"
    )


def test_no_figures_no_throughput_verdict() -> None:
    unmeasured = Thresholds(validated_fps=None, baseline_fps=None, min_fps_fraction=0.5)
    assert probation_verdict([obs(1.0)], unmeasured) is None
    assert probation_verdict([obs(None), obs(None)], LIMITS) is None
