"""Outputs whose shape depends on the data (NonZero, NonMaxSuppression, ...).

For such an output ``IExecutionContext.get_tensor_shape`` still holds ``-1`` after every input
shape is set: its size is known only while the engine runs. TensorRT asks an application
``IOutputAllocator`` for the memory (``reallocate_output`` / ``reallocate_output_async`` from
10.0, which deprecates the former) and reports the final shape with ``notify_shape``, "sometime
between when it calls reallocateOutput and enqueueV3 returns" (TensorRT 8.6/10.x C++ API,
``IOutputAllocator``; Python API "IExecutionContext": ``set_output_allocator``). Polygraphy's
``TrtRunner`` registers one allocator for its outputs and reads ``shapes``/``buffers`` back after
``execute_async_v3`` (``polygraphy/backend/trt/runner.py``, ``_make_output_allocator``); this
module does the same for the outputs that need it, with grow-only buffers from the runner's CUDA
layer.
"""

from __future__ import annotations

from typing import Any

from agent.backends.tensorrt.loader import dims, trt


def make_output_allocator(cuda: Any) -> Any:
    """A ``trt.IOutputAllocator`` whose buffers are ``cuda.DeviceBuffer`` objects (grow-only,
    kept across inferences); ``.shapes[name]`` is the shape TensorRT notified last."""

    class GrowingOutputAllocator(trt.IOutputAllocator):
        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)
            self.buffers: dict[str, Any] = {}
            self.shapes: dict[str, tuple[int, ...]] = {}

        def reallocate_output(
            self, tensor_name: str, memory: int, size: int, alignment: int
        ) -> int:
            # cudaMalloc's alignment (256 B) covers every alignment TensorRT asks for ("a power of
            # 2 not exceeding the alignment guaranteed by cudaMalloc", IGpuAllocator docs).
            del memory, alignment
            buf = self.buffers.get(tensor_name)
            if buf is None or buf.nbytes < size:
                if buf is not None:
                    buf.close()
                buf = self.buffers[tensor_name] = cuda.DeviceBuffer(max(int(size), 1))
            return int(buf.ptr)

        def reallocate_output_async(
            self, tensor_name: str, memory: int, size: int, alignment: int, stream: int
        ) -> int:
            # The allocation is synchronous (cudaMalloc) and so is safe for any stream.
            del stream
            return self.reallocate_output(tensor_name, memory, size, alignment)

        def notify_shape(self, tensor_name: str, shape: trt.Dims) -> None:
            self.shapes[tensor_name] = dims(shape)

        def close(self) -> None:
            for buf in self.buffers.values():
                buf.close()
            self.buffers.clear()
            self.shapes.clear()

    return GrowingOutputAllocator()
