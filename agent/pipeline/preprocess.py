"""Camera-pipeline preprocessing: BGR uint8 frames → a batch tensor in a preallocated buffer.

Two interchangeable paths, chosen by :func:`make_preprocessor`:

* :class:`CpuPreprocessor` runs the reference :func:`agent.vision.letterbox.preprocess`
  (OpenCV ``INTER_LINEAR`` resize, Ultralytics letterbox or stretch, colour order,
  ``(pixel * scale - mean) / std``, NCHW/NHWC) frame by frame into one preallocated float32
  batch buffer, page-locked when CUDA is present so the runner's upload is truly asynchronous.
* :class:`GpuPreprocessor` uploads each frame (pinned staging → device) and runs ONE fused CUDA
  kernel (NVRTC, see :func:`agent.backends.cuda.compile_kernel`) that resizes, letterboxes or
  stretches, swaps BGR→RGB, normalises and writes CHW (or HWC) into a device buffer: the input
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

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from agent.backends import cuda
from agent.config.schema import InputSpec
from agent.core.closing import Closeable
from agent.core.errors import BackendUnavailable
from agent.vision.letterbox import LetterboxInfo, preprocess, validate_frame

__all__ = [
    "KERNEL_NAME",
    "KERNEL_SOURCE",
    "MAX_LEVELS",
    "MEAN_LEVELS",
    "CpuPreprocessor",
    "FitGeometry",
    "GpuPreprocessor",
    "Preprocessor",
    "fit_geometry",
    "make_preprocessor",
    "tolerance",
]

log = logging.getLogger(__name__)

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


def _batch_shape(spec: InputSpec, size_hw: tuple[int, int], batch: int) -> tuple[int, ...]:
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


class _Base(Closeable):
    batch: int

    def _check_count(self, frames: Sequence[np.ndarray]) -> None:
        if len(frames) > self.batch:
            raise ValueError(f"{len(frames)} frames for a batch of {self.batch}")


class CpuPreprocessor(_Base):
    """Reference preprocessing into one preallocated batch buffer (:attr:`buffer`).

    ``pinned``: page-locked memory (cuda-python) — ``None`` means "when CUDA is available".
    The buffer is allocated once; :meth:`process` fills slots ``0..len(frames)-1`` in place.
    """

    device = "cpu"

    def __init__(
        self,
        spec: InputSpec,
        size_hw: tuple[int, int],
        batch: int = 1,
        *,
        pinned: bool | None = None,
    ):
        self.spec = spec
        self.size_hw = (int(size_hw[0]), int(size_hw[1]))
        self.batch = int(batch)
        shape = _batch_shape(spec, self.size_hw, self.batch)
        self._pinned: cuda.PinnedBuffer | None = None
        if pinned is None:
            pinned = cuda.available()[0]
        if pinned:
            self._pinned = cuda.PinnedBuffer(shape, np.float32)
            self.buffer: np.ndarray = self._pinned.array
        else:
            self.buffer = np.zeros(shape, dtype=np.float32)

    @property
    def pinned(self) -> bool:
        return self._pinned is not None

    def process(self, frames: Sequence[np.ndarray]) -> list[LetterboxInfo]:
        """Fill one batch slot per frame; returns each frame's geometry."""
        self._check_count(frames)
        infos: list[LetterboxInfo] = []
        for i, frame in enumerate(frames):
            _, info = preprocess(frame, self.spec, self.size_hw, out=self.buffer[i])
            infos.append(info)
        return infos

    def download(self) -> np.ndarray:
        """The batch buffer itself (already on the host)."""
        return self.buffer

    def close(self) -> None:
        if self._pinned is not None:
            pinned, self._pinned = self._pinned, None
            del self.buffer
            pinned.close()


KERNEL_NAME = "fused_letterbox_normalize"

#: One thread per output pixel: bilinear resize exactly as OpenCV's INTER_LINEAR on 8-bit data
#: (see the module docstring), letterbox pad or stretch, channel reorder, scale/mean/std, and a
#: planar (NCHW) or interleaved (NHWC) float32 store.
KERNEL_SOURCE = r"""
extern "C" __global__ void fused_letterbox_normalize(
    const unsigned char* __restrict__ src, int src_w, int src_h, int src_pitch,
    float* __restrict__ dst, int out_w, int out_h, int nhwc,
    int left, int top, int new_w, int new_h,
    double scale_x, double scale_y, int pad,
    int ch0, int ch1, int ch2,
    float alpha0, float alpha1, float alpha2,
    float beta0, float beta1, float beta2)
{
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= out_w || y >= out_h) return;
    int v[3] = {pad, pad, pad};
    const int rx = x - left;
    const int ry = y - top;
    if (rx >= 0 && ry >= 0 && rx < new_w && ry < new_h) {
        float fx = (float)((rx + 0.5) * scale_x - 0.5);
        int sx = (int)floorf(fx);
        fx -= (float)sx;
        if (sx < 0) { fx = 0.f; sx = 0; }
        if (sx >= src_w - 1) { fx = 0.f; sx = src_w - 1; }
        const int sx1 = min(sx + 1, src_w - 1);
        const int ax0 = __float2int_rn((1.f - fx) * 2048.f);
        const int ax1 = __float2int_rn(fx * 2048.f);
        float fy = (float)((ry + 0.5) * scale_y - 0.5);
        const int sy = (int)floorf(fy);
        fy -= (float)sy;
        const int by0 = __float2int_rn((1.f - fy) * 2048.f);
        const int by1 = __float2int_rn(fy * 2048.f);
        const int y0 = min(max(sy, 0), src_h - 1);
        const int y1 = min(max(sy + 1, 0), src_h - 1);
        const unsigned char* r0 = src + (size_t)y0 * src_pitch;
        const unsigned char* r1 = src + (size_t)y1 * src_pitch;
        #pragma unroll
        for (int k = 0; k < 3; ++k) {
            const int h0 = r0[sx * 3 + k] * ax0 + r0[sx1 * 3 + k] * ax1;
            const int h1 = r1[sx * 3 + k] * ax0 + r1[sx1 * 3 + k] * ax1;
            const int t = ((by0 * (h0 >> 4)) >> 16) + ((by1 * (h1 >> 4)) >> 16);
            v[k] = min(max((t + 2) >> 2, 0), 255);
        }
    }
    const int ch[3] = {ch0, ch1, ch2};
    const float alpha[3] = {alpha0, alpha1, alpha2};
    const float beta[3] = {beta0, beta1, beta2};
    const size_t pixel = (size_t)y * out_w + x;
    const size_t plane = (size_t)out_w * out_h;
    #pragma unroll
    for (int c = 0; c < 3; ++c) {
        const float value = (float)v[ch[c]] * alpha[c] - beta[c];
        if (nhwc) dst[pixel * 3 + c] = value;
        else dst[c * plane + pixel] = value;
    }
}
"""

#: ``--fmad=false`` keeps ``q * alpha - beta`` and the coordinate maths rounded exactly as the CPU.
KERNEL_OPTIONS = ("--fmad=false",)
_BLOCK = (32, 8, 1)


class GpuPreprocessor(_Base):
    """Fused preprocessing on the GPU into :attr:`output` (device memory, the batch tensor).

    :meth:`process` only queues work on :attr:`stream` (upload + one kernel per frame); run the
    model on the same stream, or call :meth:`synchronize`. Staging buffers grow to the largest
    frame seen and are then reused, so steady-state calls allocate nothing.
    """

    device = "gpu"

    def __init__(
        self,
        spec: InputSpec,
        size_hw: tuple[int, int],
        batch: int = 1,
        stream: cuda.Stream | None = None,
    ):
        self.spec = spec
        self.size_hw = (int(size_hw[0]), int(size_hw[1]))
        self.batch = int(batch)
        self.shape = _batch_shape(spec, self.size_hw, self.batch)
        self._slot_elems = 3 * self.size_hw[0] * self.size_hw[1]
        self._staging: list[cuda.PinnedBuffer | None] = [None] * self.batch
        self._src: list[cuda.DeviceBuffer | None] = [None] * self.batch
        self._own_stream = stream is None
        self.stream: cuda.Stream = stream if stream is not None else cuda.Stream()
        self.kernel: cuda.Kernel | None = None
        self.output: cuda.DeviceBuffer | None = None
        self._uploaded: cuda.Event | None = None
        self._pending = False
        try:
            self.kernel = cuda.compile_kernel(KERNEL_SOURCE, KERNEL_NAME, options=KERNEL_OPTIONS)
            self.output = cuda.DeviceBuffer(self.batch * self._slot_elems * 4)
            self._uploaded = cuda.Event()
        except BaseException:
            self.close()
            raise
        order = (2, 1, 0) if spec.color == "rgb" else (0, 1, 2)
        self._channels = [np.int32(k) for k in order]
        self._alpha = [np.float32(spec.scale / spec.std[c]) for c in range(3)]
        self._beta = [np.float32(spec.mean[c] / spec.std[c]) for c in range(3)]

    @property
    def ptr(self) -> int:
        """Device address of the batch tensor (the runner's input binding)."""
        if self.output is None:
            raise RuntimeError("GPU preprocessor is closed")
        return self.output.ptr

    def _slot_buffers(self, i: int, nbytes: int) -> tuple[cuda.PinnedBuffer, cuda.DeviceBuffer]:
        staging, src = self._staging[i], self._src[i]
        if staging is None or src is None or staging.nbytes < nbytes:
            self.stream.synchronize()  # a queued kernel may still read the old buffers
            for old in (staging, src):
                if old is not None:
                    old.close()
            self._staging[i] = staging = cuda.PinnedBuffer((nbytes,), np.uint8)
            self._src[i] = src = cuda.DeviceBuffer(nbytes)
        return staging, src

    def process(self, frames: Sequence[np.ndarray]) -> list[LetterboxInfo]:
        """Queue upload + fused kernel for each frame into batch slots ``0..len(frames)-1``."""
        self._check_count(frames)
        if self.kernel is None or self.output is None or self._uploaded is None:
            raise RuntimeError("GPU preprocessor is closed")
        if self._pending:
            self._uploaded.synchronize()  # the last uploads have left the staging buffers
        height, width = self.size_hw
        infos: list[LetterboxInfo] = []
        grid = ((width + _BLOCK[0] - 1) // _BLOCK[0], (height + _BLOCK[1] - 1) // _BLOCK[1], 1)
        for i, raw in enumerate(frames):
            frame = validate_frame(raw)
            src_h, src_w = frame.shape[:2]
            geo = fit_geometry((src_h, src_w), self.spec, self.size_hw)
            staging, src = self._slot_buffers(i, frame.nbytes)
            host = staging.array[: frame.nbytes].reshape(frame.shape)
            np.copyto(host, frame)
            cuda.copy_htod_async(src, host, self.stream)
            dst = self.output.ptr + i * self._slot_elems * 4
            self.kernel.launch(
                grid,
                _BLOCK,
                [
                    np.uint64(src.ptr),
                    np.int32(src_w),
                    np.int32(src_h),
                    np.int32(src_w * 3),
                    np.uint64(dst),
                    np.int32(width),
                    np.int32(height),
                    np.int32(1 if self.spec.layout == "NHWC" else 0),
                    np.int32(geo.left),
                    np.int32(geo.top),
                    np.int32(geo.new_w),
                    np.int32(geo.new_h),
                    np.float64(1.0 / (geo.new_w / src_w)),  # as cv2.resize derives it
                    np.float64(1.0 / (geo.new_h / src_h)),
                    np.int32(self.spec.pad_value),
                    *self._channels,
                    *self._alpha,
                    *self._beta,
                ],
                self.stream,
            )
            infos.append(geo.info)
        if frames:
            self._uploaded.record(self.stream)
            self._pending = True
        return infos

    def synchronize(self) -> None:
        self.stream.synchronize()

    def download(self) -> np.ndarray:
        """Copy the whole batch tensor to a new host array (waits for queued work)."""
        if self.output is None:
            raise RuntimeError("GPU preprocessor is closed")
        out = np.empty(self.shape, dtype=np.float32)
        cuda.copy_dtoh_async(out, self.output, self.stream)
        self.stream.synchronize()
        return out

    def close(self) -> None:
        stream = getattr(self, "stream", None)
        if stream is not None and self._pending:
            stream.synchronize()
            self._pending = False
        resources: list[cuda.PinnedBuffer | cuda.DeviceBuffer | cuda.Event | cuda.Kernel | None]
        resources = [*self._staging, *self._src, self.output, self._uploaded, self.kernel]
        self._staging = [None] * self.batch
        self._src = [None] * self.batch
        self.output = self._uploaded = self.kernel = None
        for res in resources:
            if res is not None:
                res.close()
        if stream is not None and self._own_stream:
            self._own_stream = False
            stream.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def make_preprocessor(
    spec: InputSpec,
    size_hw: tuple[int, int],
    batch: int = 1,
    *,
    prefer_gpu: bool = True,
    stream: cuda.Stream | None = None,
) -> CpuPreprocessor | GpuPreprocessor:
    """The GPU path when asked for and ``cuda.available()`` says yes (and NVRTC works), else
    the CPU path (with a pinned buffer where CUDA is present)."""
    usable, why = cuda.available()
    if prefer_gpu and usable:
        try:
            return GpuPreprocessor(spec, size_hw, batch, stream)
        except (BackendUnavailable, cuda.CudaError, cuda.KernelCompileError) as exc:
            log.warning("GPU preprocessing unavailable, using the CPU path: %s", exc)
    elif prefer_gpu:
        log.info("GPU preprocessing not used: %s", why)
    return CpuPreprocessor(spec, size_hw, batch, pinned=usable)
