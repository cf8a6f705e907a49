"""Task-aware agreement of a candidate's outputs with the float reference's.

* ``classify`` — top-1 agreement (fraction of frames whose arg-max class is the same);
* ``detect`` — matched-box agreement: reference detections matched one-to-one by a candidate
  detection of the same class with IoU ≥ 0.5 (``ref_matched``), and the symmetric fraction of
  candidate detections matched by a reference one (``cand_matched``); the gate uses the minimum;
* ``raw`` — mean relative error ``Σ|cand − ref| / Σ|ref|`` over all outputs (lower is better).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from agent.config.model import ModelBundleConfig, OutputSpec
from agent.core.errors import ValidationFailed
from agent.engine.validate.results import MetricResult
from agent.vision.decode import Detections, box_iou, decode_yolov8

__all__ = ["MATCH_IOU", "box_agreement", "compare_outputs", "select_output", "tolerance_for"]

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


def box_agreement(
    reference: Sequence[Detections],
    candidate: Sequence[Detections],
    iou_min: float = MATCH_IOU,
) -> MetricResult:
    """Matched-box agreement over frames; value = min(ref_matched, cand_matched)."""
    n_ref = sum(len(d) for d in reference)
    n_cand = sum(len(d) for d in candidate)
    matched = sum(_match_count(r, c, iou_min) for r, c in zip(reference, candidate, strict=True))
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


def compare_outputs(
    config: ModelBundleConfig,
    reference: Sequence[Mapping[str, np.ndarray]],
    candidate: Sequence[Mapping[str, np.ndarray]],
) -> MetricResult:
    """The task-aware agreement of candidate outputs with reference outputs (one per frame)."""
    if len(reference) != len(candidate):
        raise ValueError("reference and candidate need the same number of frames")
    spec = config.output
    if config.task == "classify":
        ref = [np.asarray(select_output(o, spec)).reshape(-1) for o in reference]
        cand = [np.asarray(select_output(o, spec)).reshape(-1) for o in candidate]
        same = sum(int(np.argmax(r) == np.argmax(c)) for r, c in zip(ref, cand, strict=True))
        frames = len(ref)
        return MetricResult(
            "top1_agreement",
            same / frames if frames else 1.0,
            True,
            {"agree": same, "frames": frames},
        )
    if config.task == "detect":
        ref_dets: list[Detections] = []
        cand_dets: list[Detections] = []
        for r, c in zip(reference, candidate, strict=True):
            kwargs = {
                "conf": spec.conf_threshold,
                "iou": spec.iou_threshold,
                "max_det": spec.max_detections,
            }
            ref_dets.extend(decode_yolov8(select_output(r, spec), **kwargs))
            cand_dets.extend(decode_yolov8(select_output(c, spec), **kwargs))
        result = box_agreement(ref_dets, cand_dets)
        result.details["frames"] = len(reference)
        return result
    num = 0.0
    den = 0.0
    for r, c in zip(reference, candidate, strict=True):
        for name, ref_arr in r.items():
            a = np.asarray(ref_arr, dtype=np.float64)
            b = np.asarray(c[name], dtype=np.float64)
            num += float(np.abs(b - a).sum())
            den += float(np.abs(a).sum())
    value = num / den if den > 0 else (0.0 if num == 0 else float("inf"))
    return MetricResult("relative_error", value, False, {"frames": len(reference)})


def tolerance_for(config: ModelBundleConfig) -> float:
    tol = config.tolerance
    if config.task == "classify":
        return tol.top1_agreement_min
    if config.task == "detect":
        return tol.box_agreement_min
    return tol.relative_error_max
