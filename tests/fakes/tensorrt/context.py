"""The fake's execution side: ``IProfiler``, ``IOutputAllocator`` and ``IExecutionContext``
(``install_context``). The context computes ``relu(first input)`` for each ordinary output and
``NonZero(relu(first input))`` (int64, ``[rank, count]``) for an output with a data-dependent
shape, which it writes through the registered ``IOutputAllocator`` exactly as TensorRT does:
``reallocate_output[_async]`` then ``notify_shape``; without an allocator it fails."""

from __future__ import annotations

from typing import Any

import numpy as np

from tests.fakes.tensorrt.state import Fake, as_tuple


def install_context(fk: Fake) -> None:
    """IProfiler, IOutputAllocator, IExecutionContext."""
    mod: Any = fk.mod
    rec, major = fk.rec, fk.major
    Dims = mod.Dims  # noqa: N806

    class IProfiler:
        def __init__(self) -> None:
            pass

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            raise NotImplementedError

    class IOutputAllocator:
        def __init__(self) -> None:
            pass

    class IExecutionContext:
        def __init__(self, engine: Any) -> None:
            self.engine = engine
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.addresses: dict[str, int] = {}
            self._profiler: IProfiler | None = None
            self._emits = True
            self._pending: list[tuple[str, float]] = []
            self.allocators: dict[str, Any] = {}

        @property
        def profiler(self) -> IProfiler | None:
            return self._profiler

        @profiler.setter
        def profiler(self, value: IProfiler) -> None:
            rec.record("context.profiler", type(value).__name__)
            assert isinstance(value, IProfiler), "the profiler must subclass trt.IProfiler"
            self._profiler = value

        @property
        def enqueue_emits_profile(self) -> bool:
            return self._emits

        @enqueue_emits_profile.setter
        def enqueue_emits_profile(self, value: bool) -> None:
            rec.record("enqueue_emits_profile", value)
            self._emits = bool(value)

        def report_to_profiler(self) -> bool:
            if self._profiler is None:
                return False
            for name, ms in self._pending:
                self._profiler.report_layer_time(name, ms)
            self._pending.clear()
            return True

        def _layer_times(self) -> list[tuple[str, float]]:
            return [
                (name, rec.layer_ms.get(name, 0.25 * (i + 1)))
                for i, (name, _op, _precision) in enumerate(self.engine.body["layers"])
            ]

        def _profile(self) -> None:
            # The execution takes the device's time its layers take (what CUDA events see).
            rec.memory.clock_ms += sum(ms for _name, ms in self._layer_times())
            if self._profiler is None:
                return
            self._pending = self._layer_times()
            if self._emits:
                self.report_to_profiler()

        def set_input_shape(self, name: str, shape: Any) -> bool:
            shape = as_tuple(shape)
            rec.record("set_input_shape", name, shape)
            lo, _opt, hi = self.engine.profile_for(name, shape)
            if len(shape) != len(lo) or any(
                not (a <= s <= b) for s, a, b in zip(shape, lo, hi, strict=True)
            ):
                return False
            self.shapes[name] = shape
            return True

        def get_tensor_shape(self, name: str) -> Any:
            if name in self.shapes:
                return Dims(self.shapes[name])
            first = self.engine.body["inputs"][0]["name"]
            if self.engine._is_dds(name):
                return self.engine.get_tensor_shape(name)  # -1 until the engine has run
            if (
                self.engine.get_tensor_mode(name) == mod.TensorIOMode.OUTPUT
                and first in self.shapes
            ):
                return Dims(self.shapes[first])  # the fake model is elementwise
            return self.engine.get_tensor_shape(name)

        def set_tensor_address(self, name: str, memory: int) -> bool:
            rec.record("set_tensor_address", name, memory)
            self.addresses[name] = memory
            return True

        def get_tensor_address(self, name: str) -> int:
            return self.addresses[name]

        def set_output_allocator(self, name: str, output_allocator: IOutputAllocator) -> bool:
            rec.record("set_output_allocator", name)
            assert isinstance(output_allocator, IOutputAllocator), "must subclass the interface"
            self.allocators[name] = output_allocator
            return True

        def get_output_allocator(self, name: str) -> IOutputAllocator | None:
            return self.allocators.get(name)

        def execute_async_v3(self, stream_handle: int) -> bool:
            rec.record("execute_async_v3", stream_handle)
            return self._run(self.addresses, stream_handle)

        def _allocate(self, name: str, data: np.ndarray, stream_handle: int) -> None:
            """IOutputAllocator protocol: ask for memory, write, then notify the shape."""
            allocator = self.allocators[name]
            current = self.addresses.get(name, 0)
            if major >= 10:
                ptr = allocator.reallocate_output_async(
                    name, current, data.nbytes, 256, stream_handle
                )
            else:
                ptr = allocator.reallocate_output(name, current, data.nbytes, 256)
            rec.record("reallocate_output", name, data.nbytes)
            rec.memory.block(int(ptr))[: data.nbytes] = data.tobytes()
            allocator.notify_shape(name, Dims(data.shape))

        def _run(self, addresses: dict[str, int], stream_handle: int = 0) -> bool:
            first = self.engine.body["inputs"][0]
            shape = self.shapes[first["name"]]
            dtype = fk.np_by_dt[first["dtype"]]
            count = int(np.prod(shape))
            src = rec.memory.block(addresses[first["name"]])
            x = np.frombuffer(bytes(src[: count * np.dtype(dtype).itemsize]), dtype=dtype)
            relu = np.maximum(x, 0)
            for out in self.engine.body["outputs"]:
                name = out["name"]
                if out.get("dds"):
                    if name not in self.allocators:
                        # TensorRT: an output whose shape is data-dependent needs an allocator.
                        rec.record("error", f"output {name} has no IOutputAllocator")
                        return False
                    nonzero = np.array(np.nonzero(relu.reshape(shape) > 0), dtype=np.int64)
                    self._allocate(name, nonzero, stream_handle)
                    continue
                y = relu.astype(np.float32).tobytes()
                rec.memory.block(addresses[name])[: len(y)] = y
            self._profile()
            return True

    for obj in (IProfiler, IOutputAllocator, IExecutionContext):
        setattr(mod, obj.__name__, obj)
