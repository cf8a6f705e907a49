"""Drawing results on a frame: boxes with their label and score, and the top-k classes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import cv2
import numpy as np

_PALETTE = (
    (56, 56, 255),
    (151, 157, 255),
    (31, 112, 255),
    (29, 178, 255),
    (49, 210, 207),
    (10, 249, 72),
    (23, 204, 146),
    (134, 219, 61),
)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


class LabelledBox(Protocol):
    """One detection in image pixels (``agent.pipeline.frames.Detection`` is one)."""

    @property
    def label(self) -> str: ...
    @property
    def class_id(self) -> int: ...
    @property
    def score(self) -> float: ...
    @property
    def box(self) -> tuple[float, float, float, float]: ...


def _draw_box(out: np.ndarray, det: LabelledBox, thick: int) -> None:
    color = _PALETTE[det.class_id % len(_PALETTE)]
    x1, y1, x2, y2 = (round(v) for v in det.box)
    cv2.rectangle(out, (x1, y1), (x2, y2), color, thick)
    text = f"{det.label} {det.score:.2f}"
    (tw, th), base = cv2.getTextSize(text, _FONT, 0.4 * thick, thick)
    ty = y1 - 2 if y1 - th - base - 2 >= 0 else y1 + th + base + 2
    cv2.rectangle(out, (x1, ty - th - base), (x1 + tw, ty + base - 1), color, -1)
    cv2.putText(out, text, (x1, ty - 1), _FONT, 0.4 * thick, (0, 0, 0), thick)


def draw_overlay(
    image: np.ndarray,
    detections: Sequence[LabelledBox],
    top_k: Sequence[tuple[str, float]] = (),
) -> np.ndarray:
    """A copy of the BGR ``image`` with the boxes, their labels and the first three top-k
    classes drawn on it."""
    out = np.ascontiguousarray(image.copy())
    h, w = out.shape[:2]
    thick = max(1, round(min(h, w) / 320))
    for det in detections:
        _draw_box(out, det, thick)
    y = 14 * thick
    for label, score in top_k[:3]:
        cv2.putText(out, f"{label} {score:.2f}", (4, y), _FONT, 0.4 * thick, (0, 255, 0), thick)
        y += 14 * thick
    return out
