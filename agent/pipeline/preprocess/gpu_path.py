"""The GPU preprocessing path: one fused CUDA kernel (resize, letterbox or stretch, BGR→RGB,
normalise, CHW/HWC) writing the batch tensor in device memory, on the runner's stream. See
:mod:`agent.pipeline.preprocess.geometry` for the stated GPU-vs-CPU tolerance."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np

from agent.backends.cuda import kernels as cuda_kernels
from agent.backends.cuda import memory as cuda_memory
from agent.backends.cuda import runtime as cuda_runtime
from agent.config.model import InputSpec
from agent.pipeline.preprocess.geometry import BatchPreprocessor, batch_shape, fit_geometry
from agent.vision.letterbox import LetterboxInfo, validate_frame

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


class GpuPreprocessor(BatchPreprocessor):
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
        stream: cuda_runtime.Stream | None = None,
    ):
        self.spec = spec
        self.size_hw = (int(size_hw[0]), int(size_hw[1]))
        self.batch = int(batch)
        self.shape = batch_shape(spec, self.size_hw, self.batch)
        self._slot_elems = 3 * self.size_hw[0] * self.size_hw[1]
        self._staging: list[cuda_memory.PinnedBuffer | None] = [None] * self.batch
        self._src: list[cuda_memory.DeviceBuffer | None] = [None] * self.batch
        self._own_stream = stream is None
        self.stream: cuda_runtime.Stream = stream if stream is not None else cuda_runtime.Stream()
        self.kernel: cuda_kernels.Kernel | None = None
        self.output: cuda_memory.DeviceBuffer | None = None
        self._uploaded: cuda_runtime.Event | None = None
        self._pending = False
        try:
            self.kernel = cuda_kernels.compile_kernel(
                KERNEL_SOURCE, KERNEL_NAME, options=KERNEL_OPTIONS
            )
            self.output = cuda_memory.DeviceBuffer(self.batch * self._slot_elems * 4)
            self._uploaded = cuda_runtime.Event()
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

    def _slot_buffers(
        self, i: int, nbytes: int
    ) -> tuple[cuda_memory.PinnedBuffer, cuda_memory.DeviceBuffer]:
        staging, src = self._staging[i], self._src[i]
        if staging is None or src is None or staging.nbytes < nbytes:
            self.stream.synchronize()  # a queued kernel may still read the old buffers
            for old in (staging, src):
                if old is not None:
                    old.close()
            self._staging[i] = staging = cuda_memory.PinnedBuffer((nbytes,), np.uint8)
            self._src[i] = src = cuda_memory.DeviceBuffer(nbytes)
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
            cuda_memory.copy_htod_async(src, host, self.stream)
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
        cuda_memory.copy_dtoh_async(out, self.output, self.stream)
        self.stream.synchronize()
        return out

    def close(self) -> None:
        stream = getattr(self, "stream", None)
        if stream is not None and self._pending:
            stream.synchronize()
            self._pending = False
        resources: list[
            cuda_memory.PinnedBuffer
            | cuda_memory.DeviceBuffer
            | cuda_runtime.Event
            | cuda_kernels.Kernel
            | None
        ]
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
