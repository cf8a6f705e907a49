"""Raw runner outputs → typed :class:`Result` records, one per frame of a batch.

* ``classify`` (``softmax_topk``): softmax over the logits (not when ``output.softmax`` is
  ``none``: the model ends in Softmax), top-k ``(label, probability)``.
* ``detect`` (``yolov8``): :func:`agent.vision.decode.decode_yolov8` (best class per anchor,
  confidence threshold, class-aware NMS, at most ``max_detections``), boxes mapped from model-input
  pixels back to source-frame pixels through each frame's :class:`LetterboxInfo`.
* ``raw``: summary statistics of each output tensor's slice for the frame, in ``Result.raw``.

Timings: the caller's per-stage milliseconds (``queue``, ``preprocess``, ``infer``...) are kept;
``postprocess`` is measured here, and ``total`` (capture → result, from ``Frame.t_capture``) is
added when the caller did not give it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from agent.config.model import ModelBundleConfig
from agent.pipeline.frames import Detection, Frame, Result
from agent.vision.decode import decode_yolov8, softmax_topk
from agent.vision.letterbox import LetterboxInfo

__all__ = ["Postprocessor"]

Timings = Mapping[str, float]


class Postprocessor:
    """Turns a batch's outputs into results for ``bundle_config``'s task and output decoding.

    ``labels`` name the classes by index (the bundle's resolved labels); a class without a
    label is named by its index.
    """

    def __init__(self, bundle_config: ModelBundleConfig, labels: Sequence[str] | None = None):
        self.config = bundle_config
        if labels is None:
            labels = bundle_config.labels if isinstance(bundle_config.labels, list) else ()
        self.labels: tuple[str, ...] = tuple(labels)
        decode = bundle_config.output.decode
        expected = {"classify": "softmax_topk", "detect": "yolov8", "raw": "raw"}
        if decode != "raw" and expected[bundle_config.task] != decode:
            raise ValueError(
                f"model '{bundle_config.name}': task '{bundle_config.task}' cannot use "
                f"output decoding '{decode}' (use '{expected[bundle_config.task]}' or 'raw')"
            )

    def label(self, class_id: int) -> str:
        return self.labels[class_id] if 0 <= class_id < len(self.labels) else str(class_id)

    def select_output(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The output tensor named in ``output.name``, else the first one."""
        if not outputs:
            raise ValueError("the runner returned no outputs")
        name = self.config.output.name
        if name is None:
            return np.asarray(next(iter(outputs.values())))
        if name not in outputs:
            raise KeyError(
                f"output '{name}' (model.yaml output.name) is not among the runner's outputs "
                f"{sorted(outputs)}; fix output.name"
            )
        return np.asarray(outputs[name])

    def process(
        self,
        frames: Sequence[Frame],
        outputs: Mapping[str, np.ndarray],
        letterboxes: Sequence[LetterboxInfo],
        timings: Sequence[Timings] | Timings | None = None,
    ) -> list[Result]:
        """One :class:`Result` per frame. Outputs may carry a larger (padded) batch than
        ``frames``; extra rows are ignored. ``timings`` is one mapping per frame or one shared
        by the whole batch."""
        t0 = time.perf_counter()
        n = len(frames)
        if len(letterboxes) != n:
            raise ValueError(f"{n} frames but {len(letterboxes)} letterbox records")
        if n == 0:
            return []
        decode = self.config.output.decode
        per_frame: list[dict[str, Any]]
        if decode == "softmax_topk":
            per_frame = self._classify(self._batch(self.select_output(outputs), n))
        elif decode == "yolov8":
            per_frame = self._detect(self._batch(self.select_output(outputs), n), letterboxes)
        else:
            per_frame = self._raw(outputs, n)
        post_ms = (time.perf_counter() - t0) * 1e3
        now = time.monotonic()
        results: list[Result] = []
        for i, frame in enumerate(frames):
            stage = self._timings_for(timings, i)
            stage["postprocess"] = post_ms
            stage.setdefault("total", (now - frame.t_capture) * 1e3)
            results.append(
                Result(
                    source=frame.source,
                    index=frame.index,
                    wall_time=frame.wall_time,
                    model=self.config.name,
                    task=self.config.task,
                    timings_ms=stage,
                    **per_frame[i],
                )
            )
        return results

    @staticmethod
    def _timings_for(timings: Sequence[Timings] | Timings | None, i: int) -> dict[str, float]:
        if timings is None:
            return {}
        if isinstance(timings, Mapping):
            return {str(k): float(v) for k, v in timings.items()}
        return {str(k): float(v) for k, v in timings[i].items()}

    @staticmethod
    def _batch(out: np.ndarray, n: int) -> np.ndarray:
        if out.ndim == 0 or out.shape[0] < n:
            raise ValueError(f"output has shape {out.shape}; expected a batch of at least {n}")
        return out[:n]

    def _classify(self, logits: np.ndarray) -> list[dict[str, Any]]:
        spec = self.config.output
        ids, probs = softmax_topk(
            logits.reshape(logits.shape[0], -1), spec.top_k, apply_softmax=spec.applies_softmax
        )
        return [
            {
                "top_k": tuple(
                    (self.label(int(c)), float(p)) for c, p in zip(ids[i], probs[i], strict=True)
                )
            }
            for i in range(ids.shape[0])
        ]

    def _detect(
        self, pred: np.ndarray, letterboxes: Sequence[LetterboxInfo]
    ) -> list[dict[str, Any]]:
        spec = self.config.output
        decoded = decode_yolov8(
            pred,
            conf=spec.conf_threshold,
            iou=spec.iou_threshold,
            max_det=spec.max_detections,
        )
        per_frame: list[dict[str, Any]] = []
        for dets, info in zip(decoded, letterboxes, strict=True):
            boxes = info.to_source(dets.boxes)
            per_frame.append(
                {
                    "detections": tuple(
                        Detection(
                            label=self.label(int(c)),
                            class_id=int(c),
                            score=float(s),
                            box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                        )
                        for b, s, c in zip(boxes, dets.scores, dets.class_ids, strict=True)
                    )
                }
            )
        return per_frame

    def _raw(self, outputs: Mapping[str, np.ndarray], n: int) -> list[dict[str, Any]]:
        if not outputs:
            raise ValueError("the runner returned no outputs")
        names = [self.config.output.name] if self.config.output.name else list(outputs)
        batches = {name: self._batch(np.asarray(outputs[name]), n) for name in names}
        per_frame: list[dict[str, Any]] = []
        for i in range(n):
            summary: dict[str, Any] = {}
            for name, batch in batches.items():
                x = np.asarray(batch[i])
                xf = x.astype(np.float64)
                summary[name] = {
                    "shape": list(x.shape),
                    "dtype": str(x.dtype),
                    "min": float(xf.min()) if x.size else None,
                    "max": float(xf.max()) if x.size else None,
                    "mean": float(xf.mean()) if x.size else None,
                    "std": float(xf.std()) if x.size else None,
                    "argmax": int(np.argmax(x)) if x.size else None,
                }
            per_frame.append({"raw": {"outputs": summary}})
        return per_frame
