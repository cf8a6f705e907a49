"""The fake's runtime side: ``ICudaEngine`` (with 8.6's bindings API), ``Runtime`` and the
module helpers (``install_runtime``). ``Runtime.deserialize_cuda_engine`` notes which builder
objects are still alive (``Recorder.alive_at_deserialize``)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from tests.fakes.tensorrt.builder import MAGIC
from tests.fakes.tensorrt.state import Fake


def install_runtime(fk: Fake) -> None:
    """ICudaEngine, Runtime, volume, nptype."""
    mod: Any = fk.mod
    rec, major = fk.rec, fk.major
    Dims, IHostMemory = mod.Dims, mod.IHostMemory  # noqa: N806
    EngineInspector, IExecutionContext = mod.EngineInspector, mod.IExecutionContext  # noqa: N806

    class ICudaEngine:
        def __init__(self, body: dict[str, Any]) -> None:
            self.body = body
            self._io = [(t, mod.TensorIOMode.INPUT) for t in body["inputs"]] + [
                (t, mod.TensorIOMode.OUTPUT) for t in body["outputs"]
            ]

        def _find(self, name: str) -> tuple[dict[str, Any], Any]:
            for t, mode in self._io:
                if t["name"] == name:
                    return t, mode
            raise KeyError(name)

        def profile_for(self, name: str, shape: tuple[int, ...]) -> list[tuple[int, ...]]:
            prof = self.body["profile"].get(name)
            if prof is None:
                return [shape, shape, shape]
            return [tuple(s) for s in prof]

        @property
        def num_io_tensors(self) -> int:
            return len(self._io)

        def get_tensor_name(self, index: int) -> str:
            return self._io[index][0]["name"]

        def get_tensor_mode(self, name: str) -> Any:
            return self._find(name)[1]

        def get_tensor_shape(self, name: str) -> Any:
            return Dims(self._find(name)[0]["shape"])

        def _is_dds(self, name: str) -> bool:
            return bool(self._find(name)[0].get("dds"))

        def get_tensor_dtype(self, name: str) -> Any:
            return getattr(mod.DataType, self._find(name)[0]["dtype"])

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[Any]:
            return [Dims(s) for s in self.profile_for(name, ())]

        @property
        def num_layers(self) -> int:
            return len(self.body["layers"])

        @property
        def num_optimization_profiles(self) -> int:
            return 1

        @property
        def profiling_verbosity(self) -> Any:
            return getattr(mod.ProfilingVerbosity, self.body["verbosity"])

        def create_execution_context(self) -> Any:
            rec.record("create_execution_context")
            return IExecutionContext(self)

        def create_engine_inspector(self) -> Any:
            return EngineInspector(self)

        def serialize(self) -> Any:
            return IHostMemory(MAGIC + json.dumps(self.body).encode())

    if major < 10:
        # 8.6 still has the bindings API beside the name-based one.
        def num_bindings(self: ICudaEngine) -> int:
            return len(self._io)

        def binding_is_input(self: ICudaEngine, index: int) -> bool:
            return self._io[index][1] == mod.TensorIOMode.INPUT

        def get_binding_name(self: ICudaEngine, index: int) -> str:
            return self._io[index][0]["name"]

        def get_binding_shape(self: ICudaEngine, index: int) -> Any:
            return Dims(self._io[index][0]["shape"])

        def get_binding_dtype(self: ICudaEngine, index: int) -> Any:
            return getattr(mod.DataType, self._io[index][0]["dtype"])

        def get_profile_shape(self: ICudaEngine, profile_index: int, binding: Any) -> list[Any]:
            # Deprecated in 8.5 for get_tensor_profile_shape, removed in 10.0; ``binding`` is an
            # index or a name (two overloads in 8.x's pyCore.cpp).
            name = self._io[binding][0]["name"] if isinstance(binding, int) else str(binding)
            return self.get_tensor_profile_shape(name, profile_index)

        ICudaEngine.num_bindings = property(num_bindings)  # type: ignore[attr-defined]
        ICudaEngine.binding_is_input = binding_is_input  # type: ignore[attr-defined]
        ICudaEngine.get_binding_name = get_binding_name  # type: ignore[attr-defined]
        ICudaEngine.get_binding_shape = get_binding_shape  # type: ignore[attr-defined]
        ICudaEngine.get_binding_dtype = get_binding_dtype  # type: ignore[attr-defined]
        ICudaEngine.get_profile_shape = get_profile_shape  # type: ignore[attr-defined]
        ICudaEngine.max_batch_size = 1  # type: ignore[attr-defined]

        def set_binding_shape(self: Any, binding: int, shape: Any) -> bool:
            return self.set_input_shape(self.engine.get_tensor_name(binding), shape)

        def get_binding_shape_ctx(self: Any, binding: int) -> Any:
            return self.get_tensor_shape(self.engine.get_tensor_name(binding))

        def execute_async_v2(self: Any, bindings: list[int], stream_handle: int) -> bool:
            rec.record("execute_async_v2", list(bindings), stream_handle)
            names = [self.engine.get_tensor_name(i) for i in range(len(bindings))]
            return self._run(dict(zip(names, bindings, strict=True)))

        IExecutionContext.set_binding_shape = set_binding_shape  # type: ignore[attr-defined]
        IExecutionContext.get_binding_shape = get_binding_shape_ctx  # type: ignore[attr-defined]
        IExecutionContext.execute_async_v2 = execute_async_v2  # type: ignore[attr-defined]

    class Runtime:
        def __init__(self, logger: Any) -> None:
            self.logger = logger
            self._dla_core = -1

        @property
        def DLA_core(self) -> int:  # noqa: N802 - the TensorRT name
            return self._dla_core

        @DLA_core.setter
        def DLA_core(self, value: int) -> None:  # noqa: N802
            rec.record("runtime.DLA_core", value)
            self._dla_core = value

        def deserialize_cuda_engine(self, serialized_engine: bytes) -> ICudaEngine | None:
            data = bytes(serialized_engine)
            rec.record("deserialize_cuda_engine", len(data))
            rec.alive_at_deserialize.append(sorted(type(o).__name__ for o in rec.alive))
            if not data.startswith(MAGIC):
                self.logger.log(mod.ILogger.ERROR, "Serialization assertion failed: magic tag")
                return None
            body = json.loads(data[len(MAGIC) :])
            if body["version"] != mod.__version__:
                self.logger.log(mod.ILogger.ERROR, "engine plan built by another TensorRT")
                return None
            return ICudaEngine(body)

    def volume(iterable: Any) -> int:
        return int(np.prod(list(iterable), dtype=np.int64))

    def nptype(trt_type: Any) -> type:
        return fk.np_by_dt[trt_type.name]

    for obj in (ICudaEngine, Runtime, volume, nptype):
        setattr(mod, obj.__name__, obj)
