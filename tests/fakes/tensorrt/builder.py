"""The fake's builder side: optimization profile, timing cache, builder config and builder
(``install_builder``). The builder refuses what TensorRT refuses: precision flags on a strongly
typed network, a DLA build with a dynamic profile or (strongly typed) with no FP16/INT8 tensor,
DLA pools that are not powers of two."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.tensorrt.state import Fake, as_tuple

MAGIC = b"FAKETRT1"
_PRECISION_NAMES = {"FLOAT": "FP32", "HALF": "FP16", "INT8": "Int8", "INT64": "Int64"}


@dataclass
class ConfigRecord:
    """What one IBuilderConfig was given."""

    flags_set: list[str] = field(default_factory=list)
    pool_limits: dict[str, int] = field(default_factory=dict)


def install_builder(fk: Fake) -> None:
    """IOptimizationProfile, ITimingCache, IBuilderConfig, Builder."""
    mod: Any = fk.mod
    rec, major, ndcf = fk.rec, fk.major, fk.ndcf
    Dims, IHostMemory, INetworkDefinition = mod.Dims, mod.IHostMemory, mod.INetworkDefinition  # noqa: N806
    _ILogger, _ITensor = mod.ILogger, mod.ITensor  # noqa: N806

    class IOptimizationProfile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}
            rec.profiles.append(self)

        def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:
            shapes = (as_tuple(min), as_tuple(opt), as_tuple(max))
            rec.record("set_shape", input, *shapes)
            self.shapes[input] = shapes

        def get_shape(self, input: str) -> list[Any]:
            return [Dims(s) for s in self.shapes[input]]

        def __bool__(self) -> bool:
            return True

    class ITimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = bytes(data)

        def serialize(self) -> Any:
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
            # Kept in rec.configs (the record outlives the config; the config itself is not
            # kept, so the fake can tell whether the backend released it).
            record = ConfigRecord()
            self.flags_set: list[str] = record.flags_set
            self.pool_limits: dict[str, int] = record.pool_limits
            self.profiles: list[IOptimizationProfile] = []
            self._timing_cache: ITimingCache | None = None
            self._level = 3
            self._verbosity = mod.ProfilingVerbosity.LAYER_NAMES_ONLY
            self._device = mod.DeviceType.GPU
            self._dla_core = -1
            rec.configs.append(record)
            rec.alive.add(self)

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

    def _layer_precision(network: Any, config: IBuilderConfig, layer: Any) -> str:
        """Strongly typed: the layer's output type; weakly typed: the widest flag set."""
        if network.strongly_typed:
            out = layer.get_output(0).dtype.name if layer.num_outputs else "FLOAT"
            return _PRECISION_NAMES.get(out, out)
        if "INT8" in config.flags_set:
            return "Int8"
        return "FP16" if "FP16" in config.flags_set else "FP32"

    def _engine_blob(network: Any, config: IBuilderConfig) -> bytes:
        def spec(t: Any) -> dict[str, Any]:
            dds = t.name in network.dds
            return {"name": t.name, "shape": list(t.shape), "dtype": t.dtype.name, "dds": dds}

        profile = config.profiles[0].shapes if config.profiles else {}
        layers = [
            [layer.name, layer.op, _layer_precision(network, config, layer)]
            for layer in network.layers
        ]
        body = {
            "version": mod.__version__,
            "inputs": [spec(t) for t in network.inputs],
            "outputs": [spec(t) for t in network.outputs],
            "layers": layers,
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

    def _fp32_on_dla(network: Any) -> str:
        """The error a strongly typed DLA build with no FP16/INT8 tensor gets; "" otherwise."""
        if not network.strongly_typed:
            return ""
        types_ = {
            layer.get_output(j).dtype.name
            for layer in network.layers
            for j in range(layer.num_outputs)
        }
        if types_ & {"HALF", "INT8"}:
            return ""
        return "DLA does not support FP32: this strongly typed network has no FP16 or INT8 tensor"

    def _bad_dla_pool(config: IBuilderConfig) -> str:
        """MemoryPoolType docs: the DLA pools "must be at least 4 KiB and must be a power of 2"."""
        for name in ("DLA_MANAGED_SRAM", "DLA_LOCAL_DRAM", "DLA_GLOBAL_DRAM"):
            size = config.pool_limits.get(name)
            if size is not None and (size < 4096 or size & (size - 1)):
                return f"{name} pool size {size} must be at least 4 KiB and a power of 2"
        return ""

    class Builder:
        def __init__(self, logger: Any) -> None:
            self.logger = logger
            self._max_threads = 0
            rec.record("Builder", logger)
            rec.alive.add(self)

        @property
        def max_threads(self) -> int:
            return self._max_threads

        @max_threads.setter
        def max_threads(self, value: int) -> None:
            rec.record("max_threads", value)
            self._max_threads = value

        def create_network(self, flags: int = 0) -> Any:
            names = [k for k, v in ndcf.items() if flags & (1 << v)]
            unknown = flags & ~sum(1 << v for v in ndcf.values())
            if unknown:
                raise TypeError(f"unknown NetworkDefinitionCreationFlag bits {unknown:#x}")
            rec.record("create_network", tuple(names))
            return INetworkDefinition(flags)

        def create_builder_config(self) -> IBuilderConfig:
            return IBuilderConfig()

        def create_optimization_profile(self) -> IOptimizationProfile:
            rec.record("create_optimization_profile")
            return IOptimizationProfile()

        def build_serialized_network(self, network: Any, config: IBuilderConfig) -> Any:
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
            if config.default_device_type == mod.DeviceType.DLA and _fp32_on_dla(network):
                # TensorRT 11.4 "Strongly Typed Networks for DLA": precision comes from the
                # network's tensor types and the DLA runs FP16/INT8 only; an FP32 network is
                # not a DLA network.
                self.logger.log(err, _fp32_on_dla(network))
                return None
            if _bad_dla_pool(config):
                self.logger.log(err, _bad_dla_pool(config))
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
        def num_DLA_cores(self) -> int:  # noqa: N802
            rec.record("num_DLA_cores")
            return rec.dla_cores

    if major < 11:
        # "IBuilder::platformHasFastFp16(): Removed" in 11.x (NVIDIA's 10.x → 11.x migration
        # guide, removed APIs)
        Builder.platform_has_fast_fp16 = property(lambda self: True)  # type: ignore[attr-defined]

    if major < 10:

        def build_engine(self: Any, network: Any, config: Any) -> Any:
            raise AssertionError("build_engine is deprecated; use build_serialized_network")

        Builder.build_engine = build_engine  # type: ignore[attr-defined]
        Builder.max_batch_size = 1  # type: ignore[attr-defined]

    for obj in (IOptimizationProfile, ITimingCache, IBuilderConfig, Builder):
        setattr(mod, obj.__name__, obj)
