"""A fake of the runner's CUDA layer (:class:`agent.backends.tensorrt.runner.CudaLayer`) over
the fake device memory. ``FakeCuda(memory, integrated=True)`` is an integrated GPU (a Jetson's):
``zero_copy_staging()`` is True and a ``MappedBuffer``'s host array *is* the fake device block
at its ``device_ptr`` (one DRAM, as ``cudaHostAllocMapped`` memory on Tegra).

Timing: a copy advances the fake device's clock (``DeviceMemory.clock_ms``) by its bytes over
``bytes_per_ms`` (the fake engine advances it by its layers' times); an ``Event`` created with
``timing=True`` records the clock and ``elapsed_ms`` is the difference, so stage times are
deterministic. As with ``cudaEventElapsedTime``, ``elapsed_ms`` fails unless both events were
created with timing and recorded."""

from __future__ import annotations

import itertools
from typing import Any, ClassVar

import numpy as np

from tests.fakes.tensorrt.state import DeviceMemory


class FakeCuda:
    """The API of :class:`agent.backends.tensorrt.runner.CudaLayer` over :class:`DeviceMemory`,
    recording calls."""

    def __init__(
        self, memory: DeviceMemory, *, integrated: bool = False, bytes_per_ms: float = 1000.0
    ) -> None:
        self.memory = memory
        self.integrated = integrated
        self.bytes_per_ms = bytes_per_ms
        self.calls: list[tuple[Any, ...]] = []
        self.live: set[int] = set()
        cuda = self

        class Stream:
            _handles: ClassVar[itertools.count[int]] = itertools.count(0xAA00)

            def __init__(self) -> None:
                self.handle = next(Stream._handles)
                self.closed = False

            def synchronize(self) -> None:
                cuda.calls.append(("sync", self.handle))

            def close(self) -> None:
                self.closed = True

        class DeviceBuffer:
            def __init__(self, nbytes: int) -> None:
                self.nbytes = nbytes
                self.ptr = cuda.memory.alloc(nbytes)
                cuda.live.add(self.ptr)
                cuda.calls.append(("malloc", nbytes))

            def close(self) -> None:
                if self.ptr in cuda.live:
                    cuda.live.discard(self.ptr)
                    cuda.memory.free(self.ptr)

        class PinnedBuffer:
            def __init__(self, shape: Any, dtype: Any = np.float32) -> None:
                self.array = np.zeros(shape, dtype=dtype)
                self.nbytes = self.array.nbytes
                self.ptr = self.array.ctypes.data

            def close(self) -> None:
                pass

        class MappedBuffer:
            """Host memory the device addresses directly: the array views the device block."""

            def __init__(self, shape: Any, dtype: Any = np.float32) -> None:
                count = int(np.prod(shape, dtype=np.int64))
                self.nbytes = count * np.dtype(dtype).itemsize
                self.device_ptr = cuda.memory.alloc(self.nbytes)
                cuda.live.add(self.device_ptr)
                cuda.calls.append(("host_alloc_mapped", self.nbytes, self.device_ptr))
                block = np.frombuffer(cuda.memory.block(self.device_ptr), dtype=np.uint8)
                self.array = block[: self.nbytes].view(dtype).reshape(shape)
                self.ptr = self.array.ctypes.data

            def close(self) -> None:
                if self.device_ptr in cuda.live:
                    cuda.live.discard(self.device_ptr)
                    cuda.memory.free(self.device_ptr)

        class Event:
            """Records how it was created: the runner must wait with a blocking-sync event
            without timing (cudaEventDisableTiming | cudaEventBlockingSync); a timing event
            (cudaEventDefault) records the fake device clock."""

            def __init__(self, *, timing: bool = False, blocking: bool = True) -> None:
                self.timing, self.blocking = timing, blocking
                self.closed = False
                self.at: float | None = None
                cuda.events.append(self)
                cuda.calls.append(("event_create", timing, blocking))

            def record(self, stream: Any = None) -> None:
                assert not self.closed, "event recorded after close"
                self.at = cuda.memory.clock_ms
                cuda.calls.append(("event_record", getattr(stream, "handle", 0)))

            def elapsed_ms(self, end: Any) -> float:
                if not (self.timing and end.timing):  # cudaErrorInvalidResourceHandle
                    raise ValueError("elapsed_ms needs events created with timing=True")
                if self.at is None or end.at is None:  # cudaErrorInvalidResourceHandle
                    raise RuntimeError("elapsed_ms of an event that was never recorded")
                cuda.calls.append(("event_elapsed",))
                return end.at - self.at

            def synchronize(self) -> None:
                cuda.calls.append(("event_sync", self.blocking, self.timing))

            def close(self) -> None:
                self.closed = True

        self.events: list[Any] = []
        self.Stream = Stream
        self.Event = Event
        self.DeviceBuffer = DeviceBuffer
        self.PinnedBuffer = PinnedBuffer
        self.MappedBuffer = MappedBuffer

    def zero_copy_staging(self) -> bool:
        """The runner's decision (``cudaDevAttrIntegrated`` and ``CanMapHostMemory`` on a GPU)."""
        return self.integrated

    @staticmethod
    def _ptr(buf: Any) -> int:
        return buf if isinstance(buf, int) else buf.ptr

    def copy_htod_async(
        self, dst: Any, src: np.ndarray, stream: Any, nbytes: int | None = None
    ) -> None:
        count = src.nbytes if nbytes is None else nbytes
        self.calls.append(("htod", count, stream.handle))
        self.memory.clock_ms += count / self.bytes_per_ms
        self.memory.block(self._ptr(dst))[:count] = src.tobytes()[:count]

    def copy_dtoh_async(
        self, dst: np.ndarray, src: Any, stream: Any, nbytes: int | None = None
    ) -> None:
        count = dst.nbytes if nbytes is None else nbytes
        self.calls.append(("dtoh", count, stream.handle))
        self.memory.clock_ms += count / self.bytes_per_ms
        dst.reshape(-1).view(np.uint8)[:count] = np.frombuffer(
            bytes(self.memory.block(self._ptr(src))[:count]), dtype=np.uint8
        )
