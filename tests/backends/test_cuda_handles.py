"""agent/backends/cuda/runtime.py without a GPU: handle values and event flags, against a fake
cuda-python runtime module."""

from __future__ import annotations

import ctypes
import types
from typing import Any

import pytest

from agent.backends.cuda import runtime as cuda_runtime


class _HandleWithoutInt:
    """A cuda-python handle whose ``getPtr()`` is, as documented, the address of the C variable
    that holds the handle (not the handle)."""

    def __init__(self, value: int) -> None:
        self._storage = ctypes.c_void_p(value)

    def getPtr(self) -> int:  # noqa: N802 - cuda-python's name
        return ctypes.addressof(self._storage)


def test_handle_int_reads_the_value_behind_getptr() -> None:
    handle = _HandleWithoutInt(0xDEAD000)
    assert handle.getPtr() != 0xDEAD000
    assert cuda_runtime.handle_int(handle) == 0xDEAD000
    assert cuda_runtime.handle_int(_HandleWithoutInt(0)) == 0
    assert cuda_runtime.handle_int(42) == 42


@pytest.fixture
def fake_cudart(monkeypatch: pytest.MonkeyPatch) -> Any:
    calls: list[tuple[Any, ...]] = []
    rt: Any = types.ModuleType("fake_cudart")
    rt.cudaEventDefault, rt.cudaEventBlockingSync, rt.cudaEventDisableTiming = 0, 1, 2
    rt.calls = calls

    def record(name: str, result: Any) -> Any:
        def fn(*args: Any) -> Any:
            calls.append((name, *args))
            return result

        return fn

    rt.cudaEventCreateWithFlags = record("cudaEventCreateWithFlags", (0, 0x77))
    rt.cudaEventCreate = record("cudaEventCreate", (0, 0x78))
    rt.cudaEventDestroy = record("cudaEventDestroy", (0,))
    rt.cudaEventSynchronize = record("cudaEventSynchronize", (0,))
    rt.cudaEventElapsedTime = record("cudaEventElapsedTime", (0, 1.5))
    monkeypatch.setattr(cuda_runtime, "_cudart", rt)
    return rt


def test_events_default_to_blocking_sync_without_timing(fake_cudart: Any) -> None:
    with cuda_runtime.Event() as event:
        event.synchronize()
    assert ("cudaEventCreateWithFlags", 1 | 2) in fake_cudart.calls
    assert not [c for c in fake_cudart.calls if c[0] == "cudaEventCreate"]


def test_timing_events_keep_timing_and_only_they_measure(fake_cudart: Any) -> None:
    with cuda_runtime.Event(timing=True) as a, cuda_runtime.Event(timing=True) as b:
        assert a.elapsed_ms(b) == 1.5
    assert ("cudaEventCreateWithFlags", 1) in fake_cudart.calls
    with cuda_runtime.Event() as a, cuda_runtime.Event() as b, pytest.raises(ValueError):
        a.elapsed_ms(b)
