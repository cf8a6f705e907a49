"""Issue 19 item 12: on an integrated GPU (Jetson: CPU and GPU share DRAM) the runner stages I/O
in mapped pinned memory that TensorRT reads and writes in place (no device buffers, no copies);
a discrete GPU keeps pinned + device buffers and async copies. The runner runs against the fake
TensorRT and fake CUDA layer; ``zero_copy_staging`` and ``MappedBuffer`` against a fake
cuda-python runtime module; one real-GPU check skips without a GPU."""

from __future__ import annotations

import ctypes
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.backends.cuda import memory as cuda_memory
from agent.backends.cuda import runtime as cuda_runtime
from agent.backends.tensorrt import backend as trt_backend
from agent.backends.tensorrt import runner as trt_runner
from agent.core.errors import BackendUnavailable
from tests.fakes.tensorrt import (
    FakeCuda,
    build_request,
    make_fake_tensorrt,
    onnx_nonzero_model,
    onnx_relu_model,
)

_COPIES = ("htod", "dtoh", "malloc")


def _build(tmp_path: Path, model: Any = onnx_relu_model) -> Any:
    model(tmp_path / "model.onnx")
    return trt_backend.BACKEND.build(build_request(tmp_path))


def _run(
    tmp_path: Path, result: Any, cuda: FakeCuda, batches: list[np.ndarray], **kw: Any
) -> tuple[list[dict[str, np.ndarray]], bool]:
    outs: list[dict[str, np.ndarray]] = []
    runner = trt_runner.TrtRunner(tmp_path / "artifact", result.main_file, cuda=cuda, **kw)
    with runner:
        zero_copy = runner.zero_copy
        outs = [runner.infer({"images": x}) for x in batches]
    assert not cuda.live  # every device / mapped buffer freed on deactivate
    return outs, zero_copy


def _batches() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    # 2 → 8 → 1: the grow-only buffers grow once and are reused for the smaller batch.
    return [rng.standard_normal((b, 3, 4, 4)).astype(np.float32) for b in (2, 8, 1)]


def _kinds(cuda: FakeCuda) -> set[str]:
    return {c[0] for c in cuda.calls}


def test_integrated_gpu_binds_mapped_buffers_and_copies_nothing(tmp_path: Path, fake: Any) -> None:
    result = _build(tmp_path)
    batches = _batches()
    igpu = FakeCuda(fake._fake.memory, integrated=True)
    dgpu = FakeCuda(fake._fake.memory)
    start = len(fake._fake.calls)
    mapped, igpu_zero_copy = _run(tmp_path, result, igpu, batches)
    bound = {c[2] for c in fake._fake.calls[start:] if c[0] == "set_tensor_address"}
    copied, dgpu_zero_copy = _run(tmp_path, result, dgpu, batches)
    assert igpu_zero_copy and not dgpu_zero_copy
    assert not _kinds(igpu) & set(_COPIES), igpu.calls
    # One mapped buffer per tensor, grown once for batch 8 (input + output: 2 + 2).
    allocs = [c for c in igpu.calls if c[0] == "host_alloc_mapped"]
    assert [c[1] for c in allocs] == [2 * 48 * 4, 2 * 48 * 4, 8 * 48 * 4, 8 * 48 * 4]
    # The engine was bound to the mapped buffers' device addresses and to nothing else.
    assert bound == {c[2] for c in allocs}
    assert {"htod", "dtoh", "malloc"} <= _kinds(dgpu)
    assert "host_alloc_mapped" not in _kinds(dgpu)
    for x, a, b in zip(batches, mapped, copied, strict=True):
        np.testing.assert_array_equal(a["scores"], np.maximum(x, 0))
        np.testing.assert_array_equal(a["scores"], b["scores"])


def test_results_do_not_alias_the_mapped_buffers(tmp_path: Path, fake: Any) -> None:
    # The engine rewrites the mapped output in place on the next inference: a returned array
    # must be a copy, not a view of it.
    result = _build(tmp_path)
    cuda = FakeCuda(fake._fake.memory, integrated=True)
    x = np.full((2, 3, 4, 4), 1.5, np.float32)
    with trt_runner.TrtRunner(tmp_path / "artifact", result.main_file, cuda=cuda) as runner:
        first = runner.infer({"images": x})["scores"]
        runner.infer({"images": x * 2})
        np.testing.assert_array_equal(first, x)


def test_the_decision_can_be_overridden_either_way(tmp_path: Path, fake: Any) -> None:
    result = _build(tmp_path)
    batches = _batches()[:1]
    forced_off = FakeCuda(fake._fake.memory, integrated=True)
    off, off_zero_copy = _run(tmp_path, result, forced_off, batches, zero_copy=False)
    assert not off_zero_copy and {"htod", "dtoh"} <= _kinds(forced_off)
    forced_on = FakeCuda(fake._fake.memory)
    on, on_zero_copy = _run(tmp_path, result, forced_on, batches, zero_copy=True)
    assert on_zero_copy and not _kinds(forced_on) & set(_COPIES)
    np.testing.assert_array_equal(off[0]["scores"], on[0]["scores"])


def test_zero_copy_on_the_bindings_api_of_old_tensorrt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = make_fake_tensorrt("8.6")
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    result = _build(tmp_path)
    del module.ICudaEngine.num_io_tensors  # as in TensorRT < 8.5: bindings only
    cuda = FakeCuda(module._fake.memory, integrated=True)
    outs, zero_copy = _run(tmp_path, result, cuda, _batches())
    assert zero_copy and module._fake.named("execute_async_v2")
    assert not _kinds(cuda) & set(_COPIES)
    for x, out in zip(_batches(), outs, strict=True):
        np.testing.assert_array_equal(out["scores"], np.maximum(x, 0))


def test_data_dependent_outputs_still_come_back_on_an_integrated_gpu(
    tmp_path: Path, fake11: Any
) -> None:
    # The IOutputAllocator's buffers stay device buffers (copied down once TensorRT has written
    # them); every other output is mapped.
    result = _build(tmp_path, onnx_nonzero_model)
    cuda = FakeCuda(fake11._fake.memory, integrated=True)
    x = np.random.default_rng(3).standard_normal((2, 3, 4, 4)).astype(np.float32)
    (out,), _ = _run(tmp_path, result, cuda, [x])
    np.testing.assert_array_equal(out["scores"], np.maximum(x, 0))
    expected = np.array(np.nonzero(np.maximum(x, 0) > 0), dtype=np.int64)
    np.testing.assert_array_equal(out["where"], expected)
    assert [c[1] for c in cuda.calls if c[0] == "dtoh"] == [expected.nbytes]
    assert not [c for c in cuda.calls if c[0] == "htod"]


# --------------------------------------------------------------- the CUDA layer, fake cudart


@pytest.fixture
def cudart(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fake cuda-python runtime: device attributes from ``rt.attrs``, host memory from ctypes."""
    rt: Any = types.ModuleType("fake_cudart")
    rt.calls, rt.attrs, rt.keep = [], {}, {}
    rt.cudaHostAllocDefault, rt.cudaHostAllocMapped = 0, 2
    rt.cudaDeviceAttr = types.SimpleNamespace(
        cudaDevAttrIntegrated=18, cudaDevAttrCanMapHostMemory=19
    )

    def get_attribute(attr: int, device: int) -> tuple[int, int]:
        rt.calls.append(("cudaDeviceGetAttribute", attr, device))
        return 0, rt.attrs[attr]

    def host_alloc(size: int, flags: int) -> tuple[int, int]:
        buf = (ctypes.c_ubyte * size)()
        ptr = ctypes.addressof(buf)
        rt.keep[ptr] = buf
        rt.calls.append(("cudaHostAlloc", size, flags))
        return 0, ptr

    def get_device_pointer(ptr: int, flags: int) -> tuple[int, int]:
        rt.calls.append(("cudaHostGetDevicePointer", ptr, flags))
        return 0, ptr + 0x1000  # a distinct value: the buffer must use what CUDA returned

    def free_host(ptr: int) -> tuple[int]:
        rt.calls.append(("cudaFreeHost", ptr))
        return (0,)

    rt.cudaDeviceGetAttribute = get_attribute
    rt.cudaGetDevice = lambda: (0, 1)
    rt.cudaHostAlloc = host_alloc
    rt.cudaHostGetDevicePointer = get_device_pointer
    rt.cudaFreeHost = free_host
    monkeypatch.setattr(cuda_runtime, "_cudart", rt)
    return rt


@pytest.mark.parametrize(
    ("integrated", "can_map", "expected"),
    [(1, 1, True), (0, 1, False), (1, 0, False), (0, 0, False)],
)
def test_zero_copy_staging_needs_an_integrated_gpu_that_maps_host_memory(
    cudart: Any, integrated: int, can_map: int, expected: bool
) -> None:
    cudart.attrs.update({18: integrated, 19: can_map})
    assert cuda_memory.zero_copy_staging() is expected
    assert ("cudaDeviceGetAttribute", 18, 1) in cudart.calls  # the current device (1)
    cudart.calls.clear()
    assert cuda_memory.zero_copy_staging(0) is expected
    assert {c[2] for c in cudart.calls} == {0}


def test_mapped_buffer_allocates_mapped_and_uses_the_device_pointer(cudart: Any) -> None:
    with cuda_memory.MappedBuffer((2, 3), np.float32) as buf:
        assert ("cudaHostAlloc", 24, 2) in cudart.calls
        assert ("cudaHostGetDevicePointer", buf.ptr, 0) in cudart.calls
        assert buf.device_ptr == buf.ptr + 0x1000
        buf.array[...] = 4.0
        raw = (ctypes.c_float * 6).from_address(buf.ptr)
        assert list(raw) == [4.0] * 6  # the array is the allocation itself
        ptr = buf.ptr
    assert ("cudaFreeHost", ptr) in cudart.calls
    with pytest.raises(RuntimeError, match="closed"):
        _ = buf.device_ptr
    with cuda_memory.PinnedBuffer((4,), np.uint8):
        assert cudart.calls[-1] == ("cudaHostAlloc", 4, 0)  # plain pinned: not mapped


# --------------------------------------------------------------- a real GPU, when there is one


def _gpu_ok() -> bool:
    try:
        cuda_runtime.load_cudart()
    except BackendUnavailable:
        return False
    return cuda_runtime.available()[0]


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_ok(), reason="no usable CUDA GPU (or cuda-python missing)")
def test_mapped_buffer_is_visible_to_the_device_on_a_real_gpu() -> None:
    # A device-to-device copy out of the mapped buffer reads what the host wrote, and one into
    # it is what the host reads back: the device addresses the same memory (any GPU with UVA).
    data = np.arange(256, dtype=np.float32)
    with (
        cuda_runtime.Stream() as stream,
        cuda_memory.MappedBuffer(data.shape, np.float32) as mapped,
        cuda_memory.DeviceBuffer(data.nbytes) as dev,
    ):
        mapped.array[...] = data
        d2d = cuda_runtime.load_cudart().cudaMemcpyKind.cudaMemcpyDeviceToDevice
        cuda_runtime.call(
            "cudaMemcpyAsync", dev.ptr, mapped.device_ptr, data.nbytes, d2d, stream.raw
        )
        out = np.zeros_like(data)
        cuda_memory.copy_dtoh_async(out, dev, stream)
        stream.synchronize()
        np.testing.assert_array_equal(out, data)
        mapped.array[...] = 0
        cuda_runtime.call(
            "cudaMemcpyAsync", mapped.device_ptr, dev.ptr, data.nbytes, d2d, stream.raw
        )
        stream.synchronize()
        np.testing.assert_array_equal(mapped.array, data)
    print("zero_copy_staging on this GPU:", cuda_memory.zero_copy_staging())
