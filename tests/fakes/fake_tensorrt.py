"""A fake ``tensorrt`` module per API generation ("8.6", "10.3", "11.0"), plus a fake CUDA layer.

Only what ``agent/backends/tensorrt/`` calls is mirrored, with the names and parameter names of
the real API (checked against ``tensorrt-stubs`` by ``tests/backends/test_tensorrt_stubs.py``).
The generations differ where TensorRT does:

* 8.6: ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH`` (the ONNX parser refuses implicit-batch
  networks), no ``STRONGLY_TYPED``; ``Builder.build_engine``/``max_batch_size``; the bindings API
  (``num_bindings``, ``binding_is_input``, ``execute_async_v2``) beside the tensor API.
* 10.3: EXPLICIT_BATCH still present (ignored), STRONGLY_TYPED present; no bindings API, no
  ``build_engine``. A strongly typed network rejects precision flags, as the real builder does.
* 11.0: no EXPLICIT_BATCH, no ``BuilderFlag.INT8/FP16``; every network is strongly typed.

On every generation the parser refuses a DequantizeLinear whose input is not a quantized type
(:func:`dequantize_input_errors`: an INT32 bias, a U8 activation), and the builder refuses a DLA
build whose optimization profile is dynamic (min, opt and max not all equal), as TensorRT does.

Every call is recorded in ``module._fake.calls`` as ``(method, *args)``; the built "engine" is
JSON behind a magic prefix, and its execution context computes ``relu(first input)`` for each
output through the fake device memory, so a runner round-trip is checkable. With an
``IProfiler`` set as the context's ``profiler`` (and ``enqueue_emits_profile`` left True), each
execution calls ``report_layer_time`` once per layer with ``module._fake.layer_ms[name]``
(default ``0.25 * (index + 1)`` ms).
"""

from __future__ import annotations

import itertools
import json
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from agent.backends.base import BuildRequest, InputShapes

MAGIC = b"FAKETRT1"
GENERATIONS = ("8.6", "10.3", "11.0")
#: the optimization-profile shapes of :func:`onnx_relu_model`'s input
SHAPES = {"images": InputShapes((1, 3, 4, 4), (4, 3, 4, 4), (8, 3, 4, 4))}
#: what each generation's build sets: (network flags, builder flags for int8, for fp16)
EXPECTED_FLAGS = {
    "8.6": (("EXPLICIT_BATCH",), ("INT8", "FP16"), ("FP16",)),
    "10.3": ((), ("INT8", "FP16"), ("FP16",)),
    "11.0": (("STRONGLY_TYPED",), (), ()),
}


#: ONNX element types TensorRT's parser takes as DequantizeLinear input (its "quantized types"):
#: INT8 only up to 8.6 (onnx-tensorrt 8.x docs/operators.md lists INT8 as the one quantized
#: type); INT8, INT4 and FLOAT8E4M3FN from 10.0 (onnx-tensorrt 10.x docs/operators.md: "INT8,
#: INT4, and FP8 are treated as Quantized Types"). An INT32 bias behind a DequantizeLinear (ORT's
#: default QuantizeBias) fails with "only activation types allowed as input to this layer"
#: (microsoft/onnxruntime#14229, onnx/onnx-tensorrt#850).
DQ_INPUT_TYPES = {8: {3}, 10: {3, 22, 17}, 11: {3, 22, 17}}
_ONNX_TYPE_NAMES = {1: "FLOAT", 2: "UINT8", 3: "INT8", 6: "INT32", 7: "INT64", 10: "FLOAT16"}


def _elem_types(graph: Any) -> dict[str, int]:
    """Tensor name -> ONNX element type, from initializers, value infos, inputs and the zero
    point of each QuantizeLinear (its output type; uint8 without one, as the ONNX spec says)."""
    types_: dict[str, int] = {t.name: t.data_type for t in graph.initializer}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        types_.setdefault(vi.name, vi.type.tensor_type.elem_type)
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            zero_point = node.input[2] if len(node.input) > 2 and node.input[2] else None
            types_[node.output[0]] = types_.get(zero_point, 2) if zero_point else 2
    return types_


def dequantize_input_errors(graph: Any, major: int) -> list[tuple[int, str]]:
    """(node index, message) for each DequantizeLinear whose input is not a quantized type this
    TensorRT generation parses, worded as onnx-tensorrt's importer reports it."""
    allowed = DQ_INPUT_TYPES[major]
    types_ = _elem_types(graph)
    errors: list[tuple[int, str]] = []
    for index, node in enumerate(graph.node):
        if node.op_type != "DequantizeLinear":
            continue
        elem = types_.get(node.input[0])
        if elem is not None and elem not in allowed:
            name = _ONNX_TYPE_NAMES.get(elem, str(elem))
            errors.append(
                (
                    index,
                    f"{node.name}: only activation types allowed as input to this layer "
                    f"(DequantizeLinear input '{node.input[0]}' is {name})",
                )
            )
    return errors


# --------------------------------------------------------------------------- shared state


class DeviceMemory:
    """Fake device memory: base address → bytearray (shared by the fake TRT and fake CUDA)."""

    def __init__(self) -> None:
        self.blocks: dict[int, bytearray] = {}
        self._next = itertools.count(0x10000, 0x10000)

    def alloc(self, nbytes: int) -> int:
        ptr = next(self._next)
        self.blocks[ptr] = bytearray(max(nbytes, 1))
        return ptr

    def free(self, ptr: int) -> None:
        del self.blocks[ptr]

    def block(self, ptr: int) -> bytearray:
        return self.blocks[ptr]


@dataclass
class Recorder:
    version: str
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    parse_errors: list[str] = field(default_factory=list)
    build_error: str | None = None
    memory: DeviceMemory = field(default_factory=DeviceMemory)
    networks: list[Any] = field(default_factory=list)
    configs: list[Any] = field(default_factory=list)
    profiles: list[Any] = field(default_factory=list)
    layer_ms: dict[str, float] = field(default_factory=dict)

    def record(self, *call: Any) -> None:
        self.calls.append(call)

    def named(self, method: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == method]


# --------------------------------------------------------------------------- enums


class _EnumValue:
    def __init__(self, owner: str, name: str, value: int):
        self.owner, self.name, self.value = owner, name, value

    def __int__(self) -> int:
        return self.value

    def __index__(self) -> int:
        return self.value

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _EnumValue)
            and other.owner == self.owner
            and other.value == self.value
        )

    def __hash__(self) -> int:
        return hash((self.owner, self.value))

    def __repr__(self) -> str:
        return f"<{self.owner}.{self.name}: {self.value}>"

    __str__ = __repr__


def _enum(name: str, members: dict[str, int]) -> type:
    values = {k: _EnumValue(name, k, v) for k, v in members.items()}
    return type(name, (), {**values, "__members__": dict(values)})


# --------------------------------------------------------------------------- the module


def make_fake_tensorrt(version: str = "10.3") -> types.ModuleType:
    """A fresh fake ``tensorrt`` module for one generation; its recorder is ``module._fake``."""
    if version not in GENERATIONS:
        raise ValueError(f"version must be one of {GENERATIONS}")
    major = int(version.split(".", maxsplit=1)[0])
    rec = Recorder(version)
    mod: Any = types.ModuleType("tensorrt")
    mod.__version__ = {"8.6": "8.6.1.6", "10.3": "10.3.0.30", "11.0": "11.0.0.11"}[version]
    mod._fake = rec  # type: ignore[attr-defined]

    # ---- enums
    ndcf = {"EXPLICIT_BATCH": 0} if major < 11 else {}
    if major >= 10:
        ndcf["STRONGLY_TYPED"] = 1
    flags = {"GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5, "TF32": 6}
    if major < 11:
        flags |= {"FP16": 0, "INT8": 1, "OBEY_PRECISION_CONSTRAINTS": 8}
    severity = {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "VERBOSE": 4}
    dtypes = {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5, "INT64": 8}
    mod.NetworkDefinitionCreationFlag = _enum("NetworkDefinitionCreationFlag", ndcf)
    mod.BuilderFlag = _enum("BuilderFlag", flags)
    mod.MemoryPoolType = _enum(
        "MemoryPoolType", {"WORKSPACE": 0, "DLA_MANAGED_SRAM": 1, "DLA_LOCAL_DRAM": 2}
    )
    mod.DeviceType = _enum("DeviceType", {"GPU": 0, "DLA": 1})
    mod.ProfilingVerbosity = _enum(
        "ProfilingVerbosity", {"LAYER_NAMES_ONLY": 0, "NONE": 1, "DETAILED": 2}
    )
    mod.LayerInformationFormat = _enum("LayerInformationFormat", {"ONELINE": 0, "JSON": 1})
    mod.TensorIOMode = _enum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
    mod.DataType = _enum("DataType", dtypes)
    dt_by_onnx = {1: "FLOAT", 10: "HALF", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 2: "UINT8"}
    np_by_dt = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32}

    Severity = _enum("Severity", severity)  # noqa: N806 - mirrors trt.ILogger.Severity

    class ILogger:
        ERROR = Severity.ERROR  # type: ignore[attr-defined]
        WARNING = Severity.WARNING  # type: ignore[attr-defined]
        INFO = Severity.INFO  # type: ignore[attr-defined]
        VERBOSE = Severity.VERBOSE  # type: ignore[attr-defined]
        INTERNAL_ERROR = Severity.INTERNAL_ERROR  # type: ignore[attr-defined]

        def __init__(self) -> None:
            pass

        def log(self, severity: Any, msg: str) -> None:
            raise NotImplementedError

    ILogger.Severity = Severity  # type: ignore[attr-defined]

    class Logger(ILogger):
        def __init__(self, min_severity: Any = Severity.WARNING) -> None:  # type: ignore[attr-defined]
            super().__init__()
            self.min_severity = min_severity

        def log(self, severity: Any, msg: str) -> None:
            pass

    class Dims:
        def __init__(self, shape: Any = ()) -> None:
            self._d = [int(x) for x in shape]

        def __len__(self) -> int:
            return len(self._d)

        def __getitem__(self, index: int) -> int:
            return self._d[index]

        def __iter__(self) -> Any:
            return iter(self._d)

        def __eq__(self, other: object) -> bool:
            return list(self) == list(other) if isinstance(other, Dims | list | tuple) else False

        __hash__ = None  # type: ignore[assignment]  # as in tensorrt-stubs

        def __repr__(self) -> str:
            return f"Dims({self._d})"

    def _as_tuple(shape: Any) -> tuple[int, ...]:
        return tuple(int(x) for x in shape)

    class IHostMemory(bytes):
        @property
        def nbytes(self) -> int:
            return len(self)

    class ITensor:
        def __init__(self, name: str, shape: tuple[int, ...], dtype: Any) -> None:
            self.name, self.shape, self.dtype = name, Dims(shape), dtype

    class INetworkDefinition:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.inputs: list[ITensor] = []
            self.outputs: list[ITensor] = []
            self.layer_names: list[tuple[str, str]] = []

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        @property
        def num_outputs(self) -> int:
            return len(self.outputs)

        def get_input(self, index: int) -> ITensor:
            return self.inputs[index]

        def get_output(self, index: int) -> ITensor:
            return self.outputs[index]

        def get_flag(self, flag: Any) -> bool:
            return bool(self.flags & (1 << int(flag)))

        @property
        def strongly_typed(self) -> bool:
            return major >= 11 or bool(self.flags & (1 << ndcf.get("STRONGLY_TYPED", 99)))

    class ParserError:
        def __init__(self, desc: str, node: int = -1) -> None:
            self._desc, self._node = desc, node

        def desc(self) -> str:
            return self._desc

        def node(self) -> int:
            return self._node

        def code(self) -> str:
            return "UNSUPPORTED_NODE"

        def __str__(self) -> str:
            return f"In node {self._node} with name: fake and operator: Fake ({self._desc})"

    class OnnxParser:
        def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
            self.network, self.logger = network, logger
            self._errors: list[ParserError] = []
            rec.record("OnnxParser", network)

        @property
        def num_errors(self) -> int:
            return len(self._errors)

        def get_error(self, index: int) -> ParserError:
            return self._errors[index]

        def clear_errors(self) -> None:
            self._errors.clear()

        def parse(self, model: bytes, path: str | None = None) -> bool:
            raise AssertionError("the backend must use parse_from_file (external data)")

        def parse_from_file(self, model: str) -> bool:
            import onnx

            rec.record("parse_from_file", model)
            if major < 10 and not self.network.get_flag(
                mod.NetworkDefinitionCreationFlag.EXPLICIT_BATCH
            ):
                self._errors.append(ParserError("Network must have the explicit batch flag"))
                return False
            if rec.parse_errors:
                self._errors += [ParserError(e, i) for i, e in enumerate(rec.parse_errors)]
                return False
            try:
                proto = onnx.load(model, load_external_data=False)
            except Exception as exc:
                self._errors.append(ParserError(f"failed to load ONNX: {exc}"))
                return False
            graph = proto.graph
            dq_errors = dequantize_input_errors(graph, major)
            if dq_errors:
                self._errors += [ParserError(msg, node) for node, msg in dq_errors]
                return False
            init = {i.name for i in graph.initializer}

            def tensor(vi: Any) -> ITensor:
                tt = vi.type.tensor_type
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
                return ITensor(vi.name, dims, getattr(mod.DataType, dt_by_onnx[tt.elem_type]))

            self.network.inputs = [tensor(v) for v in graph.input if v.name not in init]
            self.network.outputs = [tensor(v) for v in graph.output]
            self.network.layer_names = [(n.name or n.op_type, n.op_type) for n in graph.node]
            return True

    class IOptimizationProfile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}
            rec.profiles.append(self)

        def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:
            shapes = (_as_tuple(min), _as_tuple(opt), _as_tuple(max))
            rec.record("set_shape", input, *shapes)
            self.shapes[input] = shapes

        def get_shape(self, input: str) -> list[Dims]:
            return [Dims(s) for s in self.shapes[input]]

        def __bool__(self) -> bool:
            return True

    class ITimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = bytes(data)

        def serialize(self) -> IHostMemory:
            rec.record("timing_cache.serialize", self.data)
            return IHostMemory(self.data)

        def combine(self, input_cache: ITimingCache, ignore_mismatch: bool) -> bool:
            self.data += input_cache.data
            return True

        def reset(self) -> bool:
            self.data = b""
            return True

    def _prop(name: str, attr: str) -> Any:
        """A recorded property, as pybind11 exposes IBuilderConfig's settings."""

        def get(self: Any) -> Any:
            return getattr(self, attr)

        def put(self: Any, value: Any) -> None:
            rec.record(name, getattr(value, "name", value))
            setattr(self, attr, value)

        return property(get, put)

    class IBuilderConfig:
        def __init__(self) -> None:
            self.flags_set: list[str] = []
            self.pool_limits: dict[str, int] = {}
            self.profiles: list[IOptimizationProfile] = []
            self._timing_cache: ITimingCache | None = None
            self._level = 3
            self._verbosity = mod.ProfilingVerbosity.LAYER_NAMES_ONLY
            self._device = mod.DeviceType.GPU
            self._dla_core = -1
            rec.configs.append(self)

        def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
            rec.record("set_memory_pool_limit", pool.name, pool_size)
            self.pool_limits[pool.name] = pool_size

        def get_memory_pool_limit(self, pool: Any) -> int:
            return self.pool_limits.get(pool.name, 1 << 40)

        def set_flag(self, flag: Any) -> None:
            rec.record("set_flag", flag.name)
            self.flags_set.append(flag.name)

        def get_flag(self, flag: Any) -> bool:
            return flag.name in self.flags_set

        def clear_flag(self, flag: Any) -> None:
            self.flags_set = [f for f in self.flags_set if f != flag.name]

        def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
            rec.record("add_optimization_profile", dict(profile.shapes))
            self.profiles.append(profile)
            return len(self.profiles) - 1

        @property
        def num_optimization_profiles(self) -> int:
            return len(self.profiles)

        def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
            rec.record("create_timing_cache", bytes(serialized_timing_cache))
            return ITimingCache(bytes(serialized_timing_cache))

        def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
            rec.record("set_timing_cache", cache.data, ignore_mismatch)
            if cache.data.startswith(b"OTHERGPU") and not ignore_mismatch:
                return False
            self._timing_cache = cache
            return True

        def get_timing_cache(self) -> ITimingCache:
            assert self._timing_cache is not None, "no timing cache was set"
            return self._timing_cache

        builder_optimization_level = _prop("builder_optimization_level", "_level")
        profiling_verbosity = _prop("profiling_verbosity", "_verbosity")
        default_device_type = _prop("default_device_type", "_device")
        DLA_core = _prop("DLA_core", "_dla_core")

    if major < 10:
        IBuilderConfig.max_workspace_size = 0  # type: ignore[attr-defined]  # deprecated, in 8.6
        IBuilderConfig.int8_calibrator = None  # type: ignore[attr-defined]

    def _engine_blob(network: INetworkDefinition, config: IBuilderConfig) -> bytes:
        def spec(t: ITensor) -> dict[str, Any]:
            return {"name": t.name, "shape": list(t.shape), "dtype": t.dtype.name}

        precision = "FP32"
        if "INT8" in config.flags_set:
            precision = "Int8"
        elif "FP16" in config.flags_set:
            precision = "FP16"
        profile = config.profiles[0].shapes if config.profiles else {}
        body = {
            "version": mod.__version__,
            "inputs": [spec(t) for t in network.inputs],
            "outputs": [spec(t) for t in network.outputs],
            "layers": [[name, op, precision] for name, op in network.layer_names],
            "profile": {k: [list(s) for s in v] for k, v in profile.items()},
            "verbosity": config.profiling_verbosity.name,
            "dla_core": config.DLA_core,
        }
        return MAGIC + json.dumps(body).encode()

    def _dynamic_profile(config: IBuilderConfig) -> str:
        """The error a DLA build with a dynamic optimization profile gets; "" if static."""
        for profile in config.profiles:
            for name, (lo, mid, hi) in profile.shapes.items():
                if not lo == mid == hi:
                    return (
                        f"DLA does not support dynamic dimensions: input '{name}' has min {lo}, "
                        f"opt {mid}, max {hi} in its optimization profile; they must be equal"
                    )
        return ""

    class Builder:
        def __init__(self, logger: ILogger) -> None:
            self.logger = logger
            self._max_threads = 0
            rec.record("Builder", logger)

        @property
        def max_threads(self) -> int:
            return self._max_threads

        @max_threads.setter
        def max_threads(self, value: int) -> None:
            rec.record("max_threads", value)
            self._max_threads = value

        def create_network(self, flags: int = 0) -> INetworkDefinition:
            names = [k for k, v in ndcf.items() if flags & (1 << v)]
            unknown = flags & ~sum(1 << v for v in ndcf.values())
            if unknown:
                raise TypeError(f"unknown NetworkDefinitionCreationFlag bits {unknown:#x}")
            rec.record("create_network", tuple(names))
            net = INetworkDefinition(flags)
            rec.networks.append(net)
            return net

        def create_builder_config(self) -> IBuilderConfig:
            return IBuilderConfig()

        def create_optimization_profile(self) -> IOptimizationProfile:
            rec.record("create_optimization_profile")
            return IOptimizationProfile()

        def build_serialized_network(
            self, network: INetworkDefinition, config: IBuilderConfig
        ) -> IHostMemory | None:
            rec.record("build_serialized_network")
            err = mod.ILogger.ERROR
            if rec.build_error:
                self.logger.log(err, rec.build_error)
                return None
            if network.strongly_typed and {"FP16", "INT8"} & set(config.flags_set):
                self.logger.log(err, "precision flags are not allowed on a strongly typed network")
                return None
            dynamic = [t.name for t in network.inputs if -1 in list(t.shape)]
            covered = set(config.profiles[0].shapes) if config.profiles else set()
            if set(dynamic) - covered:
                self.logger.log(err, f"Network has dynamic inputs {dynamic} but no profile")
                return None
            if config.default_device_type == mod.DeviceType.DLA and not (
                network.strongly_typed or {"FP16", "INT8"} & set(config.flags_set)
            ):
                self.logger.log(err, "DLA requires FP16 or INT8")
                return None
            if config.default_device_type == mod.DeviceType.DLA and _dynamic_profile(config):
                # TensorRT docs, "DLA Supported Layers and Restrictions": DLA does not support
                # dynamic dimensions, so the profile's min, max and opt must be equal.
                self.logger.log(err, _dynamic_profile(config))
                return None
            if config._timing_cache is not None:
                config._timing_cache.data += b"|tactics"
            return IHostMemory(_engine_blob(network, config))

        @property
        def platform_has_fast_fp16(self) -> bool:
            return True

        @property
        def num_DLA_cores(self) -> int:  # noqa: N802
            return 2

    if major < 10:

        def build_engine(self: Any, network: Any, config: Any) -> Any:
            raise AssertionError("build_engine is deprecated; use build_serialized_network")

        Builder.build_engine = build_engine  # type: ignore[attr-defined]
        Builder.max_batch_size = 1  # type: ignore[attr-defined]

    class EngineInspector:
        def __init__(self, engine: ICudaEngine) -> None:
            self.engine = engine
            self.execution_context = None

        def get_engine_information(self, format: Any) -> str:
            rec.record("get_engine_information", format.name)
            body = self.engine.body
            if body["verbosity"] != "DETAILED":
                return json.dumps({"Layers": [layer[0] for layer in body["layers"]]})

            def tensor(name: str, precision: str) -> dict[str, Any]:
                fmt = f"Row major linear {precision} format"
                if major >= 11:
                    return {"Name": name, "Dimensions": [-1], "Format": fmt, "DataType": precision}
                return {"Name": name, "Dimensions": [-1], "Format/Datatype": fmt}

            layers = [
                {
                    "Name": name,
                    "LayerType": "CaskConvolution" if op == "Conv" else op,
                    "Inputs": [tensor(f"{name}_in", precision)],
                    "Outputs": [tensor(f"{name}_out", precision)],
                    "TacticName": "fake_tactic",
                }
                for name, op, precision in body["layers"]
            ]
            io_key = "I/O Tensors" if major >= 11 else "Bindings"
            names = [t["name"] for t in body["inputs"] + body["outputs"]]
            return json.dumps({"Layers": layers, io_key: names})

        def get_layer_information(self, layer_index: int, format: Any) -> str:
            return json.dumps(
                json.loads(self.get_engine_information(format))["Layers"][layer_index]
            )

    class IProfiler:
        def __init__(self) -> None:
            pass

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            raise NotImplementedError

    class IExecutionContext:
        def __init__(self, engine: ICudaEngine) -> None:
            self.engine = engine
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.addresses: dict[str, int] = {}
            self._profiler: IProfiler | None = None
            self._emits = True
            self._pending: list[tuple[str, float]] = []

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

        def _profile(self) -> None:
            if self._profiler is None:
                return
            self._pending = [
                (name, rec.layer_ms.get(name, 0.25 * (i + 1)))
                for i, (name, _op, _precision) in enumerate(self.engine.body["layers"])
            ]
            if self._emits:
                self.report_to_profiler()

        def set_input_shape(self, name: str, shape: Any) -> bool:
            shape = _as_tuple(shape)
            rec.record("set_input_shape", name, shape)
            lo, _opt, hi = self.engine.profile_for(name, shape)
            if len(shape) != len(lo) or any(
                not (a <= s <= b) for s, a, b in zip(shape, lo, hi, strict=True)
            ):
                return False
            self.shapes[name] = shape
            return True

        def get_tensor_shape(self, name: str) -> Dims:
            if name in self.shapes:
                return Dims(self.shapes[name])
            first = self.engine.body["inputs"][0]["name"]
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

        def execute_async_v3(self, stream_handle: int) -> bool:
            rec.record("execute_async_v3", stream_handle)
            return self._run(self.addresses)

        def _run(self, addresses: dict[str, int]) -> bool:
            first = self.engine.body["inputs"][0]
            shape = self.shapes[first["name"]]
            dtype = np_by_dt[first["dtype"]]
            count = int(np.prod(shape))
            src = rec.memory.block(addresses[first["name"]])
            x = np.frombuffer(bytes(src[: count * np.dtype(dtype).itemsize]), dtype=dtype)
            y = np.maximum(x, 0).astype(np.float32).tobytes()
            for out in self.engine.body["outputs"]:
                dst = rec.memory.block(addresses[out["name"]])
                dst[: len(y)] = y
            self._profile()
            return True

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

        def get_tensor_shape(self, name: str) -> Dims:
            return Dims(self._find(name)[0]["shape"])

        def get_tensor_dtype(self, name: str) -> Any:
            return getattr(mod.DataType, self._find(name)[0]["dtype"])

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[Dims]:
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

        def create_execution_context(self) -> IExecutionContext:
            rec.record("create_execution_context")
            return IExecutionContext(self)

        def create_engine_inspector(self) -> EngineInspector:
            return EngineInspector(self)

        def serialize(self) -> IHostMemory:
            return IHostMemory(MAGIC + json.dumps(self.body).encode())

    if major < 10:
        # 8.6 still has the bindings API beside the name-based one.
        def num_bindings(self: ICudaEngine) -> int:
            return len(self._io)

        def binding_is_input(self: ICudaEngine, index: int) -> bool:
            return self._io[index][1] == mod.TensorIOMode.INPUT

        def get_binding_name(self: ICudaEngine, index: int) -> str:
            return self._io[index][0]["name"]

        def get_binding_shape(self: ICudaEngine, index: int) -> Dims:
            return Dims(self._io[index][0]["shape"])

        def get_binding_dtype(self: ICudaEngine, index: int) -> Any:
            return getattr(mod.DataType, self._io[index][0]["dtype"])

        ICudaEngine.num_bindings = property(num_bindings)  # type: ignore[attr-defined]
        ICudaEngine.binding_is_input = binding_is_input  # type: ignore[attr-defined]
        ICudaEngine.get_binding_name = get_binding_name  # type: ignore[attr-defined]
        ICudaEngine.get_binding_shape = get_binding_shape  # type: ignore[attr-defined]
        ICudaEngine.get_binding_dtype = get_binding_dtype  # type: ignore[attr-defined]
        ICudaEngine.max_batch_size = 1  # type: ignore[attr-defined]

        def set_binding_shape(self: IExecutionContext, binding: int, shape: Any) -> bool:
            return self.set_input_shape(self.engine.get_tensor_name(binding), shape)

        def get_binding_shape_ctx(self: IExecutionContext, binding: int) -> Dims:
            return self.get_tensor_shape(self.engine.get_tensor_name(binding))

        def execute_async_v2(
            self: IExecutionContext, bindings: list[int], stream_handle: int
        ) -> bool:
            rec.record("execute_async_v2", list(bindings), stream_handle)
            names = [self.engine.get_tensor_name(i) for i in range(len(bindings))]
            return self._run(dict(zip(names, bindings, strict=True)))

        IExecutionContext.set_binding_shape = set_binding_shape  # type: ignore[attr-defined]
        IExecutionContext.get_binding_shape = get_binding_shape_ctx  # type: ignore[attr-defined]
        IExecutionContext.execute_async_v2 = execute_async_v2  # type: ignore[attr-defined]

    class Runtime:
        def __init__(self, logger: ILogger) -> None:
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
        return np_by_dt[trt_type.name]

    for obj in (
        ILogger, Logger, Dims, IHostMemory, ITensor, INetworkDefinition, ParserError, OnnxParser,
        IOptimizationProfile, ITimingCache, IBuilderConfig, Builder, EngineInspector,
        IProfiler, IExecutionContext, ICudaEngine, Runtime, volume, nptype,
    ):  # fmt: skip
        setattr(mod, obj.__name__, obj)
    return mod


def make_stub_namespace() -> types.ModuleType:
    """What ``import tensorrt`` yields where only tensorrt-stubs is installed: an empty namespace
    package (a ``tensorrt/`` directory holding ``__init__.pyi``)."""
    mod = types.ModuleType("tensorrt")
    mod.__path__ = ["/site-packages/tensorrt"]  # type: ignore[attr-defined]
    mod.__file__ = None
    return mod


# --------------------------------------------------------------------------- fake CUDA layer


class FakeCuda:
    """The API of :class:`agent.backends.tensorrt.runner.CudaLayer` over :class:`DeviceMemory`,
    recording calls."""

    def __init__(self, memory: DeviceMemory) -> None:
        self.memory = memory
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

        self.Stream = Stream
        self.DeviceBuffer = DeviceBuffer
        self.PinnedBuffer = PinnedBuffer

    @staticmethod
    def _ptr(buf: Any) -> int:
        return buf if isinstance(buf, int) else buf.ptr

    def copy_htod_async(
        self, dst: Any, src: np.ndarray, stream: Any, nbytes: int | None = None
    ) -> None:
        count = src.nbytes if nbytes is None else nbytes
        self.calls.append(("htod", count, stream.handle))
        self.memory.block(self._ptr(dst))[:count] = src.tobytes()[:count]

    def copy_dtoh_async(
        self, dst: np.ndarray, src: Any, stream: Any, nbytes: int | None = None
    ) -> None:
        count = dst.nbytes if nbytes is None else nbytes
        self.calls.append(("dtoh", count, stream.handle))
        dst.reshape(-1).view(np.uint8)[:count] = np.frombuffer(
            bytes(self.memory.block(self._ptr(src))[:count]), dtype=np.uint8
        )


def onnx_relu_model(
    path: Path, *, input_name: str = "images", channels: int = 3, layers: int = 1
) -> Path:
    """A tiny ONNX model ``Relu(images[N, C, 4, 4])`` with a dynamic batch, for the fake; with
    ``layers > 1`` a chain of Relu nodes named ``relu``, ``relu_1``, ..."""
    from onnx import TensorProto, helper, save

    x = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", channels, 4, 4])
    y = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", channels, 4, 4])
    names = [input_name] + [f"h{i}" for i in range(1, layers)] + ["scores"]
    nodes = [
        helper.make_node("Relu", [names[i]], [names[i + 1]], name="relu" + (f"_{i}" if i else ""))
        for i in range(layers)
    ]
    graph = helper.make_graph(nodes, "g", [x], [y])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def onnx_dq_model(path: Path, *, quantized: str = "int8") -> Path:
    """``Relu(images) + DequantizeLinear(b_q)`` with ``b_q`` a constant of ``quantized`` type
    ("int8", or "int32" as ORT writes a quantized bias): the fake parser's DequantizeLinear rule."""
    from onnx import TensorProto, helper, numpy_helper, save

    dtype = {"int8": np.int8, "int32": np.int32}[quantized]
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 4, 4])
    y = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3, 4, 4])
    inits = [
        numpy_helper.from_array(np.ones((3, 1, 1), dtype), "b_q"),
        numpy_helper.from_array(np.array(0.5, np.float32), "b_scale"),
    ]
    nodes = [
        helper.make_node("Relu", ["images"], ["r"], name="relu"),
        helper.make_node("DequantizeLinear", ["b_q", "b_scale"], ["b"], name="b_DequantizeLinear"),
        helper.make_node("Add", ["r", "b"], ["scores"], name="add"),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=inits)
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def build_request(tmp_path: Path, **overrides: Any) -> BuildRequest:
    """A build of ``tmp_path/model.onnx`` (:func:`onnx_relu_model`) into ``tmp_path/artifact``:
    int8, :data:`SHAPES`, 256 MiB workspace, optimization level 2; ``overrides`` replace fields."""
    fields: dict[str, Any] = {
        "onnx_path": tmp_path / "model.onnx",
        "out_dir": tmp_path / "artifact",
        "precision": "int8",
        "shapes": SHAPES,
        "workspace_mib": 256,
        "optimization_level": 2,
        "timing_cache": None,
    }
    fields.update(overrides)
    return BuildRequest(**fields)
