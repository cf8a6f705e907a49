"""Choose the preprocessing path for a worker: GPU when asked for and usable, else CPU."""

from __future__ import annotations

import logging

from agent.backends.cuda import kernels as cuda_kernels
from agent.backends.cuda import runtime as cuda_runtime
from agent.config.model import InputSpec
from agent.core.errors import BackendUnavailable
from agent.pipeline.preprocess.cpu_path import CpuPreprocessor
from agent.pipeline.preprocess.gpu_path import GpuPreprocessor

log = logging.getLogger(__name__)


def make_preprocessor(
    spec: InputSpec,
    size_hw: tuple[int, int],
    batch: int = 1,
    *,
    prefer_gpu: bool = True,
    stream: cuda_runtime.Stream | None = None,
) -> CpuPreprocessor | GpuPreprocessor:
    """The GPU path when asked for and ``cuda_runtime.available()`` says yes (and NVRTC works), else
    the CPU path (with a pinned buffer where CUDA is present)."""
    usable, why = cuda_runtime.available()
    if prefer_gpu and usable:
        try:
            return GpuPreprocessor(spec, size_hw, batch, stream)
        except (BackendUnavailable, cuda_runtime.CudaError, cuda_kernels.KernelCompileError) as exc:
            log.warning("GPU preprocessing unavailable, using the CPU path: %s", exc)
    elif prefer_gpu:
        log.info("GPU preprocessing not used: %s", why)
    return CpuPreprocessor(spec, size_hw, batch, pinned=usable)
