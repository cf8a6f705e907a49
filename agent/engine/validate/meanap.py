"""mAP at IoU 0.5, pure numpy: per-frame matching of detections to labelled boxes and the
all-point interpolated average precision, weighted by frame so that bootstrap resamples of the
frames need no re-sorting.

* :func:`match_frame` — detections (highest score first) each take the unmatched labelled box
  of their class with the highest IoU, when it is >= 0.5 (COCO-style greedy matching): a true
  positive; otherwise a false positive.
* :func:`map50` — per class, precision/recall over all detections sorted by score, the
  precision envelope (max to the right) and ``AP = sum(delta recall x envelope)`` (VOC 2010+
  all-point interpolation); the mean over the classes that have labelled boxes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from agent.vision.decode import box_iou

__all__ = ["MAP_IOU", "DetectionRecords", "map50", "match_frame"]

log = logging.getLogger(__name__)

#: IoU for a detection to hit a labelled box.
MAP_IOU = 0.5
#: Detections x frames per bootstrap chunk (bounds the chunk's memory).
_CHUNK_CELLS = 2_000_000


def match_frame(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    gt_boxes: np.ndarray,
    gt_classes: np.ndarray,
    *,
    iou_min: float = MAP_IOU,
) -> np.ndarray:
    """True-positive flags of one frame's detections (in their given order)."""
    tp = np.zeros(len(scores), dtype=bool)
    if len(scores) == 0 or len(gt_classes) == 0:
        return tp
    iou = box_iou(boxes, gt_boxes).astype(np.float64)
    iou[np.asarray(classes)[:, None] != np.asarray(gt_classes)[None, :]] = -1.0
    taken = np.zeros(len(gt_classes), dtype=bool)
    for i in np.argsort(-np.asarray(scores), kind="stable"):
        row = np.where(taken, -1.0, iou[i])
        j = int(np.argmax(row))
        if row[j] >= iou_min:
            taken[j] = True
            tp[i] = True
    return tp


@dataclass(frozen=True)
class DetectionRecords:
    """Every frame's matched detections, flattened and sorted by score (highest first)."""

    frame: np.ndarray  # int64 [D]: the frame of each detection
    cls: np.ndarray  # int64 [D]
    tp: np.ndarray  # float64 [D]: 1 for a true positive
    gt: np.ndarray  # float64 [F, C]: labelled boxes per frame and class

    @property
    def frames(self) -> int:
        return int(self.gt.shape[0])

    @classmethod
    def build(
        cls,
        scores: list[np.ndarray],
        classes: list[np.ndarray],
        tps: list[np.ndarray],
        gt_classes: list[np.ndarray],
    ) -> DetectionRecords:
        frames = len(gt_classes)
        all_scores = np.concatenate([np.zeros(0, np.float64), *scores]).astype(np.float64)
        all_cls = np.concatenate([np.zeros(0, np.int64), *classes]).astype(np.int64)
        all_tp = np.concatenate([np.zeros(0, bool), *tps]).astype(np.float64)
        owner = np.concatenate(
            [np.zeros(0, np.int64), *(np.full(len(s), i, np.int64) for i, s in enumerate(scores))]
        )
        n_cls = 1 + max(
            [int(all_cls.max(initial=-1))] + [int(g.max(initial=-1)) for g in gt_classes]
        )
        gt = np.zeros((frames, max(n_cls, 1)), np.float64)
        for i, g in enumerate(gt_classes):
            np.add.at(gt[i], np.asarray(g, np.int64), 1.0)
        order = np.argsort(-all_scores, kind="stable")
        owner, all_cls, all_tp = owner[order], all_cls[order], all_tp[order]
        keep = _before_last_tp(all_cls, all_tp)
        return cls(owner[keep], all_cls[keep], all_tp[keep], gt)


def _before_last_tp(cls_ids: np.ndarray, tp: np.ndarray) -> np.ndarray:
    """Mask of the detections up to each class's last true positive (score order). The false
    positives after it change no AP, under any frame weights: recall no longer grows and
    precision only falls along them, so the envelope at every true positive ignores them."""
    keep = np.zeros(len(tp), dtype=bool)
    for c in np.unique(cls_ids):
        where = np.flatnonzero(cls_ids == c)
        hits = where[tp[where] > 0]
        if len(hits):
            keep[where[where <= hits[-1]]] = True
    return keep


def _class_ap(rec: DetectionRecords, c: int, weights: np.ndarray, n_gt: np.ndarray) -> np.ndarray:
    """AP of class ``c`` per weight row (``weights``: B x F); NaN where it has no labels."""
    ap = np.full(weights.shape[0], np.nan)
    present = n_gt > 0
    sel = rec.cls == c
    if not sel.any():
        ap[present] = 0.0
        return ap
    w = weights[:, rec.frame[sel]]
    tp = rec.tp[sel]
    tp_w = np.cumsum(w * tp, axis=1)
    all_w = np.cumsum(w, axis=1)
    precision = np.divide(tp_w, all_w, out=np.zeros_like(tp_w), where=all_w > 0)
    envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    d_recall = w * tp / np.where(present, n_gt, 1.0)[:, None]
    # float sums of recall steps can land one ulp above 1; AP is a fraction
    ap[present] = np.minimum((d_recall * envelope).sum(axis=1)[present], 1.0)
    return ap


def map50(rec: DetectionRecords, weights: np.ndarray | None = None) -> np.ndarray:
    """mAP over the classes with labelled boxes, one value per row of ``weights`` (B x F frame
    weights; None = every frame once). NaN where no class has a labelled box."""
    if weights is None:
        weights = np.ones((1, rec.frames), np.float64)
    weights = np.atleast_2d(np.asarray(weights, np.float64))
    out = np.full(weights.shape[0], np.nan)
    step = max(1, _CHUNK_CELLS // max(1, len(rec.tp)))
    gt_w = weights @ rec.gt  # B x C
    classes = [c for c in range(rec.gt.shape[1]) if rec.gt[:, c].sum() > 0]
    if not classes:
        return out
    for start in range(0, weights.shape[0], step):
        rows = slice(start, start + step)
        aps = np.stack([_class_ap(rec, c, weights[rows], gt_w[rows, c]) for c in classes])
        valid = ~np.isnan(aps)
        counts = valid.sum(axis=0)
        sums = np.where(valid, aps, 0.0).sum(axis=0)
        out[rows] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return out
