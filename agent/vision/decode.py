"""Vectorised output decoding: softmax top-k for classifiers, YOLOv8 boxes + class-aware NMS.

All functions are pure numpy and take the raw output tensors of a runner. Boxes are
``x1, y1, x2, y2`` in input-tensor pixels; map them back to the original frame with the
preprocessing step's ``LetterboxInfo``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "Detections",
    "box_iou",
    "decode_yolov8",
    "nms",
    "softmax",
    "softmax_topk",
]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

#: Candidates kept (by score) before NMS, as in common YOLO post-processing.
MAX_NMS_CANDIDATES = 30000


@dataclass(frozen=True)
class Detections:
    """Detections of one image: ``boxes`` [K,4] x1y1x2y2, ``scores`` [K], ``class_ids`` [K]."""

    boxes: FloatArray
    scores: FloatArray
    class_ids: IntArray

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls) -> Detections:
        return cls(
            np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64)
        )

    def to_json(self, labels: Sequence[str] = ()) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for box, score, cls in zip(self.boxes, self.scores, self.class_ids, strict=True):
            item: dict[str, Any] = {
                "box": [round(float(v), 2) for v in box],
                "score": round(float(score), 5),
                "class_id": int(cls),
            }
            if 0 <= int(cls) < len(labels):
                item["label"] = labels[int(cls)]
            out.append(item)
        return out


def softmax(logits: npt.ArrayLike, axis: int = -1) -> FloatArray:
    """Numerically stable softmax along ``axis`` (float32)."""
    x = np.asarray(logits, dtype=np.float32)
    shifted = x - np.max(x, axis=axis, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= np.sum(shifted, axis=axis, keepdims=True)
    return shifted


def softmax_topk(
    logits: npt.ArrayLike, k: int, *, apply_softmax: bool = True
) -> tuple[IntArray, FloatArray]:
    """Top-``k`` classes and their softmax probabilities.

    ``logits`` is [N, C] (or [C] for one image, which gives [k]-shaped results). Returns
    ``(class_ids, probs)``, each [N, k], best first. With ``apply_softmax=False`` the values
    are already probabilities (the model ends in Softmax) and are ranked as they are: a second
    softmax would flatten them toward uniform.
    """
    x = np.asarray(logits, dtype=np.float32)
    single = x.ndim == 1
    if single:
        x = x[None, :]
    if x.ndim != 2:
        x = x.reshape(x.shape[0], -1)
    num_classes = x.shape[1]
    k = max(1, min(int(k), num_classes))
    probs = softmax(x, axis=1) if apply_softmax else x
    if k < num_classes:
        part = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(num_classes), probs.shape).copy()
    part_probs = np.take_along_axis(probs, part, axis=1)
    order = np.argsort(-part_probs, axis=1, kind="stable")
    ids = np.take_along_axis(part, order, axis=1).astype(np.int64)
    top = np.take_along_axis(part_probs, order, axis=1)
    if single:
        return ids[0], top[0]
    return ids, top


def box_iou(a: npt.ArrayLike, b: npt.ArrayLike) -> FloatArray:
    """Pairwise IoU of x1y1x2y2 boxes: [M,4] × [K,4] → [M,K]."""
    a_ = np.asarray(a, dtype=np.float32).reshape(-1, 4)
    b_ = np.asarray(b, dtype=np.float32).reshape(-1, 4)
    area_a = np.clip(a_[:, 2] - a_[:, 0], 0, None) * np.clip(a_[:, 3] - a_[:, 1], 0, None)
    area_b = np.clip(b_[:, 2] - b_[:, 0], 0, None) * np.clip(b_[:, 3] - b_[:, 1], 0, None)
    lt = np.maximum(a_[:, None, :2], b_[None, :, :2])
    rb = np.minimum(a_[:, None, 2:], b_[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)


def nms(
    boxes: npt.ArrayLike,
    scores: npt.ArrayLike,
    iou_threshold: float,
    class_ids: npt.ArrayLike | None = None,
    max_det: int | None = None,
) -> IntArray:
    """Greedy NMS; indices of kept boxes, best score first.

    With ``class_ids`` it is class-aware: boxes are shifted by ``class_id * (max coordinate + 1)``
    so boxes of different classes never overlap, and one pass suppresses within each class.
    Each step compares the current best box with all remaining ones in one vector operation.
    """
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    s = np.asarray(scores, dtype=np.float32).reshape(-1)
    if b.shape[0] == 0:
        return np.zeros((0,), np.int64)
    if class_ids is not None:
        c = np.asarray(class_ids).reshape(-1).astype(np.float32)
        span = float(np.max(np.abs(b))) + 1.0
        b = b + (c * span)[:, None]
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    areas = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    order = np.argsort(-s, kind="stable")
    limit = b.shape[0] if max_det is None else int(max_det)
    keep: list[int] = []
    while order.size and len(keep) < limit:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        if rest.size == 0:
            break
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        union = areas[i] + areas[rest] - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def _decode_one(pred: FloatArray, conf: float, iou: float, max_det: int) -> Detections:
    # pred: [4 + C, A]
    if pred.shape[0] < 5:
        raise ValueError(
            f"YOLOv8 output needs 4 box rows plus at least one class row, got shape {pred.shape}"
        )
    cls_scores = pred[4:]
    class_ids = np.argmax(cls_scores, axis=0)
    scores = np.take_along_axis(cls_scores, class_ids[None, :], axis=0)[0]
    mask = scores > conf
    if not np.any(mask):
        return Detections.empty()
    idx = np.nonzero(mask)[0]
    if idx.size > MAX_NMS_CANDIDATES:
        idx = idx[np.argsort(-scores[idx], kind="stable")[:MAX_NMS_CANDIDATES]]
    cx, cy, w, h = pred[0, idx], pred[1, idx], pred[2, idx], pred[3, idx]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)
    sel_scores = scores[idx].astype(np.float32)
    sel_cls = class_ids[idx].astype(np.int64)
    keep = nms(boxes, sel_scores, iou, class_ids=sel_cls, max_det=max_det)
    return Detections(boxes[keep], sel_scores[keep], sel_cls[keep])


def decode_yolov8(
    output: npt.ArrayLike,
    conf: float = 0.25,
    iou: float = 0.5,
    max_det: int = 100,
) -> list[Detections]:
    """Decode YOLOv8-layout output ``[N, 4+C, A]`` (or one image's ``[4+C, A]``).

    Rows 0-3 are cx, cy, w, h in input pixels; rows 4.. are per-class scores (already
    sigmoid). Each anchor takes its best class; anchors with score > ``conf`` go through
    class-aware NMS at ``iou``; at most ``max_det`` survive per image, best first.
    """
    out = np.asarray(output, dtype=np.float32)
    if out.ndim == 2:
        out = out[None]
    if out.ndim != 3:
        raise ValueError(f"YOLOv8 output must be [N, 4+C, A] or [4+C, A], got shape {out.shape}")
    return [_decode_one(out[n], conf, iou, max_det) for n in range(out.shape[0])]
