"""agent/backends/cuda/ (runtime, memory) on a real GPU (skipped without cuda-python or a GPU)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from agent.backends.cuda import memory as cuda_memory
from agent.backends.cuda import runtime as cuda_runtime
from agent.backends.cuda.timing import StageClock
from agent.core.errors import BackendUnavailable


def _gpu_status() -> tuple[bool, str]:
    try:
        cuda_runtime.load_cudart()
    except BackendUnavailable:
        return False, "cuda-python is not installed (cuda.bindings.runtime / cuda.cudart)"
    ok, why = cuda_runtime.available()
    return ok, why if not ok else ""


_GPU_OK, _GPU_WHY = _gpu_status()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _GPU_OK, reason=f"no usable CUDA GPU: {_GPU_WHY}"),
]


@pytest.fixture
def stream() -> Iterator[cuda_runtime.Stream]:
    with cuda_runtime.Stream() as s:
        yield s


@pytest.mark.parametrize(
    ("dtype", "shape"),
    [
        (np.float32, (1,)),
        (np.float32, (3, 224, 224)),
        (np.float16, (2, 3, 17, 19)),
        (np.int8, (1000,)),
        (np.uint8, (480, 640, 3)),
        (np.int32, (7, 5)),
        (np.int64, (33,)),
        (np.bool_, (129,)),
    ],
)
def test_htod_dtoh_round_trip(
    stream: cuda_runtime.Stream, dtype: type, shape: tuple[int, ...]
) -> None:
    rng = np.random.default_rng(0)
    data = (rng.standard_normal(shape) * 100).astype(dtype)
    with (
        cuda_memory.PinnedBuffer(shape, dtype) as src,
        cuda_memory.PinnedBuffer(shape, dtype) as dst,
        cuda_memory.DeviceBuffer(data.nbytes) as dev,
    ):
        src.array[...] = data
        dst.array[...] = 0
        cuda_memory.copy_htod_async(dev, src.array, stream)
        cuda_memory.copy_dtoh_async(dst.array, dev, stream)
        stream.synchronize()
        np.testing.assert_array_equal(dst.array, data)
        assert dst.array.shape == shape and dst.array.dtype == np.dtype(dtype)


def test_pageable_arrays_copy_too(stream: cuda_runtime.Stream) -> None:
    data = np.arange(4096, dtype=np.float32)
    out = np.empty_like(data)
    with cuda_memory.DeviceBuffer(data.nbytes) as dev:
        cuda_memory.copy_htod_async(dev.ptr, data, stream)
        cuda_memory.copy_dtoh_async(out, dev.ptr, stream)
        stream.synchronize()
    np.testing.assert_array_equal(out, data)


def test_copy_larger_than_buffer_is_refused(stream: cuda_runtime.Stream) -> None:
    with cuda_memory.DeviceBuffer(16) as dev, pytest.raises(ValueError, match="exceeds"):
        cuda_memory.copy_htod_async(dev, np.zeros(8, np.float32), stream)


def test_event_timing_is_positive(stream: cuda_runtime.Stream) -> None:
    data = np.ones(32 * 1024 * 1024, dtype=np.uint8)  # 32 MiB so the copy takes measurable time
    with (
        cuda_memory.PinnedBuffer(data.shape, np.uint8) as host,
        cuda_memory.DeviceBuffer(data.nbytes) as dev,
        cuda_runtime.Event(timing=True) as start,
        cuda_runtime.Event(timing=True) as end,
    ):
        host.array[...] = data
        start.record(stream)
        cuda_memory.copy_htod_async(dev, host.array, stream)
        end.record(stream)
        end.synchronize()
        ms = start.elapsed_ms(end)
    assert ms > 0.0


def test_stage_clock_times_each_stage_on_the_stream(stream: cuda_runtime.Stream) -> None:
    # What the TensorRT runner does around its copies and the engine, with two copies here.
    data = np.arange(16 * 1024 * 1024, dtype=np.uint8)  # 16 MiB: each copy takes measurable time
    with (
        cuda_memory.PinnedBuffer(data.shape, np.uint8) as host,
        cuda_memory.PinnedBuffer(data.shape, np.uint8) as back,
        cuda_memory.DeviceBuffer(data.nbytes) as dev,
        StageClock(("h2d", "d2h")) as clock,
    ):
        host.array[...] = data
        for _ in range(2):  # the events are reused round after round
            back.array[...] = 0
            clock.start(stream)
            cuda_memory.copy_htod_async(dev, host.array, stream)
            clock.mark(stream)
            cuda_memory.copy_dtoh_async(back.array, dev, stream)
            clock.mark(stream)
            stream.synchronize()
            times = clock.elapsed_ms()
            assert set(times) == {"h2d", "d2h"} and all(ms > 0.0 for ms in times.values())
            np.testing.assert_array_equal(back.array, data)


def test_two_streams_copy_concurrently() -> None:
    n = 8 * 1024 * 1024
    payloads = [np.full(n, 3, np.uint8), np.arange(n, dtype=np.uint32).view(np.uint8)[:n].copy()]
    results: list[np.ndarray | None] = [None, None]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def work(i: int) -> None:
        try:
            with (
                cuda_runtime.Stream() as s,
                cuda_memory.PinnedBuffer((n,), np.uint8) as src,
                cuda_memory.PinnedBuffer((n,), np.uint8) as dst,
                cuda_memory.DeviceBuffer(n) as dev,
            ):
                src.array[...] = payloads[i]
                barrier.wait()
                for _ in range(5):
                    cuda_memory.copy_htod_async(dev, src.array, s)
                    cuda_memory.copy_dtoh_async(dst.array, dev, s)
                s.synchronize()
                results[i] = dst.array.copy()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    for i in range(2):
        result = results[i]
        assert result is not None
        np.testing.assert_array_equal(result, payloads[i])


def test_streams_are_distinct_handles() -> None:
    with cuda_runtime.Stream() as a, cuda_runtime.Stream() as b:
        assert a.handle not in (b.handle, 0)


@pytest.mark.slow
def test_no_device_memory_growth_over_10000_iterations(stream: cuda_runtime.Stream) -> None:
    host = np.arange(1024, dtype=np.float32)
    out = np.empty_like(host)
    cuda_runtime.device_synchronize()
    free_before, _total = cuda_runtime.mem_get_info()
    for i in range(10_000):
        with cuda_memory.DeviceBuffer(host.nbytes + (i % 7) * 4096) as dev:
            cuda_memory.copy_htod_async(dev, host, stream)
            cuda_memory.copy_dtoh_async(out, dev, stream)
            stream.synchronize()
    cuda_runtime.device_synchronize()
    free_after, _ = cuda_runtime.mem_get_info()
    np.testing.assert_array_equal(out, host)
    assert free_before - free_after <= 8 * 1024 * 1024, (free_before, free_after)


def test_close_is_idempotent_and_use_after_close_fails() -> None:
    buf = cuda_memory.DeviceBuffer(64)
    buf.close()
    buf.close()
    with pytest.raises(RuntimeError, match="closed"):
        _ = buf.ptr
    pinned = cuda_memory.PinnedBuffer((4,), np.float32)
    pinned.close()
    with pytest.raises(RuntimeError, match="closed"):
        _ = pinned.array


def test_cuda_errors_carry_the_error_name() -> None:
    with pytest.raises(cuda_runtime.CudaError) as err:
        cuda_memory.DeviceBuffer(1 << 62)  # far beyond any device
    assert err.value.name.startswith("cudaError")
