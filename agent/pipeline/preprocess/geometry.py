"""Camera-pipeline preprocessing: BGR uint8 frames → a batch tensor in a preallocated buffer.

Two interchangeable paths, chosen by :func:`make_preprocessor`:

* :class:`CpuPreprocessor` runs the reference :func:`agent.vision.letterbox.preprocess`
  (OpenCV ``INTER_LINEAR`` resize, Ultralytics letterbox or stretch, colour order,
  ``(pixel * scale - mean) / std``, NCHW/NHWC) frame by frame into one preallocated float32
  batch buffer, page-locked when CUDA is present so the runner's upload is truly asynchronous.
* :class:`GpuPreprocessor` uploads each frame (pinned staging → device) and runs ONE fused CUDA
  kernel (NVRTC, see :func:`~agent.backends.cuda.kernels.compile_kernel`) that resizes, letterboxes
  or stretches, swaps BGR→RGB, normalises and writes CHW (or HWC) into a device buffer: the input
  binding of the TensorRT runner, which runs on the same stream.

Both paths compute the geometry with :func:`fit_geometry`, which reproduces the reference's
rounding, so their :class:`LetterboxInfo` are equal.

Tolerance (GPU vs CPU): the kernel reproduces OpenCV's fixed-point bilinear resize (half-pixel
centres, source coordinate in double then float, 11-bit weights rounded to nearest even, the
SIMD vertical pass ``((b0·(S0>>4))>>16 + (b1·(S1>>4))>>16 + 2) >> 2``, edge clamping) and the
same float32 ``q·(scale/std) − mean/std``. On OpenCV 4.10/5.0 (x86 SSE/AVX) the two paths were
bit-identical. OpenCV builds whose vertical pass finishes a row in scalar code round those last
few values differently by one grey level, so the stated, tested tolerance is, per element,
``|gpu − cpu| ≤ 1 grey level · |scale/std_c|`` (:data:`MAX_LEVELS`) and, over the tensor,
``mean |gpu − cpu| ≤ 0.05 grey level · max_c |scale/std_c|`` (:data:`MEAN_LEVELS`); with the
default ``scale = 1/255`` that is max ≤ 1/255 and mean ≤ 0.05/255, tighter than 2/255 and 0.5/255.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from agent.config.model import InputSpec
from agent.core.closing import Closeable
from agent.vision.letterbox import LetterboxInfo

#: GPU vs CPU agreement, in 8-bit grey levels before ``scale/std``: per element, and mean.
MAX_LEVELS = 1.0
MEAN_LEVELS = 0.05


def tolerance(spec: InputSpec) -> tuple[float, float]:
    """(max, mean) absolute difference allowed between the GPU and CPU tensors for ``spec``."""
    gain = max(abs(spec.scale / s) for s in spec.std)
    return MAX_LEVELS * gain * (1 + 1e-5), MEAN_LEVELS * gain


@dataclass(frozen=True)
class FitGeometry:
    """Where the resized frame lands in the model input: ``new_w × new_h`` at ``left, top``."""

    info: LetterboxInfo
    left: int
    top: int
    new_w: int
    new_h: int


def fit_geometry(src_hw: tuple[int, int], spec: InputSpec, size_hw: tuple[int, int]) -> FitGeometry:
    """The reference preprocessing's geometry (Ultralytics letterbox rounding, or stretch)."""
    src_h, src_w = int(src_hw[0]), int(src_hw[1])
    height, width = int(size_hw[0]), int(size_hw[1])
    if spec.resize == "stretch":
        info = LetterboxInfo(width / src_w, 0.0, 0.0, src_w, src_h, scale_y=height / src_h)
        return FitGeometry(info, 0, 0, width, height)
    ratio = min(height / src_h, width / src_w)
    new_w, new_h = round(src_w * ratio), round(src_h * ratio)
    dw, dh = (width - new_w) / 2, (height - new_h) / 2
    top, left = round(dh - 0.1), round(dw - 0.1)
    return FitGeometry(
        LetterboxInfo(ratio, float(left), float(top), src_w, src_h), left, top, new_w, new_h
    )


def batch_shape(spec: InputSpec, size_hw: tuple[int, int], batch: int) -> tuple[int, ...]:
    height, width = int(size_hw[0]), int(size_hw[1])
    if batch < 1 or height < 1 or width < 1:
        raise ValueError(f"batch and size must be positive, got batch={batch}, size={size_hw}")
    return (batch, 3, height, width) if spec.layout == "NCHW" else (batch, height, width, 3)


class Preprocessor(Protocol):
    """What the worker pool needs from either path."""

    device: str
    batch: int
    size_hw: tuple[int, int]

    def process(self, frames: Sequence[np.ndarray]) -> list[LetterboxInfo]: ...

    def download(self) -> np.ndarray: ...

    def close(self) -> None: ...


class BatchPreprocessor(Closeable):
    batch: int

    def _check_count(self, frames: Sequence[np.ndarray]) -> None:
        if len(frames) > self.batch:
            raise ValueError(f"{len(frames)} frames for a batch of {self.batch}")
