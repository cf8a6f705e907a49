"""The gate streams labelled held-out frames: task metric against labels, the rule on it, the
power report, bounded memory, and real builds of the bundled models with a bundle heldout/."""

from __future__ import annotations

import json
import shutil
import tracemalloc
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest

from agent.config.model import ModelBundleConfig
from agent.config.profiles.store import ProfileStore
from agent.engine.build.orchestrator import build_engine
from agent.engine.validate.frames import GateFrame
from agent.engine.validate.gate import GateLimits, run_validation
from agent.engine.validate.labels import FrameLabel
from agent.engine.validate.results import GateReport
from tests.assets import CALIB, CLS_BUNDLE, DET_BUNDLE


def _config(agreement_min: float = 0.99) -> ModelBundleConfig:
    return ModelBundleConfig.model_validate(
        {
            "name": "m",
            "version": 1,
            "task": "classify",
            "input": {"name": "images"},
            "output": {"decode": "softmax_topk"},
            "tolerance": {"top1_agreement_min": agreement_min},
        }
    )


class Runner:
    """Logits from the input's one-hot class; ``flip`` frames (by index) answer class 0."""

    def __init__(self, flip: set[int] | None = None) -> None:
        self.flip = flip or set()

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = feeds["images"]
        index, cls = int(x[0, 0]), int(x[0, 1])
        logits = np.zeros((1, 4), np.float32)
        logits[0, 0 if index in self.flip else cls] = 1.0
        return {"logits": logits}


def _frames(count: int, size: int = 2, alive: list[weakref.ref] | None = None):
    for i in range(count):
        x = np.zeros((1, size), np.float32)
        x[0, 0], x[0, 1] = i, 1 + i % 3
        if alive is not None:
            alive.append(weakref.ref(x))
        yield GateFrame({"images": x}, f"{i}", None, FrameLabel(class_id=1 + i % 3))


def test_task_metric_drop_fails_a_candidate_the_agreement_passes() -> None:
    # 10 % of frames flipped to a wrong class: agreement 0.9 passes a 0.85 tolerance, but top-1
    # accuracy falls 10 points below float, beyond the 1 point allowed
    run = run_validation(
        _config(agreement_min=0.85),
        Runner(),
        {"int8": Runner(flip=set(range(0, 200, 10))), "fp32": Runner()},
        _frames(200),
        limits=GateLimits(drop_max=0.01, wanted_frames=600),
        warmup=0,
        iterations=3,
        max_seconds=0.05,
    )
    int8, fp32 = run.results["int8"], run.results["fp32"]
    assert int8.value == pytest.approx(0.9) and int8.task_metric is not None
    assert int8.task_metric.delta == pytest.approx(-0.1) and not int8.passed
    assert fp32.passed and fp32.task_metric is not None and fp32.task_metric.delta == 0.0
    assert run.reference_metric is not None and run.reference_metric.value == 1.0
    # 200 frames are plenty to catch a true agreement of 0.7 against 0.85: no warning
    assert run.power is not None and run.power.trials == 200 and run.power.enough
    assert run.notes == []
    assert "top1_accuracy" in int8.describe()


def test_too_few_frames_are_reported_with_the_power_they_had() -> None:
    run = run_validation(
        _config(), Runner(), {"int8": Runner()}, _frames(40),
        limits=GateLimits(drop_max=0.01, wanted_frames=600), warmup=0, iterations=3,
        max_seconds=0.05,
    )  # fmt: skip
    assert run.results["int8"].passed
    assert run.power is not None and run.power.trials == 40 and not run.power.enough
    # at 40 frames the gate needs all 40 to agree: it fails with probability 1 - 0.98^40
    assert run.power.power == pytest.approx(1 - 0.98**40, abs=1e-4)
    assert any("only 40 held-out frames" in n and "600 wanted" in n for n in run.notes)
    assert any("probability 0.55" in n and "523 frames" in n for n in run.notes)


def test_gate_consumes_an_iterator_and_keeps_no_frames() -> None:
    alive: list[weakref.ref] = []
    seen_alive: list[int] = []

    def watched() -> Iterator[GateFrame]:
        for frame in _frames(300, alive=alive):
            seen_alive.append(sum(r() is not None for r in alive))
            yield frame

    run = run_validation(
        _config(), Runner(), {"int8": Runner()}, watched(), warmup=0, iterations=3,
        max_seconds=0.05,
    )  # fmt: skip
    assert run.frames == 300 and run.results["int8"].passed
    # when each frame is made, at most the previous one is still referenced
    assert max(seen_alive) <= 2


def _peak(count: int) -> int:
    tracemalloc.start()
    run_validation(
        _config(), Runner(), {"int8": Runner(), "fp32": Runner()}, _frames(count, size=65536),
        warmup=0, iterations=3, max_seconds=0.05,
    )  # fmt: skip
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_gate_memory_does_not_grow_with_the_frame_count() -> None:
    # frames of 256 KiB each: 40 of them would be 10 MiB, 400 would be 100 MiB if kept
    small, large = _peak(40), _peak(400)
    assert large < small * 1.5 + 1_000_000


@pytest.fixture(scope="module")
def cpu():  # type: ignore[no-untyped-def]
    """The cpu profile calibrating on 16 frames (quick; the gate is what is tested here)."""
    profile = ProfileStore().load("cpu")
    calibration = profile.build.calibration.model_copy(update={"frames": 16})
    build = profile.build.model_copy(update={"calibration": calibration})
    return profile.model_copy(update={"build": build})


def test_classifier_build_reports_float_and_int8_against_labels(cpu, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bundle = tmp_path / "shapes-cls"
    shutil.copytree(CLS_BUNDLE, bundle)
    outcome = build_engine(
        bundle, cpu, cache_dir=tmp_path / "cache", precision="auto",
        calib_dir=CALIB / "shapes-cls", gate_seconds=0.2,
    )  # fmt: skip
    report = outcome.report
    assert report.frames == 600 and report.heldout.startswith("labelled")
    assert report.reference_metric is not None and report.reference_metric.metric == "top1_accuracy"
    assert report.reference_metric.value >= 0.95
    for prec in ("int8", "fp32"):
        metric = report.results[prec].task_metric
        assert metric is not None and metric.frames == 600 and metric.delta is not None
        assert metric.ci_low <= metric.value <= metric.ci_high
    assert report.power is not None and report.power.enough and report.power.power >= 0.95
    stored = outcome.artifact.manifest["validation"]
    back = GateReport.from_json(json.loads(json.dumps(stored)))
    assert back.reference_metric is not None and back.power == report.power
    assert back.reference_metric.to_json() == report.reference_metric.to_json()
    assert (
        back.results["int8"].task_metric == GateReport.from_json(stored).results["int8"].task_metric
    )
    assert any("top1_accuracy" in n for n in outcome.notes)


def test_detector_build_reports_map50_for_float_and_int8(cpu, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bundle = tmp_path / "shapes-det"
    shutil.copytree(DET_BUNDLE, bundle)
    labels_path = bundle / "heldout" / "labels.json"
    labels = json.loads(labels_path.read_text())
    labels_path.write_text(json.dumps({k: labels[k] for k in sorted(labels)[:48]}))
    outcome = build_engine(
        bundle, cpu, cache_dir=tmp_path / "cache", precision="int8",
        calib_dir=CALIB / "shapes-det", gate_seconds=0.2,
    )  # fmt: skip
    report = outcome.report
    ref, int8 = report.reference_metric, report.results["int8"].task_metric
    assert ref is not None and int8 is not None and ref.metric == int8.metric == "map50"
    assert ref.frames == 48 and ref.objects == sum(len(labels[k]) for k in sorted(labels)[:48])
    assert ref.value > 0.85 and int8.value > 0.85
    assert int8.delta is not None and int8.delta_low is not None and int8.delta_high is not None
    assert int8.delta_low <= int8.delta <= int8.delta_high
    assert report.power is not None and report.power.unit == "box"
    assert report.power.trials == report.results["int8"].details["reference_boxes"]
