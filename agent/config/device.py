"""Device profiles (``device_profiles/<name>.yaml``): identity, shapes, runtime, monitor."""

from __future__ import annotations

from pydantic import Field, model_validator

from agent.config.base import NAME_PATTERN, Family, Strict, at
from agent.config.build import BuildLimits


class PowerMode(Strict):
    id: int = Field(ge=0, title="nvpmodel id", description="The id passed to `nvpmodel -m`.")
    name: str = Field(
        min_length=1, title="Name", description="The mode's name as nvpmodel prints it."
    )
    # Up to 200 W: Jetson T5000's MAXN module budget is 130 W (Jetson Thor Series Modules Data
    # Sheet, "Total Module Power"), and Thor boards throttle at a VIN limit of about 168 W.
    budget_w: float = Field(
        gt=0,
        le=200,
        title="Power budget (W)",
        description="Module power budget of this mode; the governor keeps board input below it.",
    )


class Identity(Strict):
    family: Family = Field(title="Family", description="Board family.")
    device_tree_models: list[str] = Field(
        default_factory=list,
        title="Device-tree model strings",
        description="Exact strings found in /proc/device-tree/model for this board "
        "(empty for the cpu profile).",
    )
    module_part_numbers: list[str] = Field(
        default_factory=list,
        title="Module part numbers",
        description="Module part numbers as in /proc/device-tree/compatible (e.g. p3767-0003), "
        "used to tell memory variants apart when the model string is shared.",
    )
    gpu_compute_capability: str | None = Field(
        default=None,
        pattern=r"^\d+\.\d+$",
        title="GPU compute capability",
        description="CUDA SM version, e.g. 8.7 for Orin; null on hosts without a CUDA GPU.",
    )
    gpu_name: str | None = Field(default=None, title="GPU", description="GPU architecture/size.")
    memory_mib: int = Field(
        gt=0,
        title="Memory (MiB)",
        description="Total memory; on Jetson the CPU and GPU share it.",
    )
    dla_cores: int = Field(
        ge=0, le=2, title="DLA cores", description="Deep Learning Accelerator cores."
    )
    jetpack: list[str] = Field(
        default_factory=list,
        title="JetPack releases",
        description="JetPack major releases this profile was written for.",
    )
    power_modes: list[PowerMode] = Field(
        default_factory=list,
        title="Power modes",
        description="nvpmodel modes with their power budgets; empty for hosts without nvpmodel.",
    )
    default_power_mode: int | None = Field(
        default=None,
        title="Default power mode",
        description="The nvpmodel id the board ships in; must be one of power_modes.",
    )

    @model_validator(mode="after")
    def _modes(self) -> Identity:
        # Names are unique; an id may repeat, because nvpmodel reuses ids across module SKUs
        # and releases (AGX Orin id 3 is MODE_40W on p3701-0004, MODE_50W on p3701-0000;
        # Orin Nano 4GB id 1 was 7W_AI before JetPack 6.2, 25W after). The sample carries the
        # mode's name, which is what the governor looks up.
        ids = [m.id for m in self.power_modes]
        names = [m.name.casefold() for m in self.power_modes]
        if len(set(names)) != len(names):
            raise ValueError(at("power_modes", "names must be unique; remove the duplicate name"))
        if self.default_power_mode is not None and self.default_power_mode not in ids:
            raise ValueError(
                at(
                    "default_power_mode",
                    f"{self.default_power_mode} is not one of the power_modes ids {ids}; "
                    "set it to one of them",
                )
            )
        if self.family != "cpu" and not self.device_tree_models:
            raise ValueError(
                at("device_tree_models", "a Jetson profile needs at least one model string")
            )
        return self


class DimRange(Strict):
    min: int = Field(ge=1, title="Min", description="Smallest value the engine accepts.")
    opt: int = Field(ge=1, title="Opt", description="Value the engine is tuned for.")
    max: int = Field(ge=1, title="Max", description="Largest value the engine accepts.")

    @model_validator(mode="after")
    def _order(self) -> DimRange:
        if not self.min <= self.opt <= self.max:
            raise ValueError(
                f"needs min <= opt <= max, got min={self.min} opt={self.opt} max={self.max}; "
                "reorder the values"
            )
        return self


class ShapeProfile(Strict):
    """Optimization-profile limits for image inputs (N, C, H, W)."""

    batch: DimRange = Field(title="Batch", description="Batch dimension min/opt/max.")
    height: DimRange = Field(title="Height", description="Input height in pixels min/opt/max.")
    width: DimRange = Field(title="Width", description="Input width in pixels min/opt/max.")

    @model_validator(mode="after")
    def _stride(self) -> ShapeProfile:
        for name in ("height", "width"):
            rng: DimRange = getattr(self, name)
            for which in ("min", "opt", "max"):
                value = getattr(rng, which)
                if value % 32:
                    raise ValueError(
                        at(
                            f"{name}.{which}",
                            f"{value} is not a multiple of 32 (the detector stride); "
                            f"use {max(32, round(value / 32) * 32)}",
                        )
                    )
        return self


class RuntimeLimits(Strict):
    streams: int = Field(
        ge=1,
        le=16,
        title="Worker streams",
        description="Workers in the pool, each with its own execution context and CUDA stream.",
    )
    max_batch: int = Field(ge=1, le=64, title="Max batch", description="Largest batch served.")
    # ``cuda_graphs`` was removed (issue 19): it was validated but never used. Capturing
    # ``execute_async_v3`` needs one graph per input shape and address set (the pool batches
    # 1..max_batch), cannot capture engines with data-dependent output shapes (served through an
    # IOutputAllocator) or DLA engines, and could not be measured here; a knob that does nothing
    # is worse than none. Re-add it with an implementation measured on a board.
    pinned_memory_mib: int = Field(
        ge=0,
        title="Pinned memory budget (MiB)",
        description="Page-locked host memory all workers may hold together.",
    )
    intra_op_threads: int = Field(
        default=0,
        ge=0,
        le=64,
        title="CPU threads per worker",
        description="ONNX Runtime intra-op threads per worker (0 = runtime default).",
    )
    queue_depth: int = Field(
        default=4,
        ge=1,
        le=256,
        title="Queue depth",
        description="Frames buffered per source before the drop policy applies.",
    )


class MonitorThresholds(Strict):
    interval_s: float = Field(
        default=1.0, gt=0, le=60, title="Sampling interval (s)", description="Monitor period."
    )
    memory_high_pct: float = Field(
        gt=0, lt=100, title="Memory high (%)", description="Shrink the pool, hold builds."
    )
    memory_critical_pct: float = Field(
        gt=0, le=100, title="Memory critical (%)", description="One worker and shed frames."
    )
    temp_throttle_c: float = Field(
        gt=0, lt=125, title="Throttle temperature (°C)", description="Lower the fps cap."
    )
    temp_critical_c: float = Field(
        gt=0, lt=125, title="Critical temperature (°C)", description="Shrink the pool."
    )
    hysteresis_pct: float = Field(
        default=5.0,
        ge=0,
        le=50,
        title="Hysteresis (%)",
        description="How far below a threshold a reading must fall before the governor recovers.",
    )
    min_dwell_s: float = Field(
        default=10.0,
        ge=0,
        title="Minimum dwell (s)",
        description="Minimum time between two governor actions.",
    )
    power_budget_w: float | None = Field(
        default=None,
        gt=0,
        title="Power budget (W)",
        description="Board input power budget; null = the active power mode's budget.",
    )

    @model_validator(mode="after")
    def _order(self) -> MonitorThresholds:
        if self.memory_high_pct >= self.memory_critical_pct:
            raise ValueError(
                at(
                    "memory_high_pct",
                    f"{self.memory_high_pct} must be below memory_critical_pct "
                    f"({self.memory_critical_pct})",
                )
            )
        if self.temp_throttle_c >= self.temp_critical_c:
            raise ValueError(
                at(
                    "temp_throttle_c",
                    f"{self.temp_throttle_c} must be below temp_critical_c "
                    f"({self.temp_critical_c})",
                )
            )
        return self


class TelemetryConfig(Strict):
    interval_s: float = Field(
        default=10.0, gt=0, le=3600, title="Metrics interval (s)", description="Metrics period."
    )


class DeviceProfile(Strict):
    """One device profile (``device_profiles/<name>.yaml``)."""

    name: str = Field(pattern=NAME_PATTERN, title="Name", description="Profile name (file stem).")
    description: str = Field(default="", title="Description", description="Human summary.")
    identity: Identity = Field(title="Identity", description="How to recognise the board.")
    build: BuildLimits = Field(title="Build limits", description="Engine build limits.")
    shapes: ShapeProfile = Field(
        title="Optimization profile", description="min/opt/max shapes for image inputs."
    )
    runtime: RuntimeLimits = Field(title="Runtime", description="Serving limits.")
    monitor: MonitorThresholds = Field(title="Monitor", description="Governor thresholds.")
    telemetry: TelemetryConfig = Field(
        default_factory=TelemetryConfig, title="Telemetry", description="Telemetry settings."
    )

    @model_validator(mode="after")
    def _cross(self) -> DeviceProfile:
        ident, build = self.identity, self.build
        if build.build_memory_cap_mib > ident.memory_mib:
            raise ValueError(
                at(
                    "build.build_memory_cap_mib",
                    f"{build.build_memory_cap_mib} exceeds the device memory "
                    f"({ident.memory_mib} MiB); lower it",
                )
            )
        if build.workspace_mib > ident.memory_mib // 2:
            raise ValueError(
                at(
                    "build.workspace_mib",
                    f"{build.workspace_mib} is more than half the device memory "
                    f"({ident.memory_mib} MiB); lower it",
                )
            )
        if self.runtime.pinned_memory_mib > ident.memory_mib // 4:
            raise ValueError(
                at(
                    "runtime.pinned_memory_mib",
                    f"{self.runtime.pinned_memory_mib} is more than a quarter of device memory "
                    f"({ident.memory_mib} MiB); lower it",
                )
            )
        if self.shapes.batch.max > self.runtime.max_batch:
            raise ValueError(
                at(
                    "shapes.batch.max",
                    f"{self.shapes.batch.max} exceeds runtime.max_batch "
                    f"({self.runtime.max_batch}); raise max_batch or lower the batch range",
                )
            )
        if build.dla.enabled:
            if ident.dla_cores == 0:
                raise ValueError(
                    at("build.dla.enabled", "true but identity.dla_cores is 0; set it false")
                )
            if build.dla.core >= ident.dla_cores:
                raise ValueError(
                    at(
                        "build.dla.core",
                        f"DLA core {build.dla.core} does not exist "
                        f"(identity.dla_cores={ident.dla_cores})",
                    )
                )
        if build.backend == "tensorrt" and ident.gpu_compute_capability is None:
            raise ValueError(at("build.backend", "tensorrt needs identity.gpu_compute_capability"))
        if ident.family == "cpu" and build.backend != "onnxruntime":
            raise ValueError(at("build.backend", "the cpu family can only use onnxruntime"))
        return self

    def power_budget_w(self, mode_id: int | None = None) -> float | None:
        """Budget for ``mode_id`` (default: the profile's default mode, or the override); an id
        listed under several names gives its first entry's budget."""
        if self.monitor.power_budget_w is not None:
            return self.monitor.power_budget_w
        wanted = self.identity.default_power_mode if mode_id is None else mode_id
        for mode in self.identity.power_modes:
            if mode.id == wanted:
                return mode.budget_w
        return None
