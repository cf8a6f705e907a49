"""The records that flow through the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One decoded frame. ``image`` is BGR uint8 H×W×3 as OpenCV decodes it.

    ``index`` counts frames of its source from 0 (gaps mean drops); ``t_capture`` is
    ``time.monotonic()`` when the decoder produced it, ``wall_time`` ``time.time()`` then.
    """

    source: str
    index: int
    image: np.ndarray
    t_capture: float
    wall_time: float
    prepared: Prepared | None = None  # the model input, when preprocessed before the pool


@dataclass(frozen=True)
class Prepared:
    """One frame's model input made ahead of the worker (CPU path): ``tensor`` is C×H×W or
    H×W×C float32 as the bundle's layout says, ``letterbox`` maps boxes back, ``ms`` is the
    time it took."""

    tensor: np.ndarray
    letterbox: Any
    ms: float


@dataclass(frozen=True)
class Detection:
    """One box in source-frame pixels."""

    label: str
    class_id: int
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2


@dataclass(frozen=True)
class Result:
    """What the pipeline produced for one frame.

    ``timings_ms`` holds per-stage durations: ``queue`` (capture → picked by a worker),
    ``preprocess``, ``infer``, ``postprocess`` and ``total`` (capture → result).
    """

    source: str
    index: int
    wall_time: float
    model: str
    task: str
    detections: tuple[Detection, ...] = ()
    top_k: tuple[tuple[str, float], ...] = ()
    raw: dict[str, Any] | None = None
    timings_ms: dict[str, float] = field(default_factory=dict[str, float])
    frame: np.ndarray | None = None  # kept only when a sink asked for images

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "index": self.index,
            "wall_time": self.wall_time,
            "model": self.model,
            "task": self.task,
            "detections": [
                {
                    "label": d.label,
                    "class_id": d.class_id,
                    "score": round(d.score, 4),
                    "box": [round(v, 1) for v in d.box],
                }
                for d in self.detections
            ],
            "top_k": [{"label": lbl, "score": round(s, 4)} for lbl, s in self.top_k],
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
        }
