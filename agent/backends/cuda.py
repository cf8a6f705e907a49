"""The minimal CUDA runtime layer the TensorRT runner needs: streams, events, device and pinned
buffers, async copies.

This is the only module that imports ``cuda`` (cuda-python), lazily: ``cuda.bindings.runtime``
(cuda-python >= 12.x), falling back to ``from cuda import cudart`` for older releases. Importing
this module never needs CUDA; the first object created does.

cuda-python's runtime functions return a tuple whose first item is a ``cudaError_t``
(``err, ptr = cudaMalloc(n)``; ``(err,) = cudaFree(ptr)``). :func:`_check` turns a failure into
:class:`BackendUnavailable` (no driver, no device: the host cannot run CUDA) or :class:`CudaError`
(a ``RuntimeError`` carrying the CUDA error name), and returns the remaining results.

Every object has an explicit ``close()`` (idempotent) and is a context manager. Work queued on
a stream must be complete (``Stream.synchronize``) before a buffer it touches is closed.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
from types import ModuleType
from typing import Any

import numpy as np

from agent.core.closing import Closeable
from agent.core.errors import BackendUnavailable, EdgeAgentError

INSTALL_FIX = (
    "install cuda-python matching the CUDA of this JetPack (pip install 'cuda-python>=12.2', "
    "or the edge-agent[jetson] extra) and check that the NVIDIA driver sees a GPU"
)

# Errors meaning "this host cannot run CUDA at all" (driver/runtime/device missing or broken).
_UNAVAILABLE = {
    "cudaErrorNoDevice",
    "cudaErrorInsufficientDriver",
    "cudaErrorInitializationError",
    "cudaErrorCudartUnloading",
    "cudaErrorStubLibrary",
    "cudaErrorDevicesUnavailable",
    "cudaErrorSystemDriverMismatch",
    "cudaErrorCompatNotSupportedOnDevice",
    "cudaErrorCallRequiresNewerDriver",
}

_cudart: ModuleType | None = None


class CudaError(EdgeAgentError, RuntimeError):
    """A CUDA runtime call failed; ``name`` is the CUDA error name, e.g. cudaErrorInvalidValue."""

    def __init__(self, call: str, name: str, code: int):
        self.call = call
        self.name = name
        self.code = code
        super().__init__(
            f"{call} failed: {name} ({code})",
            fix="check the GPU with nvidia-smi (or tegrastats on a Jetson): out of memory, "
            "a driver older than cuda-python needs, or a failed earlier kernel; restart the "
            "agent once it is fixed",
        )


def load_cudart() -> ModuleType:
    """Import cuda-python's runtime module or raise :class:`BackendUnavailable` with the fix."""
    global _cudart  # noqa: PLW0603 - one cached module handle
    if _cudart is not None:
        return _cudart
    errors: list[str] = []
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            _cudart = importlib.import_module(name)
            return _cudart
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
    raise BackendUnavailable(f"cannot import cuda-python ({'; '.join(errors)})", fix=INSTALL_FIX)


def _error_name(rt: Any, err: Any) -> str:
    try:
        result = rt.cudaGetErrorName(err)
        name = result[1]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        return str(getattr(err, "name", err))


def _check(call: str, result: Any) -> Any:
    """Check a cuda-python result tuple; return None, the one value, or the tuple of values."""
    rt = load_cudart()
    if isinstance(result, tuple):
        err, values = result[0], tuple(result[1:])  # pyright: ignore[reportUnknownVariableType]
    else:
        err, values = result, ()
    code = int(err)
    if code != 0:
        name = _error_name(rt, err)
        if name in _UNAVAILABLE:
            raise BackendUnavailable(f"CUDA is not usable: {call} returned {name}", fix=INSTALL_FIX)
        raise CudaError(call, name, code)
    if not values:
        return None
    if len(values) == 1:  # pyright: ignore[reportUnknownArgumentType]
        return values[0]
    return values


def _call(name: str, *args: Any) -> Any:
    rt = load_cudart()
    return _check(name, getattr(rt, name)(*args))


def _handle_int(obj: Any) -> int:
    """Integer value of a cuda-python handle (cudaStream_t, cudaEvent_t) or pointer."""
    if isinstance(obj, int):
        return obj
    try:
        return int(obj)
    except TypeError:
        return int(obj.getPtr())


def available() -> tuple[bool, str]:
    """(usable?, device count or why not). Never raises."""
    try:
        count = int(_call("cudaGetDeviceCount"))
    except BackendUnavailable as exc:
        return False, str(exc)
    except Exception as exc:
        return False, f"CUDA check failed: {exc}"
    if count < 1:
        return False, "no CUDA device"
    return True, f"{count} CUDA device(s)"


def mem_get_info() -> tuple[int, int]:
    """(free, total) device memory in bytes."""
    free, total = _call("cudaMemGetInfo")
    return int(free), int(total)


def device_synchronize() -> None:
    _call("cudaDeviceSynchronize")


class _Closeable(Closeable):
    def __del__(self) -> None:
        # A safety net only: explicit close() is the contract. Never raise from a finalizer.
        with contextlib.suppress(Exception):
            self.close()


class Stream(_Closeable):
    """A non-blocking CUDA stream (does not synchronize with the legacy default stream)."""

    def __init__(self, *, non_blocking: bool = True):
        self._stream: Any = None
        rt = load_cudart()
        if non_blocking:
            flags = int(getattr(rt, "cudaStreamNonBlocking", 1))
            self._stream = _call("cudaStreamCreateWithFlags", flags)
        else:
            self._stream = _call("cudaStreamCreate")

    @property
    def raw(self) -> Any:
        if self._stream is None:
            raise RuntimeError("stream is closed")
        return self._stream

    @property
    def handle(self) -> int:
        """The cudaStream_t as an int (what ``execute_async_v3`` takes)."""
        return _handle_int(self.raw)

    def synchronize(self) -> None:
        _call("cudaStreamSynchronize", self.raw)

    def close(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            _call("cudaStreamDestroy", stream)

    destroy = close


class Event(_Closeable):
    """A CUDA event for timing (and ordering) work on a stream."""

    def __init__(self) -> None:
        self._event: Any = None
        self._event = _call("cudaEventCreate")

    @property
    def raw(self) -> Any:
        if self._event is None:
            raise RuntimeError("event is closed")
        return self._event

    def record(self, stream: Stream | None = None) -> None:
        _call("cudaEventRecord", self.raw, stream.raw if stream is not None else 0)

    def synchronize(self) -> None:
        _call("cudaEventSynchronize", self.raw)

    def elapsed_ms(self, end: Event) -> float:
        """Milliseconds from this (recorded, completed) event to ``end``."""
        return float(_call("cudaEventElapsedTime", self.raw, end.raw))

    def close(self) -> None:
        if self._event is not None:
            event, self._event = self._event, None
            _call("cudaEventDestroy", event)


class DeviceBuffer(_Closeable):
    """``nbytes`` of device memory (cudaMalloc/cudaFree); ``ptr`` is the device address."""

    def __init__(self, nbytes: int):
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        self._ptr: int | None = None
        self.nbytes = int(nbytes)
        # cudaMalloc(0) may return a null pointer; keep one byte so ptr is always valid.
        self._ptr = _handle_int(_call("cudaMalloc", max(self.nbytes, 1)))

    @property
    def ptr(self) -> int:
        if self._ptr is None:
            raise RuntimeError("device buffer is closed")
        return self._ptr

    def close(self) -> None:
        if self._ptr is not None:
            ptr, self._ptr = self._ptr, None
            _call("cudaFree", ptr)

    free = close


class PinnedBuffer(_Closeable):
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
        self._ptr = _handle_int(_call("cudaHostAlloc", max(self.nbytes, 1), flags))
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
            _call("cudaFreeHost", ptr)


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
    _call(
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
    _call(
        "cudaMemcpyAsync",
        _host_ptr(dst, writable=True),
        _dev_ptr(src),
        count,
        _memcpy_kind("cudaMemcpyDeviceToHost"),
        stream.raw,
    )


# --------------------------------------------------------------------------- NVRTC + driver API
#
# Kernels are compiled at run time with NVRTC (``cuda.bindings.nvrtc``) for the compute capability
# of the current device, loaded with the driver API (``cuModuleLoadData``) and launched with
# ``cuLaunchKernel`` on a runtime stream (a ``cudaStream_t`` is a ``CUstream``). Runtime and driver
# calls meet in the device's *primary* context: :func:`primary_context` makes the runtime create
# it (``cudaSetDevice`` + ``cudaFree(0)``) and returns it from ``cuCtxGetCurrent``; a launch from
# another thread makes that context current first, so buffers allocated with ``cudaMalloc`` and
# kernels loaded through the driver see the same address space.

NVRTC_FIX = (
    "install the CUDA runtime compiler library (libnvrtc, part of the CUDA toolkit / JetPack) "
    "that matches cuda-python, or run with the CPU preprocessing path"
)

_driver: ModuleType | None = None
_nvrtc: ModuleType | None = None

# Driver errors meaning "no usable GPU/driver here".
_DRIVER_UNAVAILABLE = {
    "CUDA_ERROR_NO_DEVICE",
    "CUDA_ERROR_NOT_INITIALIZED",
    "CUDA_ERROR_DEINITIALIZED",
    "CUDA_ERROR_STUB_LIBRARY",
    "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH",
    "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE",
}


class KernelCompileError(EdgeAgentError, RuntimeError):
    """NVRTC rejected a kernel's source or options; ``log`` is the compiler's log."""

    def __init__(self, name: str, arch: str, log: str):
        self.kernel = name
        self.arch = arch
        self.log = log
        super().__init__(
            f"NVRTC could not compile kernel '{name}' for {arch}:\n{log.strip()}",
            fix="install an NVRTC that knows this GPU's architecture (the CUDA toolkit of "
            "this JetPack), or run with the CPU preprocessing path",
        )


def _import_first(names: tuple[str, ...], what: str) -> ModuleType:
    errors: list[str] = []
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
    raise BackendUnavailable(f"cannot import {what} ({'; '.join(errors)})", fix=INSTALL_FIX)


def load_driver() -> ModuleType:
    """Import cuda-python's driver API module (``cuda.bindings.driver``, or ``cuda.cuda``)."""
    global _driver  # noqa: PLW0603 - one cached module handle
    if _driver is None:
        _driver = _import_first(("cuda.bindings.driver", "cuda.cuda"), "the CUDA driver bindings")
    return _driver


def load_nvrtc() -> ModuleType:
    """Import cuda-python's NVRTC module (``cuda.bindings.nvrtc``, or ``cuda.nvrtc``)."""
    global _nvrtc  # noqa: PLW0603 - one cached module handle
    if _nvrtc is None:
        _nvrtc = _import_first(("cuda.bindings.nvrtc", "cuda.nvrtc"), "the NVRTC bindings")
    return _nvrtc


def _split(result: Any) -> tuple[Any, tuple[Any, ...]]:
    if isinstance(result, tuple):
        return result[0], tuple(result[1:])  # pyright: ignore[reportUnknownArgumentType]
    return result, ()


def _unwrap(values: tuple[Any, ...]) -> Any:
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _drv(name: str, *args: Any) -> Any:
    """Call a driver API function and check its ``CUresult``."""
    drv = load_driver()
    err, values = _split(getattr(drv, name)(*args))
    code = int(err)
    if code != 0:
        try:
            raw = drv.cuGetErrorName(err)[1]
            err_name = raw.decode() if isinstance(raw, bytes) else str(raw)
        except Exception:
            err_name = str(getattr(err, "name", err))
        if err_name in _DRIVER_UNAVAILABLE:
            raise BackendUnavailable(
                f"CUDA is not usable: {name} returned {err_name}", fix=INSTALL_FIX
            )
        raise CudaError(name, err_name, code)
    return _unwrap(values)


def _rtc(name: str, *args: Any) -> Any:
    """Call an NVRTC function and check its ``nvrtcResult`` (compile errors are handled apart)."""
    nv = load_nvrtc()
    try:
        result = getattr(nv, name)(*args)
    except RuntimeError as exc:  # cuda-python raises this when libnvrtc cannot be loaded
        raise BackendUnavailable(f"NVRTC is not usable: {exc}", fix=NVRTC_FIX) from exc
    err, values = _split(result)
    code = int(err)
    if code != 0:
        try:
            raw = nv.nvrtcGetErrorString(err)[1]
            err_name = raw.decode() if isinstance(raw, bytes) else str(raw)
        except Exception:
            err_name = str(getattr(err, "name", err))
        raise CudaError(name, err_name, code)
    return _unwrap(values)


def current_device() -> int:
    return int(_call("cudaGetDevice"))


def compute_capability(device: int | None = None) -> tuple[int, int]:
    """(major, minor) compute capability of ``device`` (default: the current device)."""
    rt = load_cudart()
    dev = current_device() if device is None else int(device)
    attrs = rt.cudaDeviceAttr
    major = int(_call("cudaDeviceGetAttribute", attrs.cudaDevAttrComputeCapabilityMajor, dev))
    minor = int(_call("cudaDeviceGetAttribute", attrs.cudaDevAttrComputeCapabilityMinor, dev))
    return major, minor


def primary_context(device: int | None = None) -> Any:
    """Make ``device``'s primary context current on this thread (as the runtime API uses it)
    and return it as a driver ``CUcontext``."""
    dev = current_device() if device is None else int(device)
    _drv("cuInit", 0)
    _call("cudaSetDevice", dev)
    _call("cudaFree", 0)  # forces the runtime to create and bind the primary context
    ctx = _drv("cuCtxGetCurrent")
    if ctx is None or _handle_int(ctx) == 0:
        raise CudaError("cuCtxGetCurrent", "CUDA_ERROR_INVALID_CONTEXT (no current context)", 201)
    return ctx


def _ensure_current(ctx: Any) -> None:
    current = _drv("cuCtxGetCurrent")
    if current is None or _handle_int(current) != _handle_int(ctx):
        _drv("cuCtxSetCurrent", ctx)


def _nvrtc_archs() -> list[int]:
    """Real architectures this NVRTC can emit CUBIN for (e.g. [75, 80, 86, 87, 89, 90]); empty
    when the bindings are too old to ask."""
    try:
        archs = _rtc("nvrtcGetSupportedArchs")
    except (CudaError, AttributeError):
        return []
    return [int(a) for a in archs]


def _program_log(prog: Any) -> str:
    size = int(_rtc("nvrtcGetProgramLogSize", prog))
    if size <= 1:
        return ""
    buf = b" " * size
    _rtc("nvrtcGetProgramLog", prog, buf)
    return buf.rstrip(b"\x00 ").decode(errors="replace")


def _nvrtc_compile(source: str, name: str, options: list[str], *, cubin: bool) -> bytes:
    nv = load_nvrtc()
    prog = _rtc("nvrtcCreateProgram", source.encode(), f"{name}.cu".encode(), 0, [], [])
    try:
        opts = [o.encode() for o in options]
        err, _ = _split(nv.nvrtcCompileProgram(prog, len(opts), opts))
        if int(err) != 0:
            log = _program_log(prog)
            arch = next((o for o in options if o.startswith("--gpu-architecture")), "?")
            raise KernelCompileError(name, arch, log or f"nvrtcCompileProgram returned {err}")
        if cubin:
            size = int(_rtc("nvrtcGetCUBINSize", prog))
            image = b" " * size
            _rtc("nvrtcGetCUBIN", prog, image)
        else:
            size = int(_rtc("nvrtcGetPTXSize", prog))
            image = b" " * size
            _rtc("nvrtcGetPTX", prog, image)
        return image
    finally:
        _rtc("nvrtcDestroyProgram", prog)


class Kernel(_Closeable):
    """A compiled, loaded ``__global__`` function (a ``CUmodule`` + its ``CUfunction``).

    ``arch`` is the target it was compiled for (``sm_87``, or ``compute_XY`` when NVRTC could
    only emit PTX for the driver to JIT). Launch with :meth:`launch`.
    """

    def __init__(self, module: Any, function: Any, context: Any, name: str, arch: str):
        self._module: Any = module
        self._function = function
        self._context = context
        self.name = name
        self.arch = arch

    def launch(
        self,
        grid: tuple[int, int, int],
        block: tuple[int, int, int],
        args: list[np.generic] | tuple[np.generic, ...],
        stream: Stream | None = None,
        *,
        shared_mem: int = 0,
    ) -> None:
        """Queue the kernel on ``stream`` (the legacy default stream when None).

        ``args`` are numpy scalars typed as the kernel's parameters: ``np.uint64(ptr)`` for
        pointers, ``np.int32``, ``np.float32``, ``np.float64``... They are copied into the launch.
        """
        if self._module is None:
            raise RuntimeError(f"kernel '{self.name}' is closed")
        _ensure_current(self._context)
        # One host array per argument, then an array of their addresses (void** kernelParams).
        storage = [np.array([a], dtype=a.dtype) for a in args]
        pointers = np.array([s.ctypes.data for s in storage], dtype=np.uint64)
        handle = stream.handle if stream is not None else 0
        _drv(
            "cuLaunchKernel",
            self._function,
            int(grid[0]),
            int(grid[1]),
            int(grid[2]),
            int(block[0]),
            int(block[1]),
            int(block[2]),
            int(shared_mem),
            load_driver().CUstream(handle),
            pointers.ctypes.data if storage else 0,
            0,
        )
        del storage  # the driver copied the parameters when cuLaunchKernel returned

    def close(self) -> None:
        if self._module is not None:
            module, self._module = self._module, None
            _ensure_current(self._context)
            _drv("cuModuleUnload", module)


def compile_kernel(
    source: str,
    name: str,
    *,
    options: tuple[str, ...] | list[str] = (),
    device: int | None = None,
) -> Kernel:
    """Compile CUDA C++ ``source`` with NVRTC for the device's compute capability and return
    its ``extern "C" __global__`` function ``name``, loaded in the device's primary context.

    CUBIN is built for ``sm_XY`` when this NVRTC knows that architecture; otherwise PTX for the
    newest ``compute_XY`` it knows below the device, which the driver JIT-compiles. A compile
    error raises :class:`KernelCompileError` with NVRTC's log; a missing libnvrtc raises
    :class:`BackendUnavailable`.
    """
    ctx = primary_context(device)
    major, minor = compute_capability(device)
    cc = major * 10 + minor
    archs = _nvrtc_archs()
    if not archs or cc in archs:
        arch, cubin = f"sm_{cc}", True
    else:
        lower = [a for a in archs if a <= cc]
        if not lower:
            raise BackendUnavailable(
                f"this NVRTC cannot target compute capability {major}.{minor} "
                f"(it supports {archs})",
                fix=NVRTC_FIX,
            )
        arch, cubin = f"compute_{max(lower)}", False
    opts = [f"--gpu-architecture={arch}", *options]
    image = _nvrtc_compile(source, name, opts, cubin=cubin)
    data = np.frombuffer(image + (b"" if cubin else b"\x00"), dtype=np.uint8)
    module = _drv("cuModuleLoadData", data.ctypes.data)
    try:
        function = _drv("cuModuleGetFunction", module, name.encode())
    except BaseException:
        _drv("cuModuleUnload", module)
        raise
    return Kernel(module, function, ctx, name, arch)
