"""Task-aware agreement of a candidate's outputs with the float reference's.

* ``classify`` — top-1 agreement (fraction of frames whose arg-max class is the same);
* ``detect`` — matched-box agreement: reference detections matched one-to-one by a candidate
  detection of the same class with IoU ≥ 0.5 (``ref_matched``), and the symmetric fraction of
  candidate detections matched by a reference one (``cand_matched``); the gate uses the minimum;
* ``raw`` — mean relative error ``Σ|cand − ref| / Σ|ref|`` over all outputs (lower is better).

Each is an accumulator that takes one frame's outputs at a time (:func:`make_agreement`), so the
gate never holds more than one frame's outputs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from agent.config.model import ModelBundleConfig, OutputSpec
from agent.core.errors import ValidationFailed
from agent.engine.validate.results import MetricResult
from agent.vision.decode import Detections, box_iou, decode_yolov8

__all__ = [
    "MATCH_IOU",
    "Agreement",
    "BoxAgreement",
    "RelativeError",
    "Top1Agreement",
    "box_agreement",
    "compare_outputs",
    "make_agreement",
    "select_output",
    "tolerance_for",
]

log = logging.getLogger(__name__)

#: IoU for a candidate box to count as the same detection as a reference box.
MATCH_IOU = 0.5


def select_output(outputs: Mapping[str, np.ndarray], spec: OutputSpec) -> np.ndarray:
    """The output the bundle decodes: ``output.name`` or the first one."""
    if spec.name is not None:
        if spec.name not in outputs:
            raise ValidationFailed(
                f"output '{spec.name}' named in model.yaml is not produced by the engine "
                f"(outputs: {sorted(outputs)})",
                fix="fix output.name in model.yaml",
            )
        return outputs[spec.name]
    return next(iter(outputs.values()))


def _match_count(ref: Detections, cand: Detections, iou_min: float) -> int:
    """One-to-one greedy matching (reference by score) of same-class boxes with IoU ≥ iou_min."""
    if len(ref) == 0 or len(cand) == 0:
        return 0
    iou = box_iou(ref.boxes, cand.boxes)
    iou[ref.class_ids[:, None] != cand.class_ids[None, :]] = 0.0
    taken = np.zeros(len(cand), dtype=bool)
    matched = 0
    for i in np.argsort(-ref.scores, kind="stable"):
        row = np.where(taken, 0.0, iou[i])
        j = int(np.argmax(row))
        if row[j] >= iou_min:
            taken[j] = True
            matched += 1
    return matched


def _box_result(n_ref: int, n_cand: int, matched: int, iou_min: float) -> MetricResult:
    ref_frac = matched / n_ref if n_ref else (1.0 if n_cand == 0 else 0.0)
    cand_frac = matched / n_cand if n_cand else (1.0 if n_ref == 0 else 0.0)
    return MetricResult(
        "box_agreement",
        min(ref_frac, cand_frac),
        True,
        {
            "ref_matched": round(ref_frac, 6),
            "cand_matched": round(cand_frac, 6),
            "reference_boxes": n_ref,
            "candidate_boxes": n_cand,
            "matched": matched,
            "iou": iou_min,
        },
    )


def box_agreement(
    reference: Sequence[Detections],
    candidate: Sequence[Detections],
    iou_min: float = MATCH_IOU,
) -> MetricResult:
    """Matched-box agreement over frames; value = min(ref_matched, cand_matched)."""
    n_ref = sum(len(d) for d in reference)
    n_cand = sum(len(d) for d in candidate)
    matched = sum(_match_count(r, c, iou_min) for r, c in zip(reference, candidate, strict=True))
    return _box_result(n_ref, n_cand, matched, iou_min)


class Top1Agreement:
    """Streaming top-1 agreement: one frame at a time."""

    def __init__(self, config: ModelBundleConfig) -> None:
        self.spec = config.output
        self.agree = 0
        self.frames = 0

    def add(self, ref: Mapping[str, np.ndarray], cand: Mapping[str, np.ndarray]) -> None:
        r = np.asarray(select_output(ref, self.spec)).reshape(-1)
        c = np.asarray(select_output(cand, self.spec)).reshape(-1)
        self.agree += int(np.argmax(r) == np.argmax(c))
        self.frames += 1

    def result(self) -> MetricResult:
        value = self.agree / self.frames if self.frames else 1.0
        return MetricResult(
            "top1_agreement", value, True, {"agree": self.agree, "frames": self.frames}
        )


class BoxAgreement:
    """Streaming matched-box agreement: per frame only the counts are kept."""

    def __init__(self, config: ModelBundleConfig) -> None:
        spec = config.output
        self.spec = spec
        self.kwargs = {
            "conf": spec.conf_threshold,
            "iou": spec.iou_threshold,
            "max_det": spec.max_detections,
        }
        self.n_ref = self.n_cand = self.matched = self.frames = 0

    def add(self, ref: Mapping[str, np.ndarray], cand: Mapping[str, np.ndarray]) -> None:
        ref_dets = decode_yolov8(select_output(ref, self.spec), **self.kwargs)
        cand_dets = decode_yolov8(select_output(cand, self.spec), **self.kwargs)
        for r, c in zip(ref_dets, cand_dets, strict=True):
            self.n_ref += len(r)
            self.n_cand += len(c)
            self.matched += _match_count(r, c, MATCH_IOU)
        self.frames += 1

    def result(self) -> MetricResult:
        result = _box_result(self.n_ref, self.n_cand, self.matched, MATCH_IOU)
        result.details["frames"] = self.frames
        return result


class RelativeError:
    """Streaming ``sum|cand - ref| / sum|ref|`` over all outputs."""

    def __init__(self, config: ModelBundleConfig) -> None:
        self.num = 0.0
        self.den = 0.0
        self.frames = 0

    def add(self, ref: Mapping[str, np.ndarray], cand: Mapping[str, np.ndarray]) -> None:
        for name, ref_arr in ref.items():
            a = np.asarray(ref_arr, dtype=np.float64)
            b = np.asarray(cand[name], dtype=np.float64)
            self.num += float(np.abs(b - a).sum())
            self.den += float(np.abs(a).sum())
        self.frames += 1

    def result(self) -> MetricResult:
        num, den = self.num, self.den
        value = num / den if den > 0 else (0.0 if num == 0 else float("inf"))
        return MetricResult("relative_error", value, False, {"frames": self.frames})


Agreement = Top1Agreement | BoxAgreement | RelativeError


def make_agreement(config: ModelBundleConfig) -> Agreement:
    """The streaming agreement accumulator of the bundle's task."""
    if config.task == "classify":
        return Top1Agreement(config)
    if config.task == "detect":
        return BoxAgreement(config)
    return RelativeError(config)


def compare_outputs(
    config: ModelBundleConfig,
    reference: Sequence[Mapping[str, np.ndarray]],
    candidate: Sequence[Mapping[str, np.ndarray]],
) -> MetricResult:
    """The task-aware agreement of candidate outputs with reference outputs (one per frame)."""
    if len(reference) != len(candidate):
        raise ValueError("reference and candidate need the same number of frames")
    acc = make_agreement(config)
    for r, c in zip(reference, candidate, strict=True):
        acc.add(r, c)
    return acc.result()


def tolerance_for(config: ModelBundleConfig) -> float:
    tol = config.tolerance
    if config.task == "classify":
        return tol.top1_agreement_min
    if config.task == "detect":
        return tol.box_agreement_min
    return tol.relative_error_max
