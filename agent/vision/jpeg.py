"""The one home of JPEG encoding: snapshots, calibration frames and the snapshot command."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

_FALLBACK_QUALITIES = (70, 50, 30)
_MIN_SIDE = 32


@dataclass(frozen=True)
class Jpeg:
    """An encoded image and the size it was encoded at (after any downscaling)."""

    data: bytes
    width: int
    height: int


def encode_jpeg(image: np.ndarray, quality: int) -> bytes | None:
    """JPEG bytes of a BGR (or grey) ``image`` at ``quality`` (0-100); None if OpenCV cannot
    encode it."""
    ok, buf = cv2.imencode(".jpg", image, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    return buf.tobytes() if ok else None


def as_uint8(frame: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """``frame`` as uint8 pixels (other dtypes are clipped to 0..255)."""
    image = np.asarray(frame)
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    return image


def encode_jpeg_within(image: npt.ArrayLike, *, max_bytes: int, quality: int) -> Jpeg | None:
    """JPEG of ``image`` no larger than ``max_bytes``: tries ``quality`` then 70, 50 and 30
    (never above ``quality``), then halves the size and tries again. None when even an image
    under 32 pixels a side does not fit."""
    pixels = as_uint8(image)
    while True:
        for q in (quality, *_FALLBACK_QUALITIES):
            data = encode_jpeg(pixels, min(q, quality))
            if data is not None and len(data) <= max_bytes:
                return Jpeg(data, int(pixels.shape[1]), int(pixels.shape[0]))
        if min(pixels.shape[:2]) < _MIN_SIDE:
            return None
        pixels = np.asarray(cv2.resize(pixels, (pixels.shape[1] // 2, pixels.shape[0] // 2)))
