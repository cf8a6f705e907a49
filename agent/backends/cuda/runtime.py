"""The CUDA runtime: the lazy import of cuda-python, error checking, device queries, streams and
events.

This package is the only one that imports ``cuda`` (cuda-python), lazily: ``cuda.bindings.runtime``
(cuda-python >= 12.x), falling back to ``from cuda import cudart`` for older releases. Importing
this module never needs CUDA; the first object created does.

cuda-python's runtime functions return a tuple whose first item is a ``cudaError_t``
(``err, ptr = cudaMalloc(n)``; ``(err,) = cudaFree(ptr)``). :func:`call` turns a failure into
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


def import_first(names: tuple[str, ...], what: str) -> ModuleType:
    """Import the first of ``names`` that imports; :class:`BackendUnavailable` if none does."""
    errors: list[str] = []
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
    raise BackendUnavailable(f"cannot import {what} ({'; '.join(errors)})", fix=INSTALL_FIX)


def load_cudart() -> ModuleType:
    """Import cuda-python's runtime module or raise :class:`BackendUnavailable` with the fix."""
    global _cudart  # noqa: PLW0603 - one cached module handle
    if _cudart is None:
        _cudart = import_first(("cuda.bindings.runtime", "cuda.cudart"), "cuda-python")
    return _cudart


def _error_name(rt: Any, err: Any) -> str:
    try:
        result = rt.cudaGetErrorName(err)
        name = result[1]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        return str(getattr(err, "name", err))


def _check(call_name: str, result: Any) -> Any:
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
            raise BackendUnavailable(
                f"CUDA is not usable: {call_name} returned {name}", fix=INSTALL_FIX
            )
        raise CudaError(call_name, name, code)
    if not values:
        return None
    if len(values) == 1:  # pyright: ignore[reportUnknownArgumentType]
        return values[0]
    return values


def call(name: str, *args: Any) -> Any:
    """Call the runtime function ``name`` and check its result (see :func:`_check`)."""
    rt = load_cudart()
    return _check(name, getattr(rt, name)(*args))


def handle_int(obj: Any) -> int:
    """Integer value of a cuda-python handle (cudaStream_t, cudaEvent_t, CUcontext) or pointer.

    ``int(handle)`` is the handle's value. The fallback for a handle without ``__int__`` must
    not return ``getPtr()`` itself: cuda-python documents ``getPtr()`` as "Get memory address of
    class instance", i.e. the address of the C variable that *holds* the handle (a
    ``cudaStream_t*``), not the handle. The value is the pointer-sized word stored there.
    """
    if isinstance(obj, int):
        return obj
    try:
        return int(obj)
    except TypeError:
        address = int(obj.getPtr())
        return int(ctypes.c_void_p.from_address(address).value or 0)


def available() -> tuple[bool, str]:
    """(usable?, device count or why not). Never raises."""
    try:
        count = int(call("cudaGetDeviceCount"))
    except BackendUnavailable as exc:
        return False, str(exc)
    except Exception as exc:
        return False, f"CUDA check failed: {exc}"
    if count < 1:
        return False, "no CUDA device"
    return True, f"{count} CUDA device(s)"


def mem_get_info() -> tuple[int, int]:
    """(free, total) device memory in bytes."""
    free, total = call("cudaMemGetInfo")
    return int(free), int(total)


def device_synchronize() -> None:
    call("cudaDeviceSynchronize")


class CudaResource(Closeable):
    """A CUDA object with an explicit ``close()``, closed by the finalizer as a safety net."""

    def __del__(self) -> None:
        # A safety net only: explicit close() is the contract. Never raise from a finalizer.
        with contextlib.suppress(Exception):
            self.close()


class Stream(CudaResource):
    """A non-blocking CUDA stream (does not synchronize with the legacy default stream)."""

    def __init__(self, *, non_blocking: bool = True):
        self._stream: Any = None
        rt = load_cudart()
        if non_blocking:
            flags = int(getattr(rt, "cudaStreamNonBlocking", 1))
            self._stream = call("cudaStreamCreateWithFlags", flags)
        else:
            self._stream = call("cudaStreamCreate")

    @property
    def raw(self) -> Any:
        if self._stream is None:
            raise RuntimeError("stream is closed")
        return self._stream

    @property
    def handle(self) -> int:
        """The cudaStream_t as an int (what ``execute_async_v3`` takes)."""
        return handle_int(self.raw)

    def synchronize(self) -> None:
        call("cudaStreamSynchronize", self.raw)

    def close(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            call("cudaStreamDestroy", stream)

    destroy = close


class Event(CudaResource):
    """A CUDA event for ordering work on streams and waiting for it (and, with ``timing=True``,
    for timing it).

    By default the event is created with ``cudaEventDisableTiming | cudaEventBlockingSync``
    (``cudaEventCreateWithFlags``). CUDA Runtime API, Event Management: an event without timing
    "does not record timing data" and is the cheapest to record and query (the CUDA C++ Best
    Practices Guide recommends it for synchronization-only events); with ``cudaEventBlockingSync``
    a host thread in ``cudaEventSynchronize`` "will block until the event actually completes"
    instead of spinning, which on a Jetson (CPU cores shared with the camera and the agent)
    gives the core back. ``elapsed_ms`` needs ``timing=True``.
    """

    def __init__(self, *, timing: bool = False, blocking: bool = True) -> None:
        self._event: Any = None
        self.timing = timing
        rt = load_cudart()
        flags = 0
        if not timing:
            flags |= int(getattr(rt, "cudaEventDisableTiming", 2))
        if blocking:
            flags |= int(getattr(rt, "cudaEventBlockingSync", 1))
        self._event = call("cudaEventCreateWithFlags", flags)

    @property
    def raw(self) -> Any:
        if self._event is None:
            raise RuntimeError("event is closed")
        return self._event

    def record(self, stream: Stream | None = None) -> None:
        call("cudaEventRecord", self.raw, stream.raw if stream is not None else 0)

    def synchronize(self) -> None:
        call("cudaEventSynchronize", self.raw)

    def elapsed_ms(self, end: Event) -> float:
        """Milliseconds from this (recorded, completed) event to ``end`` (both ``timing=True``)."""
        if not (self.timing and end.timing):
            raise ValueError("elapsed_ms needs events created with timing=True")
        return float(call("cudaEventElapsedTime", self.raw, end.raw))

    def close(self) -> None:
        if self._event is not None:
            event, self._event = self._event, None
            call("cudaEventDestroy", event)


def current_device() -> int:
    return int(call("cudaGetDevice"))


def compute_capability(device: int | None = None) -> tuple[int, int]:
    """(major, minor) compute capability of ``device`` (default: the current device)."""
    rt = load_cudart()
    dev = current_device() if device is None else int(device)
    attrs = rt.cudaDeviceAttr
    major = int(call("cudaDeviceGetAttribute", attrs.cudaDevAttrComputeCapabilityMajor, dev))
    minor = int(call("cudaDeviceGetAttribute", attrs.cudaDevAttrComputeCapabilityMinor, dev))
    return major, minor
