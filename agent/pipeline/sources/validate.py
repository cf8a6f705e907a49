"""Frame validation: every frame a source queues is BGR uint8 H×W×3 of one size per connection.

Gray and BGRA are converted, 16-bit is scaled down, a requested size is resized to; anything
else is rejected with a reason (the source reports it once per connection and counts it).
"""

from __future__ import annotations

import cv2
import numpy as np


class FrameCheck:
    """Validates and normalises one connection's frames. ``size`` is the requested
    ``(width, height)`` (frames of another size are resized); without it the first frame's
    size is the connection's and a later change is rejected. :meth:`reset` on reconnect."""

    def __init__(self, size: tuple[int, int] | None) -> None:
        self.size = size
        self._expected: tuple[int, int] | None = None  # (h, w) of this connection's frames

    def reset(self) -> None:
        self._expected = None

    def check(self, img: object) -> np.ndarray | str:
        """The normalised frame, or why it was rejected."""
        if not isinstance(img, np.ndarray) or img.size == 0:
            return "empty or undecodable frame"
        if img.dtype == np.uint16:
            img = (img >> 8).astype(np.uint8)
        elif img.dtype != np.uint8:
            return f"unsupported pixel type {img.dtype} (expected uint8)"
        channels = 1 if img.ndim == 2 else (img.shape[2] if img.ndim == 3 else -1)
        if channels == 1:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        elif channels == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
        elif channels != 3:
            return f"frame of shape {img.shape}: expected 1, 3 or 4 channels"
        h, w = int(img.shape[0]), int(img.shape[1])
        if self.size is not None:
            if (w, h) != self.size:
                img = cv2.resize(img, self.size, interpolation=cv2.INTER_AREA)
        elif self._expected is None:
            self._expected = (h, w)
        elif self._expected != (h, w):
            eh, ew = self._expected
            return f"frame size changed from {ew}x{eh} to {w}x{h} mid-stream"
        return np.ascontiguousarray(img)
