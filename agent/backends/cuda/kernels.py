"""CUDA kernels compiled at run time: NVRTC compile, load and launch through the driver API.

Kernels are compiled at run time with NVRTC (``cuda.bindings.nvrtc``) for the compute capability
of the current device, loaded with the driver API (``cuModuleLoadData``) and launched with
``cuLaunchKernel`` on a runtime stream (a ``cudaStream_t`` is a ``CUstream``). Runtime and driver
calls meet in the device's *primary* context: :func:`primary_context` makes the runtime create
it (``cudaSetDevice`` + ``cudaFree(0)``) and returns it from ``cuCtxGetCurrent``; a launch from
another thread makes that context current first, so buffers allocated with ``cudaMalloc`` and
kernels loaded through the driver see the same address space.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from agent.backends.cuda.runtime import (
    INSTALL_FIX,
    CudaError,
    CudaResource,
    Stream,
    call,
    compute_capability,
    current_device,
    handle_int,
    import_first,
)
from agent.core.errors import BackendUnavailable, EdgeAgentError

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


def load_driver() -> ModuleType:
    """Import cuda-python's driver API module (``cuda.bindings.driver``, or ``cuda.cuda``)."""
    global _driver  # noqa: PLW0603 - one cached module handle
    if _driver is None:
        _driver = import_first(("cuda.bindings.driver", "cuda.cuda"), "the CUDA driver bindings")
    return _driver


def load_nvrtc() -> ModuleType:
    """Import cuda-python's NVRTC module (``cuda.bindings.nvrtc``, or ``cuda.nvrtc``)."""
    global _nvrtc  # noqa: PLW0603 - one cached module handle
    if _nvrtc is None:
        _nvrtc = import_first(("cuda.bindings.nvrtc", "cuda.nvrtc"), "the NVRTC bindings")
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


def primary_context(device: int | None = None) -> Any:
    """Make ``device``'s primary context current on this thread (as the runtime API uses it)
    and return it as a driver ``CUcontext``."""
    dev = current_device() if device is None else int(device)
    _drv("cuInit", 0)
    call("cudaSetDevice", dev)
    call("cudaFree", 0)  # forces the runtime to create and bind the primary context
    ctx = _drv("cuCtxGetCurrent")
    if ctx is None or handle_int(ctx) == 0:
        raise CudaError("cuCtxGetCurrent", "CUDA_ERROR_INVALID_CONTEXT (no current context)", 201)
    return ctx


def _ensure_current(ctx: Any) -> None:
    current = _drv("cuCtxGetCurrent")
    if current is None or handle_int(current) != handle_int(ctx):
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


class Kernel(CudaResource):
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
