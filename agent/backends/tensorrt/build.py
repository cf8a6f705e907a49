"""Build an ONNX file into a serialized TensorRT engine, following :func:`plan_build`'s plan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.backends.base import BuildRequest, BuildResult
from agent.backends.tensorrt.inspect import io_specs
from agent.backends.tensorrt.loader import (
    ENGINE_FILE,
    MIB,
    LogMessages,
    deserialize,
    is_none,
    load_trt,
    looks_like_oom,
    make_logger,
    messages,
    trt,
)
from agent.backends.tensorrt.network import (
    apply_profile,
    attach_timing_cache,
    check_network_types,
    configure,
    create_network,
    parse_onnx,
)
from agent.backends.tensorrt.plan import BuildPlan, Capabilities, detect_capabilities, plan_build
from agent.backends.tensorrt.pools import uncapped_note
from agent.core.errors import BuildFailed
from agent.core.fsutil import atomic_write_bytes
from agent.core.progress import ProgressFn, no_progress


def _build_failed(request: BuildRequest, log: LogMessages) -> BuildFailed:
    oom = looks_like_oom(log.errors)
    return BuildFailed(
        "TensorRT failed to build the engine: " + ("; ".join(log.errors[-5:]) or "no message"),
        fix="lower build.workspace_mib or the profile's max shapes"
        if oom
        else "read the TensorRT messages; try a lower optimization level or another precision",
        path=request.onnx_path,
        out_of_memory=oom,
        workspace_mib=request.workspace_mib,
    )


def _make_builder(request: BuildRequest, logger: trt.ILogger) -> trt.Builder:
    builder = trt.Builder(logger)
    if request.threads > 0 and hasattr(builder, "max_threads"):
        builder.max_threads = request.threads
    return builder


def check_dla_cores(builder: trt.Builder, caps: Capabilities, plan: BuildPlan) -> None:
    """A DLA build needs the core among those this TensorRT sees (``Builder.num_DLA_cores``, "the
    number of DLA engines available to this builder"): the device's own answer, after the
    release/board rules of :func:`~agent.backends.tensorrt.dla.decide_dla` allowed it."""
    if plan.device_type != "DLA":
        return
    core = plan.dla_core or 0
    seen = int(builder.num_DLA_cores)
    if core >= seen:
        raise BuildFailed(
            f"TensorRT {caps.version} sees {seen} DLA core(s) on this device, so DLA core {core} "
            "cannot be used",
            fix="set build.dla.enabled: false in the device profile, or build on a device and "
            "TensorRT with DLA (AGX Orin / Orin NX on JetPack 6, AGX Orin on JetPack 7.2.2 with "
            "TensorRT 11.4.1)",
        )


def resident_bytes() -> int:
    """This process's resident memory (``VmRSS`` of ``/proc/self/status``); 0 where unknown."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return 0
    return 0


@dataclass(frozen=True)
class _Serialized:
    """What a build leaves: the plan bytes, the logger and the timing cache bytes. The builder,
    network, parser and config are *not* kept: they die when :func:`_serialize` returns."""

    data: bytes
    logger: trt.ILogger
    timing_cache: bytes | None
    cache_loaded: bool


def _serialize(
    request: BuildRequest, caps: Capabilities, plan: BuildPlan, progress: ProgressFn
) -> _Serialized:
    """Parse the ONNX, configure the builder and build the serialized engine."""
    progress("build", 0.0, f"TensorRT {caps.version}: parsing {request.onnx_path.name}")
    logger = make_logger()
    builder = _make_builder(request, logger)
    check_dla_cores(builder, caps, plan)
    network = create_network(builder, plan)
    parser = parse_onnx(network, logger, request.onnx_path)
    check_network_types(network, plan, request.onnx_path)
    config = builder.create_builder_config()
    configure(config, caps, plan, resident_bytes())
    apply_profile(builder, network, config, plan, request.onnx_path)
    cache_loaded = False
    if plan.timing_cache is not None:
        cache_loaded = attach_timing_cache(config, plan.timing_cache, progress)
    progress("build", 0.1, "building the engine (kernel auto-tuning; this can take minutes)")
    serialized = builder.build_serialized_network(network, config)
    if is_none(serialized):
        raise _build_failed(request, messages(logger))
    data = bytes(memoryview(serialized))
    del serialized
    cache = None
    if plan.timing_cache is not None:
        cache = bytes(memoryview(config.get_timing_cache().serialize()))
    # The parser holds weights the network references (onnx-tensorrt: keep the parser alive
    # until the build is done); after it, parser, network, config and builder go, in that
    # order, when this frame ends: nothing of the builder stays alive while the engine is
    # deserialized for inspection (on unified memory that would add straight to the peak).
    del parser, network, config, builder
    return _Serialized(data, logger, cache, cache_loaded)


def build_engine(request: BuildRequest, progress: ProgressFn = no_progress) -> BuildResult:
    """Build ``request.onnx_path`` into ``request.out_dir/engine.plan``."""
    caps = detect_capabilities(load_trt())
    plan = plan_build(request, caps)
    if not request.onnx_path.is_file():
        raise BuildFailed(
            "ONNX file not found", fix="check the model bundle's onnx path", path=request.onnx_path
        )
    built = _serialize(request, caps, plan, progress)
    data, logger = built.data, built.logger

    engine_path = request.out_dir / ENGINE_FILE
    atomic_write_bytes(engine_path, data)
    progress("build", 0.9, f"wrote {engine_path} ({len(data) / MIB:.1f} MiB)")
    if plan.timing_cache is not None and built.timing_cache is not None:
        atomic_write_bytes(plan.timing_cache, built.timing_cache)

    _runtime, engine = deserialize(logger, data, engine_path, plan.dla_core)
    inputs, outputs = io_specs(engine, caps)
    info: dict[str, Any] = {
        "tensorrt_version": caps.version,
        "board": None if request.board is None else request.board.to_json(),
        "plan": plan.to_json(),
        "layers": engine.num_layers,
        "capabilities": caps.to_json(),
        "timing_cache_loaded": built.cache_loaded,
        "warnings": messages(logger).warnings[-20:],
    }
    note = uncapped_note(plan, caps.memory_pools)
    if note:
        info["memory_note"] = note
    progress("build", 1.0, "engine built")
    return BuildResult(
        main_file=ENGINE_FILE,
        files=(ENGINE_FILE,),
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        info=info,
    )
