"""Calibration data readers: preprocessed tensors fed to ONNX Runtime's calibrators."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from agent.core.errors import CalibrationError
from agent.core.progress import ProgressFn, no_progress
from agent.engine.calibration import ADD_FRAMES_FIX

__all__ = ["FrameReader"]

log = logging.getLogger(__name__)


class FrameReader(CalibrationDataReader):
    """Feeds preprocessed tensors to ONNX Runtime's calibrators as ``{input_name: batch}``.

    ``batch`` > 1 concatenates consecutive tensors (for models with a fixed batch dimension);
    the last incomplete batch is filled by wrapping around. ``calls`` counts ``get_next`` calls
    that returned data, so tests can tell whether calibration ran.
    """

    def __init__(
        self,
        input_name: str,
        tensors: Sequence[np.ndarray],
        *,
        batch: int = 1,
        progress: ProgressFn = no_progress,
    ):
        if not tensors:
            raise CalibrationError("no calibration tensors to feed", fix=ADD_FRAMES_FIX)
        self.input_name = input_name
        self.tensors = list(tensors)
        self.batch = max(1, int(batch))
        self.progress = progress
        self.calls = 0
        self._batches = max(1, -(-len(self.tensors) // self.batch))
        self._index = 0
        self._end = self._batches

    def __len__(self) -> int:
        return self._batches

    def _batch(self, index: int) -> dict[str, np.ndarray]:
        start = index * self.batch
        items = [self.tensors[(start + i) % len(self.tensors)] for i in range(self.batch)]
        feed = items[0] if len(items) == 1 else np.concatenate(items, axis=0)
        return {self.input_name: feed}

    def get_next(self) -> dict[str, np.ndarray] | None:  # type: ignore[override]
        if self._index >= self._end:
            return None
        feed = self._batch(self._index)
        self._index += 1
        self.calls += 1
        self.progress(
            "calibrate", self._index / self._batches, f"batch {self._index}/{self._batches}"
        )
        return feed

    def feeds(self) -> Iterator[dict[str, np.ndarray]]:
        """Every batch once, built one at a time (not counted in ``calls``: the streamed
        passes after the first use it)."""
        for index in range(self._batches):
            yield self._batch(index)

    def rewind(self) -> None:
        self._index = 0
        self._end = self._batches

    def set_range(self, start_index: int, end_index: int) -> None:
        """Feed only batches ``start_index..end_index-1`` (ONNX Runtime's strided calibration)."""
        self._index = max(0, min(start_index, self._batches))
        self._end = max(self._index, min(end_index, self._batches))
