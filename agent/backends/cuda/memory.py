"""CUDA memory: device buffers, page-locked (pinned) host buffers and async copies between them."""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from agent.backends.cuda.runtime import CudaResource, Stream, call, handle_int, load_cudart


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

    def __init__(self, shape: tuple[int, ...] | int, dtype: Any = np.float32):
        self._ptr: int | None = None
        self.shape = (int(shape),) if isinstance(shape, int) else tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        count = 1
        for d in self.shape:
            count *= d
        self.nbytes = count * self.dtype.itemsize
        rt = load_cudart()
        flags = int(getattr(rt, "cudaHostAllocDefault", 0))
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
