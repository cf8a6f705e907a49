"""The pure side of a TensorRT build: capability rules per TensorRT version and the build plan.

One code path serves TensorRT 8.6 (JetPack 6.0), 10.x (JetPack 6.1/6.2 ship 10.3, JetPack 7 10.13
and 10.16) and 11.x (JetPack 7.2.2 ships 11.4.1). Which API generation is present is decided by
*capability* (``hasattr`` on the module's classes), never by parsing ``tensorrt.__version__``; see
:func:`detect_capabilities` for each rule and the documentation it rests on. The release number is
read only where the API cannot tell: DLA support (:mod:`agent.backends.tensorrt.dla`) and the
deprecation note for the precision flags. Nothing here imports ``tensorrt``:
:func:`detect_capabilities` reads the module it is given, and :func:`plan_build` is tested without
any TensorRT module.

==================  ==============  ============================  ========================
decision            8.6             10.x                          11.x
==================  ==============  ============================  ========================
network flags       EXPLICIT_BATCH  none (EXPLICIT_BATCH ignored) none (always strong)
int8 (Q/DQ graph)   INT8 + FP16     INT8 + FP16                   none (types from Q/DQ)
fp16                FP16            FP16                          not offered (see below)
fp32                none            none                          none
I/O at run time     tensor names    tensor names                  tensor names
==================  ==============  ============================  ========================

Workspace (``set_memory_pool_limit(WORKSPACE)``), one optimization profile, the timing cache,
``builder_optimization_level``, DLA and ``ProfilingVerbosity.DETAILED`` are the same on all three.
A DLA build pins the profile to opt (min = opt = max): the DLA has no dynamic shapes.

Releases on the boards, and what differs in the API this backend drives (checked against
NVIDIA's Python bindings, github.com/NVIDIA/TensorRT ``python/src/infer/pyCore.cpp`` at tags
v10.3.0, v10.13.3, v10.16 and v11.1, and the "Removed Python APIs" table of the 10.x → 11.x
migration guide):

==========  =========================  ===================================================
TensorRT    JetPack                    difference for this backend
==========  =========================  ===================================================
10.3        6.x (Orin)                 the 10.x row above; DLA on Orin NX / AGX Orin
10.13       7.0 / 7.1 (Thor only)      as 10.3; ``BuilderFlag.FP16/INT8`` deprecated since
                                       10.12 ("Superseded by strong typing"); no DLA
10.16       7.2.x (Orin and Thor)      as 10.13; no DLA on Jetson
11.4.0      none (no JetPack release)  the 11.x row: no EXPLICIT_BATCH, no FP16/INT8/
                                       OBEY_PRECISION_CONSTRAINTS flags, no
                                       ``platform_has_fast_*``; no DLA on Jetson
11.4.1      7.2.2+ (AGX Orin, Thor)    as 11.4.0; DLA again, on AGX Orin only, strongly typed
==========  =========================  ===================================================

Whether DLA may be used is not an API question (11.4.0 and 11.4.1 have the same API): it is
decided from the release and the board by :func:`agent.backends.tensorrt.dla.decide_dla`, and
a refused DLA build fails here, before anything is parsed, with the fix.

FP16 on 11.x: TensorRT 11 removed ``BuilderFlag.FP16``; NVIDIA's migration table
("Migrating from TensorRT 10.x to 11.x", removed Python APIs) gives "Strong typing with ModelOpt
AutoCast" as its replacement, and "Strongly Typed Networks for DLA" (11.4) says "an ONNX model
that was never converted to FP16 keeps its original tensor types, so converting the model is what
enables FP16 compute". The agent does not convert models (that would be AutoCast's job, outside
this package), so on 11.x ``fp16`` is not offered (:func:`offered_precisions`) and a direct fp16
build is accepted only when the parsed network really computes in FP16
(:func:`agent.backends.tensorrt.network.check_network_types`). The same check refuses a strongly
typed DLA build with no FP16/INT8 tensor: the DLA runs only FP16 and INT8.

Memory pools: see :mod:`agent.backends.tensorrt.pools` (WORKSPACE, TACTIC_DRAM, DLA pools).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from agent.backends.base import BuildRequest, InputShapes
from agent.backends.tensorrt.dla import DlaDecision, decide_dla, version_tuple
from agent.backends.tensorrt.loader import MIB
from agent.core.errors import BuildFailed


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
    #: the ``MemoryPoolType`` members this TensorRT has (TACTIC_DRAM from 8.6)
    memory_pools: tuple[str, ...] = (
        "WORKSPACE",
        "DLA_MANAGED_SRAM",
        "DLA_LOCAL_DRAM",
        "DLA_GLOBAL_DRAM",
        "TACTIC_DRAM",
    )

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
    * ``memory_pools``: the members of ``MemoryPoolType`` present (``TACTIC_DRAM`` is 8.6+,
      ``TACTIC_SHARED_MEMORY`` 10.0+).
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
        memory_pools=tuple(
            name
            for name in (*Capabilities.memory_pools, "TACTIC_SHARED_MEMORY")
            if hasattr(getattr(trt, "MemoryPoolType", None), name)
        ),
    )


def offered_precisions(caps: Capabilities) -> tuple[str, ...]:
    """The precisions the backend offers: no fp16 where TensorRT has no FP16 builder flag (11.x:
    the ONNX would have to be converted first; see the module docstring)."""
    if caps.int8_fp16_flags:
        return ("int8", "fp16", "fp32")
    return ("int8", "fp32")


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
    precision: str = "fp32"
    #: the build child's memory cap (:attr:`BuildRequest.memory_cap_mib`), None when not given
    memory_cap_bytes: int | None = None
    notes: tuple[str, ...] = field(default=())
    #: the DLA decision (:func:`~agent.backends.tensorrt.dla.decide_dla`), refused or not asked
    dla: DlaDecision = field(default_factory=lambda: DlaDecision(False, False, "not requested"))

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
            "precision": self.precision,
            "memory_cap_bytes": self.memory_cap_bytes,
            "notes": list(self.notes),
            "dla": self.dla.to_json(),
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


@dataclass
class _Draft:
    """The plan's flags and notes while :func:`plan_build` decides them."""

    network_flags: list[str] = field(default_factory=list[str])
    builder_flags: list[str] = field(default_factory=list[str])
    notes: list[str] = field(default_factory=list[str])


def _plan_precision(request: BuildRequest, caps: Capabilities, draft: _Draft) -> bool:
    """Network and builder flags for the precision; returns whether the network is strongly
    typed."""
    if caps.explicit_batch_flag_needed:
        draft.network_flags.append("EXPLICIT_BATCH")
    strongly_typed = not caps.int8_fp16_flags
    if strongly_typed:
        # 11.x: every network is strongly typed. STRONGLY_TYPED is not set: NvInfer.h (v11.1)
        # says "Deprecated in TensorRT 11.0. Strongly typed mode is always enabled. This flag is
        # retained for API compatibility but is ignored" (and its value moved from 1 to 0).
        if request.precision == "int8":
            draft.notes.append(
                "strongly typed: INT8 comes from the Q/DQ nodes; layers outside them run in the "
                "graph's float type"
            )
        elif request.precision == "fp16":
            draft.notes.append(
                "strongly typed: no FP16 builder flag exists; fp16 builds only from an ONNX "
                "already converted to FP16 (Model Optimizer AutoCast), checked after parsing"
            )
    elif request.precision == "int8":
        # Explicit quantization still needs INT8 on ≤ 10.x; FP16 lets the layers that stay
        # outside Q/DQ pairs run in half precision instead of fp32.
        draft.builder_flags += ["INT8", "FP16"]
    elif request.precision == "fp16":
        draft.builder_flags.append("FP16")
    if draft.builder_flags and _pad2(version_tuple(caps.version)) >= _WEAK_TYPING_DEPRECATED:
        draft.notes.append(
            f"TensorRT {caps.version}: BuilderFlag.FP16/INT8 are deprecated since 10.12 "
            "(superseded by strong typing) and removed in 11.0; they still work here"
        )
    return strongly_typed


#: BuilderFlag.FP16/INT8 docstrings from 10.12 on: "[DEPRECATED] Deprecated in TensorRT 10.12.
#: Superseded by strong typing." (pyCoreDoc.h at tag v10.16)
_WEAK_TYPING_DEPRECATED = (10, 12)


def _pad2(version: tuple[int, ...] | None) -> tuple[int, ...]:
    return ((version or (0,)) + (0,))[:2]


def _plan_device(
    request: BuildRequest, caps: Capabilities, draft: _Draft
) -> tuple[Literal["GPU", "DLA"], DlaDecision]:
    decision = decide_dla(caps.version, request.board, request.dla_core)
    if request.dla_core is None:
        return "GPU", decision
    if not decision.allowed:
        raise BuildFailed(decision.reason, fix=decision.fix)
    if request.precision == "fp32":
        raise BuildFailed(
            f"DLA core {request.dla_core} was requested with fp32, but the DLA runs only "
            "INT8 and FP16",
            fix="build int8 or fp16 for the DLA, or set build.dla.enabled: false",
        )
    if request.gpu_fallback:
        draft.builder_flags.append("GPU_FALLBACK")
    else:
        draft.notes.append("DLA without GPU fallback: the build fails if a layer cannot run on DLA")
    return "DLA", decision


def _plan_level(request: BuildRequest, caps: Capabilities, draft: _Draft) -> int | None:
    if request.workspace_mib <= 0:
        raise BuildFailed(
            f"workspace_mib must be positive, got {request.workspace_mib}",
            fix="set build.workspace_mib in the device profile",
        )
    if not 0 <= request.optimization_level <= 5:
        raise BuildFailed(
            f"optimization_level {request.optimization_level} is outside 0..5",
            fix="set build.optimization_level between 0 and 5",
        )
    if caps.builder_optimization_level:
        return request.optimization_level
    draft.notes.append("builder_optimization_level is not available; TensorRT's default is used")
    return None


def _plan_profile(
    request: BuildRequest, device_type: Literal["GPU", "DLA"], draft: _Draft
) -> dict[str, InputShapes]:
    """The optimization profile. On the DLA every input is pinned to its opt shape: TensorRT's
    "DLA Supported Layers and Restrictions" (8.6 through 10.x docs) says "DLA does not support
    dynamic dimensions, so the profile's min, max, and opt values must be equal for wildcard
    dimensions", and "the runtime dimensions must be the same as the dimensions used for
    building"; a dynamic profile fails the build, or with GPU fallback runs on the GPU."""
    pin = request.static_shapes or device_type == "DLA"
    profile: dict[str, InputShapes] = {}
    for name, shapes in request.shapes.items():
        _check_shapes(name, shapes)
        if pin:
            profile[name] = InputShapes(shapes.opt, shapes.opt, shapes.opt)
        else:
            profile[name] = shapes
        if device_type == "DLA" and not shapes.min == shapes.opt == shapes.max:
            draft.notes.append(
                f"DLA needs static shapes: input '{name}' pinned to its opt shape {shapes.opt} "
                f"(profile min {shapes.min} / max {shapes.max} ignored); the engine accepts only "
                "that shape, so set min = opt = max in the device profile to say so"
            )
    return profile


def _plan_timing_cache(
    request: BuildRequest, caps: Capabilities, level: int | None, draft: _Draft
) -> Path | None:
    if request.timing_cache is None:
        return None
    if not caps.timing_cache:
        draft.notes.append("this TensorRT has no timing-cache API; the cache is not used")
        return None
    if level == 0:
        draft.notes.append("optimization level 0 does not consult the timing cache")
    return request.timing_cache


def plan_build(request: BuildRequest, caps: Capabilities) -> BuildPlan:
    """Decide network flags, builder flags, limits, profile and device for ``request``.

    ``precision`` follows the architecture's contract: ``int8`` means the ONNX already carries
    explicit Q/DQ nodes (the engine module quantizes before building); ``fp16`` on a strongly
    typed TensorRT (11.x) means the ONNX is already fp16 (the engine module converts it).
    """
    draft = _Draft()
    strongly_typed = _plan_precision(request, caps, draft)
    device_type, dla = _plan_device(request, caps, draft)
    level = _plan_level(request, caps, draft)
    profile = _plan_profile(request, device_type, draft)
    cache = _plan_timing_cache(request, caps, level, draft)
    return BuildPlan(
        network_flags=tuple(draft.network_flags),
        builder_flags=tuple(draft.builder_flags),
        workspace_bytes=request.workspace_mib * MIB,
        optimization_level=level,
        profile=profile,
        device_type=device_type,
        dla_core=request.dla_core,
        timing_cache=cache,
        strongly_typed=strongly_typed,
        precision=request.precision,
        memory_cap_bytes=None if request.memory_cap_mib is None else request.memory_cap_mib * MIB,
        notes=tuple(draft.notes),
        dla=dla,
    )
