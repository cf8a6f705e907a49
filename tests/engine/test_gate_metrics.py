"""Task metrics of the gate: mAP50 by hand, intervals, the gate's statistical power."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from agent.config.build import CalibrationConfig
from agent.config.model import ModelBundleConfig
from agent.config.profiles.store import ProfileStore
from agent.engine.validate.frames import GateFrame
from agent.engine.validate.labels import FrameLabel
from agent.engine.validate.meanap import DetectionRecords, map50, match_frame
from agent.engine.validate.power import (
    fail_probability,
    gate_power,
    pass_threshold,
    required_trials,
    risk_agreement,
)
from agent.engine.validate.stats import (
    bootstrap_weights,
    paired_difference_interval,
    wilson_interval,
)
from agent.engine.validate.taskmetric import DetectionTally, Top1Tally, task_metric
from agent.vision.letterbox import LetterboxInfo


def _records(frames: list[tuple[list[float], list[int], list[bool], list[int]]]):
    return DetectionRecords.build(
        [np.asarray(f[0], np.float32) for f in frames],
        [np.asarray(f[1], np.int64) for f in frames],
        [np.asarray(f[2], bool) for f in frames],
        [np.asarray(f[3], np.int64) for f in frames],
    )


def test_map50_all_point_interpolation_by_hand() -> None:
    # one class, two labelled boxes; TP (0.9), FP (0.8), TP (0.7):
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> AP = 1/2 * 1 + 1/2 * 2/3
    rec = _records([([0.9, 0.8, 0.7], [0, 0, 0], [True, False, True], [0, 0])])
    assert map50(rec)[0] == pytest.approx(0.5 + 0.5 * 2 / 3)
    # class 1 is labelled but never found (AP 0); class 2 has detections but no labels (ignored)
    rec = _records([([0.9, 0.6, 0.5], [0, 1, 2], [True, False, False], [0, 1])])
    assert map50(rec)[0] == pytest.approx(0.5)
    # a missed box caps recall: one TP of two labelled boxes -> AP 0.5
    rec = _records([([0.9], [0], [True], [0]), ([], [], [], [0])])
    assert map50(rec)[0] == pytest.approx(0.5)
    assert np.isnan(map50(_records([([0.9], [0], [False], [])]))[0])


def test_frame_weights_equal_duplicated_frames() -> None:
    frames = [([0.9], [0], [True], [0]), ([0.8, 0.7], [0, 0], [False, True], [0])]
    rec = _records(frames)
    doubled = _records([frames[0], frames[0], frames[1]])
    assert map50(rec, np.array([[2.0, 1.0]]))[0] == pytest.approx(map50(doubled)[0])
    assert map50(rec, np.array([[0.0, 1.0]]))[0] == pytest.approx(0.5)


def test_match_frame_is_one_to_one_and_class_aware() -> None:
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float64)
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]], np.float64)
    tp = match_frame(boxes, np.array([0.9, 0.8, 0.7]), np.array([0, 0, 1]), gt, np.array([0, 0]))
    # the second detection hits an already matched box; the third has the wrong class
    assert tp.tolist() == [True, False, False]


def _config(task: str) -> ModelBundleConfig:
    decode = {"classify": "softmax_topk", "detect": "yolov8"}[task]
    return ModelBundleConfig.model_validate(
        {"name": "m", "version": 1, "task": task, "input": {"name": "images"},
         "output": {"decode": decode}}
    )  # fmt: skip


def test_detection_tally_maps_letterboxed_boxes_back_to_the_image() -> None:
    # a 200 x 100 image letterboxed into 256 x 256: scale 1.28, 64 px of padding above
    info = LetterboxInfo(scale=1.28, pad_x=0.0, pad_y=64.0, src_w=200, src_h=100)
    label = FrameLabel(boxes=np.array([[10.0, 10.0, 50.0, 50.0]]), classes=np.array([1]))
    out = np.zeros((1, 6, 4), np.float32)
    x1, y1, x2, y2 = info.to_input([[10, 10, 50, 50]])[0]
    out[0, :, 0] = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, 0.0, 0.9]
    tally = DetectionTally(_config("detect"))
    tally.add({"output0": out}, GateFrame({}, "a", info, label))
    assert task_metric(tally).value == pytest.approx(1.0)
    # without the inverse letterbox the same detection would miss (IoU < 0.5)
    raw = DetectionTally(_config("detect"))
    raw.add({"output0": out}, GateFrame({}, "a", None, label))
    assert task_metric(raw).value == 0.0


def test_top1_metric_with_wilson_and_paired_interval() -> None:
    ref, cand = Top1Tally(_config("classify")), Top1Tally(_config("classify"))
    ref.correct = [True] * 95 + [False] * 5
    cand.correct = [True] * 90 + [False] * 10
    m = task_metric(cand, ref, drop_max=0.01)
    assert m.value == pytest.approx(0.90) and (m.ci_low, m.ci_high) == wilson_interval(90, 100)
    assert m.delta == pytest.approx(-0.05) and m.passed is False
    assert m.delta_low is not None and m.delta_high is not None
    assert m.delta_low < -0.05 < m.delta_high < 0.0


def test_wilson_known_values_and_coverage() -> None:
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-4)
    rng = np.random.default_rng(1)
    hits = [
        lo <= 0.9 <= hi
        for lo, hi in (wilson_interval(int(k), 100) for k in rng.binomial(100, 0.9, 2000))
    ]
    assert 0.92 <= np.mean(hits) <= 0.98


def test_paired_interval_coverage() -> None:
    rng = np.random.default_rng(2)
    hits = 0
    for _ in range(500):
        a = rng.random(200) < 0.92
        b = np.where(rng.random(200) < 0.9, a, ~a)  # b agrees with a on 90 % of frames
        true = 0.92 - (0.92 * 0.9 + 0.08 * 0.1)
        lo, hi = paired_difference_interval(a, b)
        hits += lo <= true <= hi
    assert 0.92 <= hits / 500 <= 0.99
    same = np.array([True, False] * 20)
    lo, hi = paired_difference_interval(same, same)
    assert lo <= 0.0 <= hi


def test_bootstrap_is_seeded_and_resamples_every_frame_count() -> None:
    a = np.concatenate(list(bootstrap_weights(7, 250, seed=3)))
    b = np.concatenate(list(bootstrap_weights(7, 250, seed=3)))
    assert a.shape == (250, 7) and (a.sum(axis=1) == 7).all()
    np.testing.assert_array_equal(a, b)


def _exact_fail(n: int, p: Fraction, tolerance: float) -> float:
    need = pass_threshold(n, tolerance)
    return float(sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(need)))


def test_power_matches_the_exact_binomial() -> None:
    for n in (10, 32, 77):
        exact = _exact_fail(n, Fraction(98, 100), 0.99)
        assert fail_probability(n, 0.98, 0.99) == pytest.approx(exact, rel=1e-9)
    # the gate's default 32 frames catch a 2 % disagreement less than half of the time
    assert fail_probability(32, 0.98, 0.99) == pytest.approx(0.4764, abs=1e-3)
    assert pass_threshold(600, 0.99) == 594 and pass_threshold(100, 0.95) == 95


def test_required_heldout_count_for_a_two_percent_disagreement() -> None:
    assert risk_agreement(0.99) == pytest.approx(0.98)
    required = required_trials(0.98, 0.99)
    assert required == 523
    powers = [fail_probability(n, 0.98, 0.99) for n in range(300, 700)]
    assert all(p >= 0.95 for p in powers[required - 300 :])
    assert powers[required - 1 - 300] < 0.95
    first = next(n for n in range(1, 700) if fail_probability(n, 0.98, 0.99) >= 0.95)
    assert first == 386  # ...but the saw-tooth dips below 95 % again up to 522
    # the default and every shipped profile hold out at least that many frames
    assert CalibrationConfig().heldout_frames >= required
    store = ProfileStore()
    for name in store.names():
        assert store.load(name).build.calibration.heldout_frames >= required, name
    report = gate_power("frame", 600, 0.99)
    assert report.enough and report.power >= 0.95 and report.required == 523
    boxes = gate_power("box", 60, 0.95)
    assert boxes.true_agreement == pytest.approx(0.90) and not boxes.enough
