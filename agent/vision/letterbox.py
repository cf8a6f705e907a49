"""CPU reference preprocessing: frame (BGR uint8) -> model input tensor.

Used by calibration, by the validation gate and as the reference the camera pipeline's own
preprocessing is tested against. Letterboxing follows Ultralytics exactly (``cv2.resize`` with
``INTER_LINEAR``, the image centred, the border split as ``round(d - 0.1)`` / ``round(d + 0.1)``)
so that a YOLO export sees the pixels it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from agent.config.model import InputSpec
from agent.core.errors import ModelError

__all__ = [
    "MIN_FRAME_SIDE",
    "InvalidFrame",
    "LetterboxInfo",
    "load_image_or_npy",
    "preprocess",
    "validate_frame",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

#: The smallest frame side (pixels) accepted. Below it an image carries too little to classify or
#: detect anything: upscaled to the model input it is a few flat blocks, and a model would still
#: answer with confidence. Absolute, not relative to the model input, so one file is accepted or
#: refused the same way by every model (calibration, the gate, ``infer``, the camera pipeline).
MIN_FRAME_SIDE = 8


class InvalidFrame(ModelError, ValueError):
    """A frame is not an image the preprocessing can use (dtype, shape, unreadable file)."""


@dataclass(frozen=True)
class LetterboxInfo:
    """How a source frame was fitted into the model input.

    ``input = source * scale + pad`` (per axis). For letterbox ``scale`` is shared by both axes;
    for stretch ``scale_y`` holds the vertical factor (``None`` means "same as ``scale``").
    """

    scale: float
    pad_x: float
    pad_y: float
    src_w: int
    src_h: int
    scale_y: float | None = None

    @property
    def sy(self) -> float:
        return self.scale if self.scale_y is None else self.scale_y

    def to_source(self, boxes: npt.ArrayLike, *, clip: bool = True) -> np.ndarray:
        """Map ``x1, y1, x2, y2`` boxes (N x 4, model-input pixels) to source-frame pixels,
        clipped to the frame. Returns a new float32 array."""
        arr = np.array(boxes, dtype=np.float32, copy=True).reshape(-1, 4)
        arr[:, 0::2] = (arr[:, 0::2] - self.pad_x) / self.scale
        arr[:, 1::2] = (arr[:, 1::2] - self.pad_y) / self.sy
        if clip:
            np.clip(arr[:, 0::2], 0, self.src_w, out=arr[:, 0::2])
            np.clip(arr[:, 1::2], 0, self.src_h, out=arr[:, 1::2])
        return arr

    def to_input(self, boxes: npt.ArrayLike) -> np.ndarray:
        """Inverse of :meth:`to_source` (no clipping): source pixels -> model-input pixels."""
        arr = np.array(boxes, dtype=np.float32, copy=True).reshape(-1, 4)
        arr[:, 0::2] = arr[:, 0::2] * self.scale + self.pad_x
        arr[:, 1::2] = arr[:, 1::2] * self.sy + self.pad_y
        return arr


def validate_frame(frame: object, *, what: str = "frame") -> np.ndarray:
    """Return ``frame`` as a BGR ``uint8`` H x W x 3 array.

    Grayscale (H x W or H x W x 1) is expanded, BGRA drops its alpha; anything else, and a
    frame with a side under :data:`MIN_FRAME_SIDE` pixels, raises :class:`InvalidFrame` saying
    what was received (``what`` names it: a file path, or "frame").
    """
    if not isinstance(frame, np.ndarray):
        raise InvalidFrame(
            f"{what} is a {type(frame).__name__}, not a numpy array",
            fix="pass the BGR uint8 image as decoded by OpenCV (cv2.imread / VideoCapture)",
        )
    if frame.dtype != np.uint8:
        raise InvalidFrame(
            f"{what} has dtype {frame.dtype}; 8-bit frames are expected",
            fix="convert to uint8 (e.g. cv2.convertScaleAbs, or (x / x.max() * 255).astype(uint8))",
        )
    if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1):
        frame = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_GRAY2BGR)
    elif frame.ndim == 3 and frame.shape[2] == 4:
        frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    elif not (frame.ndim == 3 and frame.shape[2] == 3):
        raise InvalidFrame(
            f"{what} has shape {tuple(frame.shape)}; expected H x W x 3 (BGR), H x W, "
            "H x W x 1 (grayscale) or H x W x 4 (BGRA)",
            fix="pass an image array, not a tensor (CHW tensors are already preprocessed)",
        )
    if frame.shape[0] < 1 or frame.shape[1] < 1:
        raise InvalidFrame(f"{what} is empty (shape {tuple(frame.shape)})", fix="skip it")
    if min(frame.shape[0], frame.shape[1]) < MIN_FRAME_SIDE:
        height, width = frame.shape[:2]
        raise InvalidFrame(
            f"{what} is {width} x {height} pixels, too small to mean anything to a model "
            f"(at least {MIN_FRAME_SIDE} x {MIN_FRAME_SIDE} is needed; it would be stretched, "
            "not seen)",
            fix=f"use the full-size image (a thumbnail or a crop of at least {MIN_FRAME_SIDE} "
            "pixels per side), or remove the file",
        )
    return frame


def _fit(frame: np.ndarray, spec: InputSpec, size_hw: tuple[int, int]):
    """Resize/pad ``frame`` into an H x W x 3 uint8 canvas; return it and the geometry."""
    height, width = size_hw
    src_h, src_w = frame.shape[:2]
    if spec.resize == "stretch":
        canvas = frame
        if (src_h, src_w) != (height, width):
            canvas = cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR)
        info = LetterboxInfo(width / src_w, 0.0, 0.0, src_w, src_h, scale_y=height / src_h)
        return canvas, info
    ratio = min(height / src_h, width / src_w)
    new_w, new_h = round(src_w * ratio), round(src_h * ratio)
    dw, dh = (width - new_w) / 2, (height - new_h) / 2
    resized = frame
    if (src_w, src_h) != (new_w, new_h):
        resized = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    canvas = cv2.copyMakeBorder(
        resized,
        top,
        bottom,
        left,
        right,
        cv2.BORDER_CONSTANT,
        value=(spec.pad_value, spec.pad_value, spec.pad_value),
    )
    # Ultralytics' rounding can leave the canvas one pixel off for odd residues; fix it up.
    if canvas.shape[:2] != (height, width):
        canvas = canvas[:height, :width]
        if canvas.shape[:2] != (height, width):
            canvas = cv2.copyMakeBorder(
                canvas,
                0,
                height - canvas.shape[0],
                0,
                width - canvas.shape[1],
                cv2.BORDER_CONSTANT,
                value=(spec.pad_value,) * 3,
            )
    return canvas, LetterboxInfo(ratio, float(left), float(top), src_w, src_h)


def preprocess(
    frame_bgr: np.ndarray,
    spec: InputSpec,
    size_hw: tuple[int, int],
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, LetterboxInfo]:
    """Frame -> float32 model input with a batch dimension: ``[1, 3, H, W]`` (NCHW) or
    ``[1, H, W, 3]`` (NHWC), values ``(pixel * scale - mean) / std`` in the model's colour order.

    ``out``, when given, must be a C-contiguous float32 array of that shape (or without the
    batch dimension); it is filled in place and returned (as a view with the batch dimension),
    so a pipeline can reuse one buffer per worker.
    """
    frame = validate_frame(frame_bgr)
    height, width = int(size_hw[0]), int(size_hw[1])
    if height < 1 or width < 1:
        raise ValueError(f"size_hw must be positive, got {size_hw}")
    shape = (1, 3, height, width) if spec.layout == "NCHW" else (1, height, width, 3)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    else:
        if out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ValueError("out must be a C-contiguous float32 array")
        if out.shape not in (shape, shape[1:]):
            raise ValueError(f"out has shape {out.shape}; expected {shape} or {shape[1:]}")
        out = out.reshape(shape)
    canvas, info = _fit(frame, spec, size_hw)
    # canvas channel k (BGR) feeds model channel c
    order = (2, 1, 0) if spec.color == "rgb" else (0, 1, 2)
    for c, k in enumerate(order):
        alpha = np.float32(spec.scale / spec.std[c])
        beta = np.float32(spec.mean[c] / spec.std[c])
        dst = out[0, c] if spec.layout == "NCHW" else out[0, :, :, c]
        np.multiply(canvas[:, :, k], alpha, out=dst, casting="unsafe")
        if beta:
            np.subtract(dst, beta, out=dst)
    return out, info


def load_image_or_npy(path: Path) -> np.ndarray:
    """Read an image file (BGR uint8, alpha dropped, grayscale expanded) or a ``.npy`` array
    (returned as stored: a raw frame or an already preprocessed tensor)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise InvalidFrame(
                f"cannot read numpy file: {exc}",
                fix="re-save it with numpy.save (no pickled objects)",
                path=path,
            ) from exc
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise InvalidFrame(f"cannot read image: {exc}", fix="check the file", path=path) from exc
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise InvalidFrame(
            "not a decodable image (empty, truncated or not JPEG/PNG/BMP)",
            fix="delete or replace the file",
            path=path,
        )
    if image.dtype == np.uint16:
        image = (np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8)
    return validate_frame(image, what=str(path))
