"""The validation gate: metrics per task, latency, and the precision choice."""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
import pytest

from agent.config.model import ModelBundleConfig
from agent.core.errors import ValidationFailed
from agent.engine.validate.choice import choose_precision
from agent.engine.validate.gate import measure_latency, validate_candidates
from agent.engine.validate.metrics import box_agreement, compare_outputs
from agent.engine.validate.results import GateReport, LatencyStats, PrecisionResult
from agent.vision.decode import Detections


def _config(task: str, **output: object) -> ModelBundleConfig:
    decode = {"classify": "softmax_topk", "detect": "yolov8", "raw": "raw"}[task]
    return ModelBundleConfig.model_validate(
        {
            "name": "m",
            "version": 1,
            "task": task,
            "input": {"name": "images"},
            "output": {"decode": decode, **output},
        }
    )


class FakeRunner:
    """A runner whose output is a function of the input, with a fixed delay."""

    def __init__(self, fn, delay_s: float = 0.0, name: str = "out") -> None:
        self.fn = fn
        self.delay_s = delay_s
        self.name = name
        self.calls = 0

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        return {self.name: self.fn(feeds["images"])}


def _dets(boxes: list[list[float]], classes: list[int]) -> Detections:
    return Detections(
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.linspace(0.9, 0.5, len(classes)).astype(np.float32),
        np.asarray(classes, np.int64),
    )


def test_box_agreement_counts_both_directions() -> None:
    ref = [_dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 1])]
    same = box_agreement(ref, ref)
    assert same.value == 1.0
    # the second reference box is missed (wrong class), and there is an extra candidate box
    cand = [_dets([[1, 0, 11, 10], [20, 20, 30, 30], [50, 50, 60, 60]], [0, 2, 1])]
    res = box_agreement(ref, cand)
    assert res.details["ref_matched"] == 0.5
    assert res.details["cand_matched"] == pytest.approx(1 / 3, abs=1e-5)
    assert res.value == pytest.approx(1 / 3, abs=1e-5)
    assert box_agreement([Detections.empty()], [Detections.empty()]).value == 1.0
    # one-to-one: two reference boxes on the same spot need two candidate boxes
    two = [_dets([[0, 0, 10, 10], [0, 0, 10, 10]], [0, 0])]
    one = [_dets([[0, 0, 10, 10]], [0])]
    assert box_agreement(two, one).details["ref_matched"] == 0.5


def test_compare_outputs_per_task() -> None:
    cls = _config("classify")
    ref = [{"logits": np.array([[0.1, 2.0, 0.3]])}, {"logits": np.array([[3.0, 0.0, 0.0]])}]
    cand = [{"logits": np.array([[0.1, 1.9, 0.3]])}, {"logits": np.array([[0.0, 3.0, 0.0]])}]
    res = compare_outputs(cls, ref, cand)
    assert (res.metric, res.value) == ("top1_agreement", 0.5)

    raw = _config("raw")
    res = compare_outputs(raw, [{"y": np.array([1.0, -2.0])}], [{"y": np.array([1.1, -2.2])}])
    assert res.metric == "relative_error"
    assert res.value == pytest.approx(0.1)
    assert not res.higher_is_better

    det = _config("detect", conf_threshold=0.25)
    out = np.zeros((1, 6, 8), np.float32)
    out[0, :, 0] = [50, 50, 20, 20, 0.9, 0.0]
    out[0, :, 1] = [150, 50, 20, 20, 0.0, 0.8]
    shifted = out.copy()
    shifted[0, 0, 0] += 1.0
    res = compare_outputs(det, [{"output0": out}], [{"output0": shifted}])
    assert res.metric == "box_agreement" and res.value == 1.0
    dropped = out.copy()
    dropped[0, 5, 1] = 0.1  # candidate loses the second box
    res = compare_outputs(det, [{"output0": out}], [{"output0": dropped}])
    assert res.details["ref_matched"] == 0.5 and res.details["cand_matched"] == 1.0
    assert res.value == 0.5


def test_validate_candidates_and_latency() -> None:
    cfg = _config("classify")
    rng = np.random.default_rng(0)
    feeds = [{"images": rng.normal(size=(1, 3)).astype(np.float32)} for _ in range(20)]
    ref = FakeRunner(lambda x: x)
    good = FakeRunner(lambda x: x + 0.001, delay_s=0.0005)
    bad = FakeRunner(lambda x: -x, delay_s=0.0)
    results = validate_candidates(
        cfg, ref, {"int8": good, "fp32": bad}, feeds, warmup=2, iterations=30, max_seconds=0.5
    )
    assert results["int8"].passed and results["int8"].value == 1.0
    assert not results["fp32"].passed
    lat = results["int8"].latency
    assert lat is not None and lat.iterations == 30 and lat.p50_ms >= 0.4
    assert results["int8"].to_json()["latency_ms"]["p99"] >= lat.p50_ms - 1e-6
    with pytest.raises(ValidationFailed, match="held-out"):
        validate_candidates(cfg, ref, {"int8": good}, [])


def test_non_finite_outputs_fail_the_gate() -> None:
    # NaN at the top class: argmax (the first NaN) still agrees with the reference, so only
    # the non-finite check can fail this candidate.
    cfg = _config("classify")
    feeds = [{"images": np.eye(1, 3, k % 3, dtype=np.float32)} for k in range(6)]
    ref = FakeRunner(lambda x: x)
    nan_first = FakeRunner(lambda x: np.where(x == x.max(), np.nan, x).astype(np.float32))
    results = validate_candidates(
        cfg, ref, {"int8": nan_first}, feeds, warmup=1, iterations=5, max_seconds=0.2
    )
    res = results["int8"]
    assert res.details["non_finite_frames"] == 6
    assert not res.passed


def test_measure_latency_is_bounded_by_time() -> None:
    slow = FakeRunner(lambda x: x, delay_s=0.02)
    started = time.perf_counter()
    stats = measure_latency(
        {"a": slow}, {"images": np.zeros(1)}, warmup=1, iterations=10_000, max_seconds=0.2
    )
    assert time.perf_counter() - started < 2
    assert 3 <= stats["a"].iterations < 100
    assert LatencyStats.from_samples([], 0).iterations == 0


def _result(prec: str, passed: bool, p50: float, value: float = 1.0) -> PrecisionResult:
    return PrecisionResult(
        precision=prec,
        metric="top1_agreement",
        value=value,
        tolerance=0.99,
        passed=passed,
        higher_is_better=True,
        latency=LatencyStats(p50, p50, p50 * 1.5, p50, p50 * 2, 100, 5),
        details={"frames": 32},
    )


def test_choose_auto_prefers_fast_passing_int8() -> None:
    results = {"int8": _result("int8", True, 1.0), "fp32": _result("fp32", True, 2.0)}
    chosen, why = choose_precision(results, "auto", ["int8", "fp32"], ["int8", "fp32"])
    assert chosen == "int8"
    assert "fastest" in why


def test_choose_auto_rejects_slow_int8_and_says_so() -> None:
    results = {"int8": _result("int8", True, 2.5), "fp32": _result("fp32", True, 2.0)}
    chosen, why = choose_precision(results, "auto", ["int8", "fp32"], ["int8", "fp32"])
    assert chosen == "fp32"
    assert "not faster" in why


def test_choose_auto_skips_failing_and_unavailable() -> None:
    results = {
        "int8": _result("int8", False, 1.0, value=0.9),
        "fp16": _result("fp16", True, 0.5),
        "fp32": _result("fp32", True, 2.0),
    }
    chosen, why = choose_precision(results, "auto", ["int8", "fp16", "fp32"], ["int8", "fp32"])
    assert chosen == "fp32"
    assert "int8 FAILS" in why and "fp16 not available" in why
    with pytest.raises(ValidationFailed, match="no precision passed"):
        choose_precision({"int8": results["int8"]}, "auto", ["int8"], ["int8"])


def test_explicit_precision_failing_raises_with_numbers() -> None:
    results = {"int8": _result("int8", False, 1.0, value=0.9)}
    with pytest.raises(ValidationFailed) as info:
        choose_precision(results, "int8", ["int8", "fp32"], ["int8", "fp32"])
    text = str(info.value)
    assert "0.9000" in text and "0.99" in text and "fix:" in text
    ok = {"fp32": _result("fp32", True, 2.0)}
    assert choose_precision(ok, "fp32", ["fp32"], ["fp32"])[0] == "fp32"


def test_gate_report_json_roundtrip() -> None:
    report = GateReport(
        task="classify",
        frames=32,
        reference="fp32",
        results={"int8": _result("int8", True, 1.0), "fp32": _result("fp32", True, 2.0)},
        requested="auto",
        chosen="int8",
        why="because",
    )
    data = report.to_json()
    back = GateReport.from_json(data)
    assert back.chosen == "int8"
    assert back.results["int8"].p50_ms == pytest.approx(1.0)
    assert back.table_rows()[0][0] == "int8 *"


def test_old_manifests_without_task_metrics_still_load() -> None:
    report = GateReport(
        task="classify",
        frames=32,
        reference="fp32",
        results={"int8": _result("int8", True, 1.0)},
        requested="auto",
        chosen="int8",
    )
    data = report.to_json()
    for key in ("reference_metric", "power", "notes", "heldout"):
        data.pop(key)
    data["results"]["int8"].pop("task_metric")
    back = GateReport.from_json(data)
    assert back.reference_metric is None and back.power is None and back.notes == []
    assert back.results["int8"].task_metric is None and back.summary_lines() == []
