"""CUDA memory: device buffers, page-locked (pinned) host buffers, mapped (zero-copy) pinned
buffers for integrated GPUs and async copies between host and device.

Zero-copy on an integrated GPU (:func:`zero_copy_staging`). On a Jetson the CPU and the iGPU share
one SoC DRAM (NVIDIA, "CUDA for Tegra" application note, Memory Management: "both the CPU (Host)
and the iGPU share SoC DRAM memory"); its Porting Considerations, Memory Selection, recommend
pinned or unified memory to cut the CPU-iGPU transfer overhead because both are directly
accessible from the CPU and the iGPU. The CUDA C++ Best Practices Guide ("Zero Copy") says the
same for any GPU whose ``integrated`` property is 1: mapped pinned memory avoids superfluous copies
because GPU and CPU memory are physically the same, while on a discrete GPU it pays only in some
cases. A mapped buffer is ``cudaHostAlloc(..., cudaHostAllocMapped)`` with its device address from
``cudaHostGetDevicePointer`` (CUDA Runtime API, Memory Management). Caveat from the same app note
("Pinned Memory Guidelines on Tegra Systems with no I/O coherency"): before Xavier (Nano, TX1/TX2)
pinned memory is not cached by the CPU, so CPU reads of it are slow; on Xavier/Orin (I/O coherent)
the CPU caches it. Either way the iGPU does not cache pinned memory, which is why the choice must
be measured on a board.
"""

from __future__ import annotations

import ctypes
from typing import Any, ClassVar

import numpy as np

from agent.backends.cuda.runtime import (
    CudaResource,
    Stream,
    call,
    current_device,
    handle_int,
    load_cudart,
)


class DeviceBuffer(CudaResource):
    """``nbytes`` of device memory (cudaMalloc/cudaFree); ``ptr`` is the device address."""

    def __init__(self, nbytes: int):
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        self._ptr: int | None = None
        self.nbytes = int(nbytes)
        # cudaMalloc(0) may return a null pointer; keep one byte so ptr is always valid.
        self._ptr = handle_int(call("cudaMalloc", max(self.nbytes, 1)))

    @property
    def ptr(self) -> int:
        if self._ptr is None:
            raise RuntimeError("device buffer is closed")
        return self._ptr

    def close(self) -> None:
        if self._ptr is not None:
            ptr, self._ptr = self._ptr, None
            call("cudaFree", ptr)

    free = close


class PinnedBuffer(CudaResource):
    """Page-locked host memory (cudaHostAlloc/cudaFreeHost) exposed as a numpy array view.

    ``array`` is valid until ``close()``; do not keep views of it past that.
    """

    #: cudaHostAlloc flags: (cuda-python constant name, its value in cuda_runtime_api.h)
    _FLAGS: ClassVar[tuple[tuple[str, int], ...]] = (("cudaHostAllocDefault", 0),)

    def __init__(self, shape: tuple[int, ...] | int, dtype: Any = np.float32):
        self._ptr: int | None = None
        self.shape = (int(shape),) if isinstance(shape, int) else tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        count = 1
        for d in self.shape:
            count *= d
        self.nbytes = count * self.dtype.itemsize
        rt = load_cudart()
        flags = 0
        for flag, value in self._FLAGS:
            flags |= int(getattr(rt, flag, value))
        self._ptr = handle_int(call("cudaHostAlloc", max(self.nbytes, 1), flags))
        # Wrap as bytes first, then view as the dtype (as_ctypes_type has no float16 mapping).
        base = ctypes.cast(ctypes.c_void_p(self._ptr), ctypes.POINTER(ctypes.c_ubyte))
        flat = np.ctypeslib.as_array(base, shape=(max(self.nbytes, 1),))[: self.nbytes]
        self._array = flat.view(self.dtype).reshape(self.shape)

    @property
    def ptr(self) -> int:
        if self._ptr is None:
            raise RuntimeError("pinned buffer is closed")
        return self._ptr

    @property
    def array(self) -> np.ndarray:
        if self._ptr is None:
            raise RuntimeError("pinned buffer is closed")
        return self._array

    def close(self) -> None:
        if self._ptr is not None:
            ptr, self._ptr = self._ptr, None
            del self._array
            call("cudaFreeHost", ptr)


class MappedBuffer(PinnedBuffer):
    """Pinned host memory mapped into the device address space (``cudaHostAllocMapped``): the
    host writes and reads ``array``, kernels and TensorRT use ``device_ptr`` (from
    ``cudaHostGetDevicePointer``); no device buffer, no copy. Read ``array`` only after the work
    that writes it has completed (an event or stream synchronize)."""

    _FLAGS: ClassVar[tuple[tuple[str, int], ...]] = (("cudaHostAllocMapped", 2),)

    def __init__(self, shape: tuple[int, ...] | int, dtype: Any = np.float32):
        self._device_ptr: int | None = None
        super().__init__(shape, dtype)
        # flags must be 0 (CUDA Runtime API, cudaHostGetDevicePointer).
        self._device_ptr = handle_int(call("cudaHostGetDevicePointer", self.ptr, 0))

    @property
    def device_ptr(self) -> int:
        if self._ptr is None or self._device_ptr is None:
            raise RuntimeError("mapped buffer is closed")
        return self._device_ptr

    def close(self) -> None:
        self._device_ptr = None
        super().close()


def zero_copy_staging(device: int | None = None) -> bool:
    """True when host I/O staging should use :class:`MappedBuffer` (zero-copy) for ``device``
    (default: the current one): an integrated GPU (``cudaDevAttrIntegrated``, CPU and GPU share
    DRAM) that can map host memory (``cudaDevAttrCanMapHostMemory``). A discrete GPU keeps pinned
    host + device buffers and async copies (module docstring: sources and caveats)."""
    rt = load_cudart()
    dev = current_device() if device is None else int(device)
    attrs = rt.cudaDeviceAttr
    integrated = int(call("cudaDeviceGetAttribute", attrs.cudaDevAttrIntegrated, dev))
    can_map = int(call("cudaDeviceGetAttribute", attrs.cudaDevAttrCanMapHostMemory, dev))
    return bool(integrated) and bool(can_map)


def _host_ptr(array: np.ndarray, *, writable: bool) -> int:
    if not array.flags.c_contiguous:
        raise ValueError("host array must be C-contiguous (use np.ascontiguousarray)")
    if writable and not array.flags.writeable:
        raise ValueError("destination host array is read-only")
    return int(array.ctypes.data)


def _dev_ptr(buf: DeviceBuffer | int) -> int:
    return buf.ptr if isinstance(buf, DeviceBuffer) else int(buf)


def _memcpy_kind(name: str) -> Any:
    return getattr(load_cudart().cudaMemcpyKind, name)


def copy_htod_async(
    dst: DeviceBuffer | int, src: np.ndarray, stream: Stream, nbytes: int | None = None
) -> None:
    """Queue a host→device copy of ``src`` (pinned for a truly async copy) on ``stream``."""
    count = src.nbytes if nbytes is None else int(nbytes)
    if isinstance(dst, DeviceBuffer) and count > dst.nbytes:
        raise ValueError(f"copy of {count} bytes exceeds the device buffer ({dst.nbytes})")
    call(
        "cudaMemcpyAsync",
        _dev_ptr(dst),
        _host_ptr(src, writable=False),
        count,
        _memcpy_kind("cudaMemcpyHostToDevice"),
        stream.raw,
    )


def copy_dtoh_async(
    dst: np.ndarray, src: DeviceBuffer | int, stream: Stream, nbytes: int | None = None
) -> None:
    """Queue a device→host copy into ``dst`` on ``stream``; read ``dst`` after synchronize."""
    count = dst.nbytes if nbytes is None else int(nbytes)
    if isinstance(src, DeviceBuffer) and count > src.nbytes:
        raise ValueError(f"copy of {count} bytes exceeds the device buffer ({src.nbytes})")
    call(
        "cudaMemcpyAsync",
        _host_ptr(dst, writable=True),
        _dev_ptr(src),
        count,
        _memcpy_kind("cudaMemcpyDeviceToHost"),
        stream.raw,
    )
