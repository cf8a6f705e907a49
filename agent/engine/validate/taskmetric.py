"""Task metrics against the held-out labels, folded in frame by frame.

A tally per runner (the float reference and each candidate) takes each frame's outputs as they
come and keeps only what the metric needs (one bit per frame for top-1; the matched detections
for mAP50), so the gate's memory does not grow with the outputs. At the end
:func:`task_metric` gives the value with its 95 % interval and, for a candidate, the paired
difference to the reference:

* classify — top-1 accuracy, Wilson interval; difference with Newcombe's paired interval;
* detect — mAP50 (:mod:`agent.engine.validate.meanap`); detections are decoded with a low
  score threshold (0.001, at most 100 per frame, the bundle's NMS IoU), as mAP needs the whole
  precision/recall curve, and mapped from the letterboxed model input back to the image's
  pixels (:meth:`~agent.vision.letterbox.LetterboxInfo.to_source`); seeded bootstrap over
  frames for the interval and, with the same resamples, for the paired difference.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from agent.config.model import ModelBundleConfig
from agent.core.errors import InternalError
from agent.engine.validate.frames import GateFrame
from agent.engine.validate.meanap import DetectionRecords, map50, match_frame
from agent.engine.validate.metrics import select_output
from agent.engine.validate.results import TaskMetric
from agent.engine.validate.stats import (
    bootstrap_weights,
    paired_difference_interval,
    wilson_interval,
)
from agent.vision.decode import decode_yolov8

__all__ = ["MAP_CONF", "MAP_MAX_DET", "DetectionTally", "Top1Tally", "make_tally", "task_metric"]

log = logging.getLogger(__name__)

#: Score threshold and detections per frame for mAP (the whole precision/recall curve).
MAP_CONF = 0.001
MAP_MAX_DET = 100


class Top1Tally:
    """Top-1 correctness of each labelled frame."""

    metric = "top1_accuracy"

    def __init__(self, config: ModelBundleConfig) -> None:
        self.config = config
        self.correct: list[bool] = []

    def add(self, outputs: Mapping[str, np.ndarray], frame: GateFrame) -> None:
        if frame.label is None or frame.label.class_id is None:
            raise InternalError(f"frame {frame.name!r} has no class label")
        logits = np.asarray(select_output(outputs, self.config.output)).reshape(-1)
        self.correct.append(int(np.argmax(logits)) == frame.label.class_id)

    @property
    def frames(self) -> int:
        return len(self.correct)


class DetectionTally:
    """Each labelled frame's detections (image pixels) matched to its labelled boxes."""

    metric = "map50"

    def __init__(self, config: ModelBundleConfig) -> None:
        self.config = config
        self.scores: list[np.ndarray] = []
        self.classes: list[np.ndarray] = []
        self.tps: list[np.ndarray] = []
        self.gt_classes: list[np.ndarray] = []
        self._records: DetectionRecords | None = None

    def add(self, outputs: Mapping[str, np.ndarray], frame: GateFrame) -> None:
        label = frame.label
        if label is None or label.boxes is None or label.classes is None:
            raise InternalError(f"frame {frame.name!r} has no box labels")
        spec = self.config.output
        raw = select_output(outputs, spec)
        dets = decode_yolov8(raw, conf=MAP_CONF, iou=spec.iou_threshold, max_det=MAP_MAX_DET)[0]
        boxes = dets.boxes if frame.letterbox is None else frame.letterbox.to_source(dets.boxes)
        tp = match_frame(boxes, dets.scores, dets.class_ids, label.boxes, label.classes)
        self.scores.append(np.asarray(dets.scores, np.float32))
        self.classes.append(np.asarray(dets.class_ids, np.int32))
        self.tps.append(tp)
        self.gt_classes.append(np.asarray(label.classes, np.int32))
        self._records = None

    @property
    def frames(self) -> int:
        return len(self.gt_classes)

    @property
    def objects(self) -> int:
        return int(sum(len(g) for g in self.gt_classes))

    def records(self) -> DetectionRecords:
        if self._records is None:
            self._records = DetectionRecords.build(
                self.scores, self.classes, self.tps, self.gt_classes
            )
        return self._records


Tally = Top1Tally | DetectionTally


def make_tally(config: ModelBundleConfig) -> Tally | None:
    """The tally for the bundle's task; None for tasks without a labelled metric (raw)."""
    if config.task == "classify":
        return Top1Tally(config)
    if config.task == "detect":
        return DetectionTally(config)
    return None


@dataclass(frozen=True)
class BootstrapSpec:
    samples: int = 1000
    seed: int = 0


def _top1(tally: Top1Tally, reference: Top1Tally | None, drop_max: float | None) -> TaskMetric:
    c = np.asarray(tally.correct, dtype=bool)
    low, high = wilson_interval(int(c.sum()), len(c))
    base = TaskMetric(
        "top1_accuracy", float(c.mean()) if len(c) else 0.0, low, high, len(c), len(c), "wilson"
    )
    if reference is None:
        return base
    r = np.asarray(reference.correct, dtype=bool)
    delta = float(c.mean() - r.mean()) if len(c) else 0.0
    interval = paired_difference_interval(c, r)
    return _with_delta(base, delta, interval, drop_max, "wilson; paired newcombe")


def _with_delta(
    base: TaskMetric,
    delta: float,
    interval: tuple[float, float],
    drop_max: float | None,
    method: str,
) -> TaskMetric:
    passed = None if drop_max is None else bool(delta >= -drop_max - 1e-12)
    return replace(
        base,
        method=method,
        delta=delta,
        delta_low=interval[0],
        delta_high=interval[1],
        drop_max=drop_max,
        passed=passed,
    )


def _map(
    tally: DetectionTally,
    reference: DetectionTally | None,
    drop_max: float | None,
    boot: BootstrapSpec,
) -> TaskMetric:
    rec = tally.records()
    value = float(np.nan_to_num(map50(rec)[0]))
    ref_rec = None if reference is None else reference.records()
    values: list[np.ndarray] = []
    deltas: list[np.ndarray] = []
    for weights in bootstrap_weights(rec.frames, boot.samples, boot.seed) if rec.frames else []:
        cand = map50(rec, weights)
        values.append(cand)
        if ref_rec is not None:
            deltas.append(cand - map50(ref_rec, weights))
    method = f"bootstrap ({boot.samples} resamples of frames, seed {boot.seed})"
    low, high = _percentiles(values, value)
    base = TaskMetric("map50", value, low, high, tally.frames, tally.objects, method)
    if ref_rec is None:
        return base
    delta = value - float(np.nan_to_num(map50(ref_rec)[0]))
    return _with_delta(base, delta, _percentiles(deltas, delta), drop_max, method + ", paired")


def _percentiles(chunks: list[np.ndarray], point: float) -> tuple[float, float]:
    data = np.concatenate(chunks) if chunks else np.zeros(0)
    data = data[~np.isnan(data)]
    if not len(data):
        return point, point
    low, high = np.percentile(data, [2.5, 97.5])
    return float(low), float(high)


def task_metric(
    tally: Tally,
    reference: Tally | None = None,
    *,
    drop_max: float | None = None,
    boot: BootstrapSpec | None = None,
) -> TaskMetric:
    """The task metric of ``tally``; with ``reference`` (the float reference's tally on the same
    frames) also the paired difference and, with ``drop_max``, the verdict."""
    if isinstance(tally, Top1Tally):
        if reference is not None and not isinstance(reference, Top1Tally):
            raise InternalError("reference tally of another task")
        return _top1(tally, reference, drop_max)
    if reference is not None and not isinstance(reference, DetectionTally):
        raise InternalError("reference tally of another task")
    return _map(tally, reference, drop_max, boot or BootstrapSpec())
