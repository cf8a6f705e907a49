"""Parse ONNX into a TensorRT network and configure its builder: optimization profile, builder
config (workspace, flags, optimization level, DLA, profiling verbosity), timing cache."""

from __future__ import annotations

from pathlib import Path

from agent.backends.base import InputShapes
from agent.backends.tensorrt.loader import dims, trt
from agent.backends.tensorrt.plan import BuildPlan, Capabilities
from agent.backends.tensorrt.pools import pool_limits
from agent.core.errors import BackendUnavailable, BuildFailed
from agent.core.progress import ProgressFn


def create_network(builder: trt.Builder, plan: BuildPlan) -> trt.INetworkDefinition:
    """An empty network with the plan's creation flags."""
    flags = 0
    for name in plan.network_flags:
        # By name: EXPLICIT_BATCH is gone in 11.x; plan_build only lists flags caps found.
        flag: trt.NetworkDefinitionCreationFlag = getattr(trt.NetworkDefinitionCreationFlag, name)
        flags |= 1 << int(flag)
    return builder.create_network(flags)


def parse_onnx(
    network: trt.INetworkDefinition, logger: trt.ILogger, onnx_path: Path
) -> trt.OnnxParser:
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


def _network_inputs(network: trt.INetworkDefinition) -> list[tuple[str, tuple[int, ...]]]:
    result: list[tuple[str, tuple[int, ...]]] = []
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        result.append((tensor.name, dims(tensor.shape)))
    return result


def _wanted_shapes(
    name: str, shape: tuple[int, ...], wanted: InputShapes | None, onnx_path: Path
) -> InputShapes | None:
    """The profile's shapes for a dynamic input; None for a static one (checked against the
    profile)."""
    if all(d >= 0 for d in shape):
        if wanted is not None and wanted.opt != shape:
            raise BuildFailed(
                f"input '{name}' is static {shape} but the profile asks for {wanted.opt}",
                fix="match the profile to the model, or export the ONNX with dynamic axes",
                path=onnx_path,
            )
        return None
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
    return wanted


def apply_profile(
    builder: trt.Builder,
    network: trt.INetworkDefinition,
    config: trt.IBuilderConfig,
    plan: BuildPlan,
    onnx_path: Path,
) -> None:
    """One optimization profile: ``set_shape(min, opt, max)`` for each dynamic input."""
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
    profile: trt.IOptimizationProfile | None = None
    for name, shape in inputs:
        wanted = _wanted_shapes(name, shape, plan.profile.get(name), onnx_path)
        if wanted is None:
            continue
        if profile is None:
            profile = builder.create_optimization_profile()
        profile.set_shape(
            name, trt.Dims(list(wanted.min)), trt.Dims(list(wanted.opt)), trt.Dims(list(wanted.max))
        )
    if profile is not None:
        config.add_optimization_profile(profile)


def configure(
    config: trt.IBuilderConfig, caps: Capabilities, plan: BuildPlan, resident_bytes: int = 0
) -> None:
    """Memory pools (:func:`~agent.backends.tensorrt.pools.pool_limits`), builder flags,
    optimization level, profiling verbosity and DLA."""
    if not caps.memory_pool_api:
        raise BackendUnavailable(
            f"TensorRT {caps.version} lacks set_memory_pool_limit",
            fix="install TensorRT 8.6 or newer from JetPack",
        )
    for pool_name, limit in pool_limits(plan, caps.memory_pools, resident_bytes).items():
        # By name: TACTIC_DRAM exists from 8.6 only; caps.memory_pools lists those present.
        pool: trt.MemoryPoolType = getattr(trt.MemoryPoolType, pool_name)
        config.set_memory_pool_limit(pool, limit)
    for name in plan.builder_flags:
        # By name: INT8/FP16 exist only where caps.int8_fp16_flags (≤ 10.x); plan_build checked.
        flag: trt.BuilderFlag = getattr(trt.BuilderFlag, name)
        config.set_flag(flag)
    if plan.optimization_level is not None:
        config.builder_optimization_level = plan.optimization_level
    # DETAILED keeps layer names, precisions and tactics in the plan for the engine inspector.
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if plan.device_type == "DLA":
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core or 0


def attach_timing_cache(config: trt.IBuilderConfig, path: Path, progress: ProgressFn) -> bool:
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


def _layer_types(network: trt.INetworkDefinition) -> set[str]:
    """Data types (``DataType`` names) of every layer output of the parsed network."""
    found: set[str] = set()
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            found.add(str(layer.get_output(j).dtype.name))
    return found


def check_network_types(network: trt.INetworkDefinition, plan: BuildPlan, onnx_path: Path) -> None:
    """On a strongly typed network the tensor types *are* the precision (no FP16/INT8 flags),
    so check them against what was asked, before the (long) build:

    * ``fp16`` needs FP16 tensors: otherwise the "fp16" engine would be the FP32 one and the
      gate would compare FP32 with FP32 (TensorRT 10.x→11.x migration: FP16 is "strong typing
      with ModelOpt AutoCast").
    * a DLA build needs FP16 or INT8 tensors: "Strongly Typed Networks for DLA" (11.4) — the
      precision comes from the network's types and the DLA computes only FP16/INT8.
    """
    if not plan.strongly_typed:
        return
    types = _layer_types(network)
    autocast = (
        "convert the ONNX to FP16 with NVIDIA Model Optimizer AutoCast "
        "(python3 -m modelopt.onnx.autocast --low_precision_type fp16 --onnx_path IN "
        "--output_path OUT), or build int8"
    )
    if plan.precision == "fp16" and "HALF" not in types:
        raise BuildFailed(
            "TensorRT is strongly typed here (no FP16 builder flag) and this ONNX computes in "
            "FP32, so an 'fp16' engine would be FP32",
            fix=autocast + " or fp32",
            path=onnx_path,
        )
    if plan.device_type == "DLA" and not types & {"HALF", "INT8"}:
        raise BuildFailed(
            "the DLA runs only FP16 and INT8, and on a strongly typed TensorRT this network's "
            "tensors are all FP32 (precision comes from the graph's types)",
            fix=autocast + " (add --target_dla), or build for the GPU",
            path=onnx_path,
        )
