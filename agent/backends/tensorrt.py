"""TensorRT backend: ONNX (float or explicit Q/DQ INT8) → serialized engine → runner.

This is the only module that imports ``tensorrt``, and it does so inside functions, never at
module import, so the agent imports everywhere. One code path serves TensorRT 8.6 (JetPack 5),
10.x (JetPack 6 ships 10.3) and 11.x. Which API generation is present is decided by *capability*
(``hasattr`` on the module's classes), never by parsing ``tensorrt.__version__``; see
:func:`detect_capabilities` for each rule and the documentation it rests on.

Decisions are made by the pure function :func:`plan_build` (tested without any TensorRT module)
and applied by :data:`BACKEND`'s ``build``:

==================  ==============  ============================  ========================
decision            8.6             10.x                          11.x
==================  ==============  ============================  ========================
network flags       EXPLICIT_BATCH  none (EXPLICIT_BATCH ignored) STRONGLY_TYPED
int8 (Q/DQ graph)   INT8 + FP16     INT8 + FP16                   none (types from Q/DQ)
fp16                FP16            FP16                          none (ONNX must be fp16)
fp32                none            none                          none
I/O at run time     tensor names    tensor names                  tensor names
==================  ==============  ============================  ========================

Workspace (``set_memory_pool_limit(WORKSPACE)``), one optimization profile, the timing cache,
``builder_optimization_level``, DLA and ``ProfilingVerbosity.DETAILED`` are the same on all three.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

import numpy as np
from numpy.typing import NDArray

from agent.backends.base import (
    BuildRequest,
    BuildResult,
    DeviceTensor,
    InputShapes,
    ProgressFn,
    RunnerBase,
    TensorSpec,
    no_progress,
    summarize_layer_times,
)
from agent.core.errors import ArtifactError, BackendUnavailable, BuildFailed
from agent.core.fsutil import atomic_write_bytes

if TYPE_CHECKING:
    import tensorrt as trt_types

INSTALL_FIX = (
    "install TensorRT from JetPack: sudo apt install python3-libnvinfer; "
    "use a venv with --system-site-packages"
)
ENGINE_FILE = "engine.plan"
MIB = 1024 * 1024


# --------------------------------------------------------------------------- module + capabilities


def load_trt() -> ModuleType:
    """Import ``tensorrt`` or raise :class:`BackendUnavailable` saying how to install it.

    ``tensorrt-stubs`` installs a ``tensorrt/`` directory holding only ``__init__.pyi``: Python
    imports it as an empty namespace package, so a module without ``Builder`` is "not installed".
    """
    try:
        module = importlib.import_module("tensorrt")
    except ImportError as exc:
        raise BackendUnavailable(f"cannot import tensorrt ({exc})", fix=INSTALL_FIX) from exc
    if not hasattr(module, "Builder"):
        raise BackendUnavailable(
            "the importable 'tensorrt' has no Builder (it is the type-stubs package, "
            f"found at {list(getattr(module, '__path__', []))}), not TensorRT",
            fix=INSTALL_FIX,
        )
    return module


@dataclass(frozen=True)
class Capabilities:
    """What the importable TensorRT offers (``hasattr`` rules in :func:`detect_capabilities`)."""

    version: str = "unknown"
    explicit_batch_flag_needed: bool = False
    strongly_typed_available: bool = False
    int8_fp16_flags: bool = True
    memory_pool_api: bool = True
    io_tensors_api: bool = True
    bindings_api: bool = False
    builder_optimization_level: bool = True
    engine_inspector: bool = True
    timing_cache: bool = True

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def detect_capabilities(trt: ModuleType) -> Capabilities:
    """Capability rules (all ``hasattr``; pybind11 properties are class attributes):

    * ``explicit_batch_flag_needed``: ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH`` exists
      *and* implicit batch still exists, recognised by ``Builder.max_batch_size`` (the implicit
      batch knob) or ``Builder.build_engine``. Both were removed in 10.0, where the docs say
      EXPLICIT_BATCH is "[DEPRECATED] Ignored because networks are always explicit batch"; 11.x
      drops the flag. So: 8.6 → needed, 10.x → not set, 11.x → absent.
    * ``strongly_typed_available``: ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` (9.x+).
    * ``int8_fp16_flags``: ``BuilderFlag.INT8`` and ``BuilderFlag.FP16`` (removed in 11.0 with all
      weak typing; precision then lives in the graph).
    * ``memory_pool_api``: ``IBuilderConfig.set_memory_pool_limit`` + ``MemoryPoolType`` (8.4+;
      ``max_workspace_size`` is gone in 10).
    * ``io_tensors_api``: ``ICudaEngine.num_io_tensors`` + ``IExecutionContext.execute_async_v3``
      (8.5+); preferred whenever present. ``bindings_api``: ``ICudaEngine.num_bindings`` (≤ 8.6,
      removed in 10), used only when the name-based API is missing.
    * ``builder_optimization_level``: ``IBuilderConfig.builder_optimization_level`` (8.6+).
    * ``engine_inspector``: ``ICudaEngine.create_engine_inspector`` (8.2+).
    * ``timing_cache``: ``IBuilderConfig.create_timing_cache`` (8.0+).
    """
    ndcf = getattr(trt, "NetworkDefinitionCreationFlag", None)
    builder = getattr(trt, "Builder", None)
    flag = getattr(trt, "BuilderFlag", None)
    config = getattr(trt, "IBuilderConfig", None)
    engine = getattr(trt, "ICudaEngine", None)
    context = getattr(trt, "IExecutionContext", None)
    implicit_batch_exists = hasattr(builder, "max_batch_size") or hasattr(builder, "build_engine")
    return Capabilities(
        version=str(getattr(trt, "__version__", "unknown")),
        explicit_batch_flag_needed=hasattr(ndcf, "EXPLICIT_BATCH") and implicit_batch_exists,
        strongly_typed_available=hasattr(ndcf, "STRONGLY_TYPED"),
        int8_fp16_flags=hasattr(flag, "INT8") and hasattr(flag, "FP16"),
        memory_pool_api=hasattr(config, "set_memory_pool_limit") and hasattr(trt, "MemoryPoolType"),
        io_tensors_api=hasattr(engine, "num_io_tensors") and hasattr(context, "execute_async_v3"),
        bindings_api=hasattr(engine, "num_bindings"),
        builder_optimization_level=hasattr(config, "builder_optimization_level"),
        engine_inspector=hasattr(engine, "create_engine_inspector"),
        timing_cache=hasattr(config, "create_timing_cache"),
    )


# --------------------------------------------------------------------------- the pure build plan


@dataclass(frozen=True)
class BuildPlan:
    """Every TensorRT decision for one build, made without touching TensorRT."""

    network_flags: tuple[str, ...]
    builder_flags: tuple[str, ...]
    workspace_bytes: int
    optimization_level: int | None
    profile: Mapping[str, InputShapes]
    device_type: Literal["GPU", "DLA"]
    dla_core: int | None
    timing_cache: Path | None
    strongly_typed: bool
    profiling_verbosity: str = "DETAILED"
    notes: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "network_flags": list(self.network_flags),
            "builder_flags": list(self.builder_flags),
            "workspace_bytes": self.workspace_bytes,
            "optimization_level": self.optimization_level,
            "profile": {name: s.to_json() for name, s in self.profile.items()},
            "device_type": self.device_type,
            "dla_core": self.dla_core,
            "timing_cache": str(self.timing_cache) if self.timing_cache else None,
            "strongly_typed": self.strongly_typed,
            "profiling_verbosity": self.profiling_verbosity,
            "notes": list(self.notes),
        }


def _check_shapes(name: str, s: InputShapes) -> None:
    if not (len(s.min) == len(s.opt) == len(s.max)):
        raise BuildFailed(
            f"input '{name}': min/opt/max ranks differ ({s.min}, {s.opt}, {s.max})",
            fix="give min, opt and max the same number of dimensions in the device profile",
        )
    for lo, mid, hi in zip(s.min, s.opt, s.max, strict=True):
        if not (0 < lo <= mid <= hi):
            raise BuildFailed(
                f"input '{name}': shapes must satisfy 0 < min <= opt <= max per dimension "
                f"(min={s.min}, opt={s.opt}, max={s.max})",
                fix="fix the optimization-profile shapes in the device profile",
            )


def plan_build(request: BuildRequest, caps: Capabilities) -> BuildPlan:
    """Decide network flags, builder flags, limits, profile and device for ``request``.

    ``precision`` follows the architecture's contract: ``int8`` means the ONNX already carries
    explicit Q/DQ nodes (the engine module quantizes before building); ``fp16`` on a strongly
    typed TensorRT (11.x) means the ONNX is already fp16 (the engine module converts it).
    """
    notes: list[str] = []
    network_flags: list[str] = []
    builder_flags: list[str] = []

    if caps.explicit_batch_flag_needed:
        network_flags.append("EXPLICIT_BATCH")

    strongly_typed = not caps.int8_fp16_flags
    if strongly_typed:
        # 11.x: every network is strongly typed; the flag is accepted (and ignored) there, so it
        # is set where it exists, to state the intent, and skipped should a release drop it.
        if caps.strongly_typed_available:
            network_flags.append("STRONGLY_TYPED")
        if request.precision == "int8":
            notes.append(
                "strongly typed: INT8 comes from the Q/DQ nodes; layers outside them run in the "
                "graph's float type"
            )
        elif request.precision == "fp16":
            notes.append(
                "strongly typed: fp16 requires an fp16 ONNX (the engine module converts it); "
                "no FP16 builder flag exists"
            )
    elif request.precision == "int8":
        # Explicit quantization still needs INT8 on ≤ 10.x; FP16 lets the layers that stay
        # outside Q/DQ pairs run in half precision instead of fp32.
        builder_flags += ["INT8", "FP16"]
    elif request.precision == "fp16":
        builder_flags.append("FP16")

    device_type: Literal["GPU", "DLA"] = "GPU"
    if request.dla_core is not None:
        if request.precision == "fp32":
            raise BuildFailed(
                f"DLA core {request.dla_core} was requested with fp32, but the DLA runs only "
                "INT8 and FP16",
                fix="build int8 or fp16 for the DLA, or set build.dla.enabled: false",
            )
        if request.dla_core < 0:
            raise BuildFailed(
                f"DLA core {request.dla_core} is negative", fix="set build.dla.core to 0 or 1"
            )
        device_type = "DLA"
        if request.gpu_fallback:
            builder_flags.append("GPU_FALLBACK")
        else:
            notes.append("DLA without GPU fallback: the build fails if a layer cannot run on DLA")

    if request.workspace_mib <= 0:
        raise BuildFailed(
            f"workspace_mib must be positive, got {request.workspace_mib}",
            fix="set build.workspace_mib in the device profile",
        )

    level: int | None = None
    if not 0 <= request.optimization_level <= 5:
        raise BuildFailed(
            f"optimization_level {request.optimization_level} is outside 0..5",
            fix="set build.optimization_level between 0 and 5",
        )
    if caps.builder_optimization_level:
        level = request.optimization_level
    else:
        notes.append("builder_optimization_level is not available; TensorRT's default is used")

    profile: dict[str, InputShapes] = {}
    for name, shapes in request.shapes.items():
        _check_shapes(name, shapes)
        if request.static_shapes:
            profile[name] = InputShapes(shapes.opt, shapes.opt, shapes.opt)
        else:
            profile[name] = shapes

    cache: Path | None = None
    if request.timing_cache is not None:
        if caps.timing_cache:
            cache = request.timing_cache
            if level == 0:
                notes.append("optimization level 0 does not consult the timing cache")
        else:
            notes.append("this TensorRT has no timing-cache API; the cache is not used")

    return BuildPlan(
        network_flags=tuple(network_flags),
        builder_flags=tuple(builder_flags),
        workspace_bytes=request.workspace_mib * MIB,
        optimization_level=level,
        profile=profile,
        device_type=device_type,
        dla_core=request.dla_core,
        timing_cache=cache,
        strongly_typed=strongly_typed,
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------- helpers


_NP_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "UINT8": "uint8",
}


def _np_dtype_name(dtype: object) -> str:
    """numpy name of a ``trt.DataType`` (BF16/FP8/INT4 have no numpy type: lower-case name)."""
    name = str(getattr(dtype, "name", dtype)).rsplit(".", 1)[-1].upper()
    return _NP_DTYPES.get(name, name.lower())


class _DimsLike(Protocol):
    def __len__(self) -> int: ...
    def __getitem__(self, index: int, /) -> int: ...


def _dims(shape: _DimsLike) -> tuple[int, ...]:
    """``trt.Dims`` → tuple (the stubs declare ``__len__``/``__getitem__``, not ``__iter__``)."""
    return tuple(int(shape[i]) for i in range(len(shape)))


# tensorrt-stubs 10.13 defect: its module declares ``bool`` as a ``DataType`` constant, which
# shadows builtins.bool in its own annotations, and it names ``typing_extensions.Buffer`` without
# importing it. Members returning ``bool`` or taking a buffer therefore read as partially Unknown;
# those few calls carry ``pyright: ignore[reportUnknownMemberType]`` and wrap results in bool().


def _is_none(value: object) -> bool:
    """TensorRT returns None on failure where the stubs promise an object (build, deserialize)."""
    return value is None


class _Log(Protocol):
    errors: list[str]
    warnings: list[str]


def _make_logger() -> trt_types.ILogger:
    """A ``trt.ILogger`` that keeps warnings and errors, so a failed build can show them."""
    import tensorrt as trt

    error_level = int(trt.ILogger.ERROR)
    warning_level = int(trt.ILogger.WARNING)

    class CollectingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.warnings: list[str] = []

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            level = int(severity)
            if level <= error_level:
                self.errors.append(str(msg))
            elif level == warning_level:
                self.warnings.append(str(msg))

    return CollectingLogger()


@dataclass
class _LayerTimes:
    """What a profiler from :func:`_make_profiler` collects: (layer name, ms) per layer run."""

    recording: bool = True
    times: list[tuple[str, float]] = field(default_factory=list[tuple[str, float]])


def _make_profiler(sink: _LayerTimes) -> trt_types.IProfiler:
    """A ``trt.IProfiler`` whose ``report_layer_time`` appends to ``sink`` while it records."""
    import tensorrt as trt

    class CollectingProfiler(trt.IProfiler):
        def __init__(self) -> None:
            trt.IProfiler.__init__(self)

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            if sink.recording:
                sink.times.append((str(layer_name), float(ms)))

    return CollectingProfiler()


def _messages(logger: trt_types.ILogger) -> _Log:
    return logger  # type: ignore[return-value]  # CollectingLogger from _make_logger


def _looks_like_oom(messages: Sequence[str]) -> bool:
    text = " ".join(messages).lower()
    keys = ("out of memory", "outofmemory", "insufficient memory", "requested amount of gpu")
    return any(key in text for key in keys)


# --------------------------------------------------------------------------- build


def _parse_onnx(
    network: trt_types.INetworkDefinition, logger: trt_types.ILogger, onnx_path: Path
) -> trt_types.OnnxParser:
    import tensorrt as trt

    parser = trt.OnnxParser(network, logger)
    # parse_from_file (not parse(bytes)) so external-data initializers resolve next to the file.
    parsed = bool(parser.parse_from_file(str(onnx_path)))  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType, reportUnknownVariableType]
    if not parsed:
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        listing = "; ".join(errors) or "no parser message"
        raise BuildFailed(
            f"TensorRT's ONNX parser rejected the model: {listing}",
            fix="check the opset and operators against TensorRT's ONNX support matrix; "
            "re-export the model or keep unsupported nodes out of the graph",
            path=onnx_path,
        )
    return parser


def _network_inputs(network: trt_types.INetworkDefinition) -> list[tuple[str, tuple[int, ...]]]:
    result: list[tuple[str, tuple[int, ...]]] = []
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        result.append((tensor.name, _dims(tensor.shape)))
    return result


def _apply_profile(
    builder: trt_types.Builder,
    network: trt_types.INetworkDefinition,
    config: trt_types.IBuilderConfig,
    plan: BuildPlan,
    onnx_path: Path,
) -> None:
    """One optimization profile: ``set_shape(min, opt, max)`` for each dynamic input."""
    import tensorrt as trt

    inputs = _network_inputs(network)
    names = {name for name, _ in inputs}
    unknown = sorted(set(plan.profile) - names)
    if unknown:
        raise BuildFailed(
            f"shapes are given for inputs {unknown} that the model does not have "
            f"(model inputs: {sorted(names)})",
            fix="use the ONNX input names in the device profile's shapes",
            path=onnx_path,
        )
    profile: trt_types.IOptimizationProfile | None = None
    for name, shape in inputs:
        wanted = plan.profile.get(name)
        if all(d >= 0 for d in shape):
            if wanted is not None and wanted.opt != shape:
                raise BuildFailed(
                    f"input '{name}' is static {shape} but the profile asks for {wanted.opt}",
                    fix="match the profile to the model, or export the ONNX with dynamic axes",
                    path=onnx_path,
                )
            continue
        if wanted is None:
            raise BuildFailed(
                f"input '{name}' has dynamic shape {shape} and no min/opt/max in the profile",
                fix=f"add shapes for '{name}' to the device profile",
                path=onnx_path,
            )
        if len(wanted.opt) != len(shape) or not all(
            d < 0 or lo == hi == d for d, lo, hi in zip(shape, wanted.min, wanted.max, strict=True)
        ):
            raise BuildFailed(
                f"input '{name}' {shape}: profile min={wanted.min} max={wanted.max} does not "
                "fit its fixed dimensions",
                fix="keep fixed dimensions equal to the model's in min, opt and max",
                path=onnx_path,
            )
        if profile is None:
            profile = builder.create_optimization_profile()
        profile.set_shape(
            name, trt.Dims(list(wanted.min)), trt.Dims(list(wanted.opt)), trt.Dims(list(wanted.max))
        )
    if profile is not None:
        config.add_optimization_profile(profile)


def _configure(config: trt_types.IBuilderConfig, caps: Capabilities, plan: BuildPlan) -> None:
    import tensorrt as trt

    if not caps.memory_pool_api:
        raise BackendUnavailable(
            f"TensorRT {caps.version} lacks set_memory_pool_limit",
            fix="install TensorRT 8.6 or newer from JetPack",
        )
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)
    for name in plan.builder_flags:
        # By name: INT8/FP16 exist only where caps.int8_fp16_flags (≤ 10.x); plan_build checked.
        flag: trt_types.BuilderFlag = getattr(trt.BuilderFlag, name)
        config.set_flag(flag)
    if plan.optimization_level is not None:
        config.builder_optimization_level = plan.optimization_level
    # DETAILED keeps layer names, precisions and tactics in the plan for the engine inspector.
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if plan.device_type == "DLA":
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core or 0


def _attach_timing_cache(
    config: trt_types.IBuilderConfig, path: Path, progress: ProgressFn
) -> bool:
    """Attach the timing cache read from ``path`` (or an empty one). Returns whether it loaded."""
    data = b""
    if path.is_file():
        data = path.read_bytes()
    loaded = False
    if data:
        try:
            cache = config.create_timing_cache(data)  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType, reportUnknownVariableType]
            loaded = bool(config.set_timing_cache(cache, ignore_mismatch=False))  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType, reportUnknownVariableType]
        except Exception:  # a damaged cache file must never block a build
            loaded = False
        if not loaded:
            progress("build", 0.05, f"timing cache {path} is unusable here; starting a new one")
    if not loaded:
        empty = config.create_timing_cache(b"")  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType, reportUnknownVariableType]
        config.set_timing_cache(empty, ignore_mismatch=False)  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType, reportUnknownVariableType]
    return loaded


def _io_specs(
    engine: trt_types.ICudaEngine, caps: Capabilities
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    import tensorrt as trt

    inputs: list[TensorSpec] = []
    outputs: list[TensorSpec] = []
    if caps.io_tensors_api:
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            spec = TensorSpec(
                name,
                _dims(engine.get_tensor_shape(name)),
                _np_dtype_name(engine.get_tensor_dtype(name)),
            )
            is_input = engine.get_tensor_mode(name).name == trt.TensorIOMode.INPUT.name
            (inputs if is_input else outputs).append(spec)
    elif caps.bindings_api:
        # TensorRT < 8.5 only (8.6 has the name-based API). getattr: tensorrt-stubs 10.x no
        # longer declares the bindings API, which TensorRT 10 removed.
        legacy: Any = engine
        for i in range(int(legacy.num_bindings)):
            spec = TensorSpec(
                str(legacy.get_binding_name(i)),
                _dims(legacy.get_binding_shape(i)),
                _np_dtype_name(legacy.get_binding_dtype(i)),
            )
            (inputs if legacy.binding_is_input(i) else outputs).append(spec)
    else:
        raise BackendUnavailable(
            f"TensorRT {caps.version} has neither the tensor nor the bindings I/O API",
            fix="install TensorRT 8.6 or newer from JetPack",
        )
    return inputs, outputs


def _deserialize(
    logger: trt_types.ILogger, data: bytes, path: Path, dla_core: int | None = None
) -> tuple[trt_types.Runtime, trt_types.ICudaEngine]:
    """Runtime + engine from the plan bytes; ``dla_core``: the DLA core to load it on."""
    import tensorrt as trt

    runtime = trt.Runtime(logger)
    if dla_core is not None:
        runtime.DLA_core = dla_core
    engine = runtime.deserialize_cuda_engine(data)  # pyright: ignore[reportUnknownMemberType]
    if _is_none(engine):
        raise ArtifactError(
            "TensorRT could not deserialize the engine (built by another TensorRT version, for "
            "another GPU, or the file is damaged)",
            fix="delete the cached engine and rebuild it on this device",
            path=path,
        )
    return runtime, engine


def build_engine(request: BuildRequest, progress: ProgressFn = no_progress) -> BuildResult:
    """Build ``request.onnx_path`` into ``request.out_dir/engine.plan``."""
    caps = detect_capabilities(load_trt())
    import tensorrt as trt

    plan = plan_build(request, caps)
    if not request.onnx_path.is_file():
        raise BuildFailed(
            "ONNX file not found", fix="check the model bundle's onnx path", path=request.onnx_path
        )
    progress("build", 0.0, f"TensorRT {caps.version}: parsing {request.onnx_path.name}")
    logger = _make_logger()
    builder = trt.Builder(logger)
    if request.threads > 0 and hasattr(builder, "max_threads"):
        builder.max_threads = request.threads
    flags = 0
    for name in plan.network_flags:
        # By name: EXPLICIT_BATCH is gone in 11.x; plan_build only lists flags caps found.
        flag: trt_types.NetworkDefinitionCreationFlag = getattr(
            trt.NetworkDefinitionCreationFlag, name
        )
        flags |= 1 << int(flag)
    network = builder.create_network(flags)
    parser = _parse_onnx(network, logger, request.onnx_path)

    config = builder.create_builder_config()
    _configure(config, caps, plan)
    _apply_profile(builder, network, config, plan, request.onnx_path)
    cache_loaded = False
    if plan.timing_cache is not None:
        cache_loaded = _attach_timing_cache(config, plan.timing_cache, progress)

    progress("build", 0.1, "building the engine (kernel auto-tuning; this can take minutes)")
    serialized = builder.build_serialized_network(network, config)
    log = _messages(logger)
    if _is_none(serialized):
        oom = _looks_like_oom(log.errors)
        raise BuildFailed(
            "TensorRT failed to build the engine: " + ("; ".join(log.errors[-5:]) or "no message"),
            fix="lower build.workspace_mib or the profile's max shapes"
            if oom
            else "read the TensorRT messages; try a lower optimization level or another precision",
            path=request.onnx_path,
            out_of_memory=oom,
            workspace_mib=request.workspace_mib,
        )
    data = bytes(memoryview(serialized))
    del parser

    engine_path = request.out_dir / ENGINE_FILE
    atomic_write_bytes(engine_path, data)
    progress("build", 0.9, f"wrote {engine_path} ({len(data) / MIB:.1f} MiB)")
    if plan.timing_cache is not None:
        cache_bytes = bytes(memoryview(config.get_timing_cache().serialize()))
        atomic_write_bytes(plan.timing_cache, cache_bytes)

    _runtime, engine = _deserialize(logger, data, engine_path, plan.dla_core)
    inputs, outputs = _io_specs(engine, caps)
    info: dict[str, Any] = {
        "tensorrt_version": caps.version,
        "plan": plan.to_json(),
        "layers": engine.num_layers,
        "capabilities": caps.to_json(),
        "timing_cache_loaded": cache_loaded,
        "warnings": log.warnings[-20:],
    }
    progress("build", 1.0, "engine built")
    return BuildResult(
        main_file=ENGINE_FILE,
        files=(ENGINE_FILE,),
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        info=info,
    )


# --------------------------------------------------------------------------- runner


def _read_engine(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ArtifactError(
            "engine file is missing", fix="rebuild the model with 'edge-agent build'", path=path
        ) from exc


class TrtRunner(RunnerBase):
    """Runs one serialized engine: one execution context, one CUDA stream, grow-only device and
    pinned host buffers per tensor. Not thread-safe: give each worker its own runner.

    ``dla_core``: the DLA core the engine was built for (``Runtime.DLA_core`` is set to it before
    deserializing); None for GPU engines. ``cuda`` is the CUDA layer (:mod:`agent.backends.cuda`
    by default); tests inject a fake.
    """

    def __init__(
        self,
        artifact_dir: Path,
        main_file: str,
        *,
        threads: int = 0,
        dla_core: int | None = None,
        cuda: Any = None,
    ) -> None:
        self.path = artifact_dir / main_file
        self.threads = threads  # TensorRT runs on the GPU; kept for the Runner signature
        self.dla_core = dla_core
        self._cuda: Any = cuda
        self._profile: _LayerTimes | None = None
        self._caps = Capabilities()
        self._logger: trt_types.ILogger | None = None
        self._runtime: trt_types.Runtime | None = None
        self._engine: trt_types.ICudaEngine | None = None
        self._context: trt_types.IExecutionContext | None = None
        self._stream: Any = None
        self._device: dict[str, Any] = {}
        self._host: dict[str, Any] = {}

    @property
    def active(self) -> bool:
        return self._context is not None

    def activate(self) -> None:
        if self.active:
            return
        self._caps = detect_capabilities(load_trt())
        if self._cuda is None:
            self._cuda = importlib.import_module("agent.backends.cuda")
        data = _read_engine(self.path)
        self._logger = _make_logger()
        self._runtime, self._engine = _deserialize(self._logger, data, self.path, self.dla_core)
        context = self._engine.create_execution_context()
        if _is_none(context):
            raise BackendUnavailable(
                "TensorRT could not create an execution context (device memory exhausted?)",
                fix="stop other GPU work or lower the worker count in the device profile",
            )
        inputs, outputs = _io_specs(self._engine, self._caps)
        self._inputs, self._outputs = tuple(inputs), tuple(outputs)
        self._stream = self._cuda.Stream()
        self._context = context

    def deactivate(self) -> None:
        try:
            if self._stream is not None:
                self._stream.synchronize()
        finally:
            for buf in [*self._device.values(), *self._host.values()]:
                buf.close()
            self._device.clear()
            self._host.clear()
            if self._stream is not None:
                self._stream.close()
            self._stream = None
            self._context = None
            self._engine = None
            self._runtime = None
            self._profile = None

    def _buffers(self, name: str, nbytes: int) -> tuple[Any, Any]:
        """Device and pinned host buffers of at least ``nbytes`` for ``name`` (grow-only)."""
        dev = self._device.get(name)
        if dev is None or dev.nbytes < nbytes:
            if dev is not None:
                dev.close()
            dev = self._device[name] = self._cuda.DeviceBuffer(nbytes)
        host = self._host.get(name)
        if host is None or host.nbytes < nbytes:
            if host is not None:
                host.close()
            host = self._host[name] = self._cuda.PinnedBuffer((max(nbytes, 1),), np.uint8)
        return dev, host

    @staticmethod
    def _view(host: Any, dtype: np.dtype[Any], shape: tuple[int, ...]) -> NDArray[Any]:
        flat: NDArray[np.uint8] = host.array
        # An ndarray over the pinned bytes: a view, never a copy.
        return np.ndarray(shape, dtype=dtype, buffer=flat)

    #: :class:`~agent.backends.base.DeviceTensor` feeds are bound without a copy
    accepts_device_inputs = True

    @property
    def stream(self) -> Any:
        """The runner's CUDA stream (None until active): queue the work that writes a
        :class:`~agent.backends.base.DeviceTensor` input on it."""
        return self._stream

    def infer(self, feeds: Mapping[str, NDArray[Any] | DeviceTensor]) -> dict[str, NDArray[Any]]:
        """Run the engine. A feed is a host array (staged in pinned memory and copied up) or a
        :class:`~agent.backends.base.DeviceTensor` written on :attr:`stream` (bound as is)."""
        context = self._context
        if context is None:
            raise RuntimeError("runner is not active; use it as a context manager")
        missing = [s.name for s in self._inputs if s.name not in feeds]
        extra = sorted(set(feeds) - {s.name for s in self._inputs})
        if missing or extra:
            raise ValueError(
                f"feeds do not match the engine inputs: missing {missing}, unexpected {extra}"
            )
        device_feeds = {k: v for k, v in feeds.items() if isinstance(v, DeviceTensor)}
        host_feeds = {k: v for k, v in feeds.items() if not isinstance(v, DeviceTensor)}
        if not self._caps.io_tensors_api:
            if device_feeds:
                raise ValueError(
                    "device-memory inputs need TensorRT's named-tensor API (TensorRT >= 8.5)"
                )
            return self._infer_bindings(host_feeds)
        cuda = self._cuda
        stream = self._stream
        for spec in self._inputs:
            tensor = device_feeds.get(spec.name)
            if tensor is not None:
                if np.dtype(tensor.dtype) != np.dtype(spec.dtype):
                    raise ValueError(
                        f"input '{spec.name}' is {spec.dtype} but the device tensor is "
                        f"{tensor.dtype}"
                    )
                if not context.set_input_shape(spec.name, tensor.shape):  # pyright: ignore[reportUnknownMemberType, reportCallIssue, reportArgumentType]
                    raise ValueError(
                        f"input '{spec.name}' shape {tensor.shape} is outside the engine's "
                        f"optimization profile (engine shape {spec.shape})"
                    )
                context.set_tensor_address(spec.name, tensor.ptr)  # pyright: ignore[reportUnknownMemberType]  # stubs: bool shadowed
                continue
            array = np.ascontiguousarray(host_feeds[spec.name], dtype=np.dtype(spec.dtype))
            if not context.set_input_shape(spec.name, array.shape):  # pyright: ignore[reportUnknownMemberType, reportCallIssue, reportArgumentType]
                raise ValueError(
                    f"input '{spec.name}' shape {array.shape} is outside the engine's "
                    f"optimization profile (engine shape {spec.shape})"
                )
            dev, host = self._buffers(spec.name, array.nbytes)
            staged = self._view(host, array.dtype, array.shape)
            staged[...] = array
            cuda.copy_htod_async(dev, staged, stream)
            context.set_tensor_address(spec.name, dev.ptr)  # pyright: ignore[reportUnknownMemberType]  # stubs: bool shadowed
        results: dict[str, NDArray[Any]] = {}
        for spec in self._outputs:
            shape = _dims(context.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"output '{spec.name}' shape {shape} is not resolved")
            dtype = np.dtype(spec.dtype)
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            dev, host = self._buffers(spec.name, nbytes)
            context.set_tensor_address(spec.name, dev.ptr)  # pyright: ignore[reportUnknownMemberType]  # stubs: bool shadowed
            results[spec.name] = self._view(host, dtype, shape)
        if not context.execute_async_v3(stream.handle):  # pyright: ignore[reportUnknownMemberType]  # stubs: bool shadowed
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        for spec in self._outputs:
            cuda.copy_dtoh_async(results[spec.name], self._device[spec.name], stream)
        stream.synchronize()
        return {name: np.array(view, copy=True) for name, view in results.items()}

    def profile_layers(
        self, feeds: Mapping[str, NDArray[Any]], *, iterations: int
    ) -> list[dict[str, Any]]:
        """Per-layer time of ``iterations`` inferences (after one warm-up), reported by a
        ``trt.IProfiler`` set as the execution context's ``profiler``. ``enqueue_emits_profile``
        keeps its default (True): each enqueue reports its layers' times itself. The profiler
        stays attached, not recording, until ``deactivate``."""
        context = self._context
        if context is None or self._engine is None:
            raise RuntimeError("runner is not active; use it as a context manager")
        if self._profile is None:
            self._profile = _LayerTimes()
            context.profiler = _make_profiler(self._profile)
        profile = self._profile
        profile.recording = False
        self.infer(feeds)  # warm-up: first-run set-up is not layer time
        profile.times.clear()
        profile.recording = True
        try:
            for _ in range(max(1, iterations)):
                self.infer(feeds)
        finally:
            profile.recording = False
        types = {layer["name"]: layer["type"] for layer in _inspector_layers(self._engine)}
        times = list(profile.times)
        return summarize_layer_times((n, types.get(n, "?"), ms * 1000.0) for n, ms in times)

    def _infer_bindings(self, feeds: Mapping[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        """TensorRT < 8.5 only: index-based bindings and ``execute_async_v2``. Reached through an
        ``Any`` handle because tensorrt-stubs 10.x (and TensorRT 10) no longer have this API."""
        legacy: Any = self._context
        engine: Any = self._engine
        cuda = self._cuda
        stream = self._stream
        bindings: list[int] = [0] * int(engine.num_bindings)
        index = {str(engine.get_binding_name(i)): i for i in range(len(bindings))}
        for spec in self._inputs:
            array = np.ascontiguousarray(feeds[spec.name], dtype=np.dtype(spec.dtype))
            legacy.set_binding_shape(index[spec.name], array.shape)
            dev, host = self._buffers(spec.name, array.nbytes)
            staged = self._view(host, array.dtype, array.shape)
            staged[...] = array
            cuda.copy_htod_async(dev, staged, stream)
            bindings[index[spec.name]] = dev.ptr
        results: dict[str, NDArray[Any]] = {}
        for spec in self._outputs:
            shape = _dims(legacy.get_binding_shape(index[spec.name]))
            dtype = np.dtype(spec.dtype)
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            dev, host = self._buffers(spec.name, nbytes)
            bindings[index[spec.name]] = dev.ptr
            results[spec.name] = self._view(host, dtype, shape)
        if not legacy.execute_async_v2(bindings, stream.handle):
            raise RuntimeError("TensorRT execute_async_v2 failed (see the TensorRT log)")
        for spec in self._outputs:
            cuda.copy_dtoh_async(results[spec.name], self._device[spec.name], stream)
        stream.synchronize()
        return {name: np.array(view, copy=True) for name, view in results.items()}


# --------------------------------------------------------------------------- inspect


def _precision_of(fmt: str) -> str:
    text = fmt.upper()
    for key, name in (
        ("INT8", "int8"),
        ("FP8", "fp8"),
        ("BF16", "bf16"),
        ("FP16", "fp16"),
        ("HALF", "fp16"),
        ("FP32", "fp32"),
        ("FLOAT", "fp32"),
        ("INT64", "int64"),
        ("INT32", "int32"),
        ("BOOL", "bool"),
    ):
        if key in text:
            return name
    return "unknown"


def _tensor_info(entry: Mapping[str, Any]) -> dict[str, Any]:
    # ≤ 10.x: one "Format/Datatype" string; 11.x splits it into "Format" and "DataType".
    fmt = str(entry.get("Format/Datatype", entry.get("Format", "")))
    dtype = str(entry.get("DataType", ""))
    return {
        "name": str(entry.get("Name", "")),
        "shape": list(entry.get("Dimensions", [])),
        "precision": _precision_of(dtype or fmt),
        "format": fmt,
    }


def layers_from_inspector_json(text: str) -> list[dict[str, Any]]:
    """Engine-inspector JSON (``LayerInformationFormat.JSON``) → one dict per fused layer."""
    data: Any = json.loads(text)
    raw_layers: list[Any] = []
    if isinstance(data, dict):
        raw_layers = list(cast("dict[str, Any]", data).get("Layers", []))
    layers: list[dict[str, Any]] = []
    for raw in raw_layers:
        if not isinstance(raw, dict):  # built without ProfilingVerbosity.DETAILED: names only
            layers.append({"name": str(raw), "type": "unknown", "precision": "unknown"})
            continue
        entry = cast("dict[str, Any]", raw)
        inputs = [_tensor_info(cast("dict[str, Any]", t)) for t in entry.get("Inputs", [])]
        outputs = [_tensor_info(cast("dict[str, Any]", t)) for t in entry.get("Outputs", [])]
        # A layer's precision is what it computes in: its first input's type (a Quantize layer
        # reads float and writes int8; a fused int8 conv reads int8), falling back to outputs.
        precision = next(
            (t["precision"] for t in inputs + outputs if t["precision"] != "unknown"), "unknown"
        )
        layers.append(
            {
                "name": str(entry.get("Name", "")),
                "type": str(entry.get("LayerType", "unknown")),
                "precision": precision,
                "inputs": inputs,
                "outputs": outputs,
                "tactic": str(entry.get("TacticName", entry.get("TacticValue", ""))),
                "origin": str(entry.get("Origin", "")),
            }
        )
    return layers


def _inspector_layers(engine: trt_types.ICudaEngine) -> list[dict[str, Any]]:
    """:func:`layers_from_inspector_json` of ``engine`` (empty without an engine inspector)."""
    import tensorrt as trt

    if not hasattr(engine, "create_engine_inspector"):
        return []
    inspector = engine.create_engine_inspector()
    return layers_from_inspector_json(
        inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    )


def inspect_engine(artifact_dir: Path, main_file: str) -> list[dict[str, Any]]:
    """Layers after fusion, with their precision, read with the engine inspector."""
    caps = detect_capabilities(load_trt())
    if not caps.engine_inspector:
        raise BackendUnavailable(
            f"TensorRT {caps.version} has no engine inspector",
            fix="install TensorRT 8.6 or newer from JetPack",
        )
    path = artifact_dir / main_file
    _runtime, engine = _deserialize(_make_logger(), _read_engine(path), path)
    return _inspector_layers(engine)


# --------------------------------------------------------------------------- facade


class TensorRTBackend:
    """:class:`agent.backends.base.Backend` for TensorRT."""

    name = "tensorrt"
    precisions: tuple[str, ...] = ("int8", "fp16", "fp32")

    def available(self) -> tuple[bool, str]:
        try:
            caps = detect_capabilities(load_trt())
        except BackendUnavailable as exc:
            return False, str(exc)
        if not (caps.io_tensors_api or caps.bindings_api) or not caps.memory_pool_api:
            return False, f"TensorRT {caps.version} is too old (need 8.6 or newer)"
        return True, f"TensorRT {caps.version}"

    def version(self) -> str:
        return detect_capabilities(load_trt()).version

    def build(self, request: BuildRequest, progress: ProgressFn = no_progress) -> BuildResult:
        return build_engine(request, progress)

    def runner(
        self, artifact_dir: Path, main_file: str, *, threads: int = 0, dla_core: int | None = None
    ) -> TrtRunner:
        return TrtRunner(artifact_dir, main_file, threads=threads, dla_core=dla_core)

    def profile_layers(
        self,
        artifact_dir: Path,
        main_file: str,
        feeds: Mapping[str, NDArray[Any]],
        *,
        iterations: int,
        threads: int = 0,
        dla_core: int | None = None,
    ) -> list[dict[str, Any]]:
        """Per-layer time from a ``trt.IProfiler`` (see :meth:`TrtRunner.profile_layers`)."""
        with self.runner(artifact_dir, main_file, threads=threads, dla_core=dla_core) as runner:
            return runner.profile_layers(feeds, iterations=iterations)

    def inspect(self, artifact_dir: Path, main_file: str) -> list[dict[str, Any]]:
        return inspect_engine(artifact_dir, main_file)


BACKEND = TensorRTBackend()
