"""Typed configuration: device profiles, ``agent.yaml`` and ``model.yaml``.

Every model forbids unknown keys and every field carries a title and a description, so
``edge-agent validate-config`` can explain what is wrong and where. Validators never do I/O:
whether a file exists is checked where it is used, with an error that names it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Precision = Literal["int8", "fp16", "fp32"]
Backend = Literal["tensorrt", "onnxruntime"]
CalibrationMethod = Literal["entropy", "minmax", "percentile"]
Family = Literal["orin-nano", "orin-nx", "agx-orin", "xavier-nx", "cpu"]

_NAME = r"^[a-z0-9][a-z0-9._-]{0,62}$"


def at(path: str, message: str) -> str:
    """Prefix a cross-field error with the key it is about (relative to the model), so the
    YAML loader can point at that key's line: ``[build.workspace_mib] message``."""
    return f"[{path}] {message}"


class Strict(BaseModel):
    """Base: unknown keys are errors; models are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


# --------------------------------------------------------------------------- device profile


class PowerMode(Strict):
    id: int = Field(ge=0, title="nvpmodel id", description="The id passed to `nvpmodel -m`.")
    name: str = Field(
        min_length=1, title="Name", description="The mode's name as nvpmodel prints it."
    )
    budget_w: float = Field(
        gt=0,
        le=100,
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
        ids = [m.id for m in self.power_modes]
        if len(set(ids)) != len(ids):
            raise ValueError(at("power_modes", "ids must be unique; remove the duplicate id"))
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


class DlaConfig(Strict):
    enabled: bool = Field(
        default=False, title="Use DLA", description="Build for a DLA core instead of the GPU."
    )
    core: int = Field(default=0, ge=0, le=1, title="DLA core", description="Which DLA core.")
    gpu_fallback: bool = Field(
        default=True,
        title="GPU fallback",
        description="Let layers the DLA cannot run fall back to the GPU.",
    )


class CalibrationConfig(Strict):
    method: CalibrationMethod = Field(
        default="entropy",
        title="Method",
        description="How activation ranges are chosen: entropy (KL), minmax or percentile.",
    )
    frames: int = Field(
        default=64,
        ge=8,
        le=4096,
        title="Frames",
        description="Calibration frames used; on a small board keep this low (memory).",
    )
    heldout_frames: int = Field(
        default=32,
        ge=4,
        le=4096,
        title="Held-out frames",
        description="Frames kept out of calibration and used by the validation gate.",
    )
    percentile: float = Field(
        default=99.999,
        gt=90,
        le=100,
        title="Percentile",
        description="Percentile for method=percentile.",
    )


class BuildLimits(Strict):
    backend: Backend = Field(title="Backend", description="Engine builder/runtime to use.")
    workspace_mib: int = Field(
        ge=16,
        title="Workspace (MiB)",
        description="Builder scratch memory limit (TensorRT MemoryPoolType.WORKSPACE).",
    )
    build_memory_cap_mib: int = Field(
        ge=256,
        title="Build memory cap (MiB)",
        description="Address-space cap of the isolated build process; a build above it fails "
        "with BuildFailed and retries once with half the workspace.",
    )
    build_timeout_s: float = Field(
        default=1800, gt=0, title="Build timeout (s)", description="Kill a build after this."
    )
    precisions: list[Precision] = Field(
        min_length=1,
        title="Allowed precisions",
        description="Precisions this device may build.",
    )
    default_precision: Precision | Literal["auto"] = Field(
        default="auto",
        title="Default precision",
        description="Precision used when the command line does not say; auto = fastest allowed "
        "precision that passes the validation gate.",
    )
    dla: DlaConfig = Field(default_factory=DlaConfig, title="DLA", description="DLA use.")
    timing_cache: bool = Field(
        default=True,
        title="Timing cache",
        description="Load and save TensorRT's tactic timing cache per device.",
    )
    optimization_level: int = Field(
        default=3,
        ge=0,
        le=5,
        title="Builder optimization level",
        description="TensorRT builder optimization level (0-5): lower builds faster and uses less "
        "memory, higher searches more tactics.",
    )
    calibration: CalibrationConfig = Field(
        default_factory=CalibrationConfig, title="Calibration", description="INT8 calibration."
    )

    @model_validator(mode="after")
    def _check(self) -> BuildLimits:
        if self.default_precision != "auto" and self.default_precision not in self.precisions:
            raise ValueError(
                at(
                    "default_precision",
                    f"'{self.default_precision}' is not in precisions {self.precisions}; "
                    "add it there or choose one of them",
                )
            )
        if self.workspace_mib >= self.build_memory_cap_mib:
            raise ValueError(
                at(
                    "workspace_mib",
                    f"{self.workspace_mib} must be below build_memory_cap_mib "
                    f"({self.build_memory_cap_mib}); the builder needs memory beyond its workspace",
                )
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
    cuda_graphs: bool = Field(
        default=False,
        title="CUDA graphs",
        description="Capture enqueue in CUDA graphs (static shapes only).",
    )
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

    name: str = Field(pattern=_NAME, title="Name", description="Profile name (file stem).")
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
        """Budget for ``mode_id`` (default: the profile's default mode, or the override)."""
        if self.monitor.power_budget_w is not None:
            return self.monitor.power_budget_w
        wanted = self.identity.default_power_mode if mode_id is None else mode_id
        for mode in self.identity.power_modes:
            if mode.id == wanted:
                return mode.budget_w
        return None


# --------------------------------------------------------------------------- model bundle


class InputSpec(Strict):
    name: str = Field(min_length=1, title="Input tensor", description="ONNX input name.")
    layout: Literal["NCHW", "NHWC"] = Field(
        default="NCHW", title="Layout", description="Tensor layout of the image input."
    )
    color: Literal["rgb", "bgr"] = Field(
        default="rgb", title="Colour order", description="Channel order the model expects."
    )
    resize: Literal["letterbox", "stretch"] = Field(
        default="letterbox", title="Resize mode", description="How frames are fitted."
    )
    size: tuple[int, int] | None = Field(
        default=None,
        title="Input size (H, W)",
        description="Fixed input size; null = take it from the device profile's shapes.",
    )
    pad_value: int = Field(
        default=114, ge=0, le=255, title="Letterbox pad", description="Pad grey level."
    )
    scale: float = Field(
        default=1 / 255, gt=0, title="Scale", description="Pixel values are multiplied by this."
    )
    mean: tuple[float, float, float] = Field(
        default=(0.0, 0.0, 0.0), title="Mean", description="Subtracted after scaling (per channel)."
    )
    std: tuple[float, float, float] = Field(
        default=(1.0, 1.0, 1.0), title="Std", description="Divided after mean (per channel)."
    )

    @field_validator("std")
    @classmethod
    def _std_nonzero(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(x == 0 for x in v):
            raise ValueError("std values must be non-zero")
        return v


class OutputSpec(Strict):
    decode: Literal["yolov8", "softmax_topk", "raw"] = Field(
        title="Decoding", description="How the output tensor is turned into results."
    )
    name: str | None = Field(
        default=None, title="Output tensor", description="ONNX output name (default: the first)."
    )
    top_k: int = Field(default=5, ge=1, title="Top-k", description="For softmax_topk.")
    conf_threshold: float = Field(
        default=0.25, ge=0, le=1, title="Confidence threshold", description="Detections below."
    )
    iou_threshold: float = Field(
        default=0.5, gt=0, le=1, title="NMS IoU", description="Class-aware NMS IoU."
    )
    max_detections: int = Field(
        default=100, ge=1, title="Max detections", description="Per frame after NMS."
    )


class AccuracyTolerance(Strict):
    top1_agreement_min: float = Field(
        default=0.99, ge=0, le=1, title="Top-1 agreement", description="classify: minimum."
    )
    box_agreement_min: float = Field(
        default=0.95,
        ge=0,
        le=1,
        title="Box agreement",
        description="detect: minimum fraction of reference boxes matched (same class, IoU ≥ 0.5).",
    )
    relative_error_max: float = Field(
        default=0.05, gt=0, title="Relative error", description="raw: maximum mean |Δ|/|ref|."
    )


class ModelBundleConfig(Strict):
    """``model.yaml`` next to the ONNX file."""

    name: str = Field(pattern=_NAME, title="Name", description="Model name.")
    version: int = Field(ge=0, title="Version", description="Monotonic integer version.")
    task: Literal["classify", "detect", "raw"] = Field(title="Task", description="Model task.")
    onnx: str = Field(
        default="model.onnx", title="ONNX file", description="Relative to the bundle directory."
    )
    input: InputSpec = Field(title="Input", description="Image input and its preprocessing.")
    output: OutputSpec = Field(title="Output", description="Output decoding.")
    labels: list[str] | str = Field(
        default_factory=list,
        title="Labels",
        description="Class names, or a file (relative to the bundle) with one per line.",
    )
    keep_float: list[str] = Field(
        default_factory=list,
        title="Keep in float",
        description="ONNX node names that stay in float (not quantized).",
    )
    tolerance: AccuracyTolerance = Field(
        default_factory=AccuracyTolerance,
        title="Accuracy tolerance",
        description="Validation-gate limits against the float reference.",
    )

    @field_validator("onnx")
    @classmethod
    def _relative(cls, v: str) -> str:
        p = Path(v)
        if p.is_absolute() or ".." in p.parts:
            raise ValueError("onnx must be a path inside the bundle directory (no '..', relative)")
        return v


# --------------------------------------------------------------------------- agent.yaml


class ModelRef(Strict):
    name: str = Field(pattern=_NAME, title="Name", description="How sources refer to it.")
    bundle: Path = Field(title="Bundle", description="Directory with model.yaml and the ONNX file.")
    precision: Precision | Literal["auto"] = Field(
        default="auto", title="Precision", description="Build precision."
    )
    calib_dir: Path | None = Field(
        default=None,
        title="Calibration frames",
        description="Folder of images/.npy; default calib/<model name>/.",
    )


SourceType = Literal["file", "images", "v4l2", "rtsp", "http", "gstreamer", "synthetic"]


class SourceConfig(Strict):
    name: str = Field(pattern=_NAME, title="Name", description="Source name in metrics/events.")
    type: SourceType = Field(title="Type", description="What kind of source.")
    uri: str = Field(
        default="",
        title="URI",
        description="Path, device, URL or GStreamer pipeline, depending on type.",
    )
    model: str = Field(title="Model", description="Name of the model (from models) to run.")
    fps_cap: float | None = Field(
        default=None, gt=0, title="FPS cap", description="Upper bound on frames per second."
    )
    loop: bool = Field(default=False, title="Loop", description="Restart files at the end.")
    stall_timeout_s: float = Field(
        default=5.0, gt=0, title="Stall timeout (s)", description="No frame this long → stall."
    )
    width: int | None = Field(default=None, gt=0, title="Width", description="Capture width.")
    height: int | None = Field(default=None, gt=0, title="Height", description="Capture height.")

    @model_validator(mode="after")
    def _uri(self) -> SourceConfig:
        if self.type != "synthetic" and not self.uri:
            raise ValueError(at("uri", f"source type '{self.type}' needs a uri"))
        schemes = {"rtsp": ("rtsp://", "rtsps://"), "http": ("http://", "https://")}
        if self.type in schemes and not self.uri.startswith(schemes[self.type]):
            raise ValueError(
                at("uri", f"type '{self.type}' needs a uri starting with {schemes[self.type]}")
            )
        return self


class TlsConfig(Strict):
    ca_file: Path | None = Field(default=None, title="CA file", description="PEM CA bundle.")
    cert_file: Path | None = Field(
        default=None, title="Client certificate", description="PEM client certificate."
    )
    key_file: Path | None = Field(default=None, title="Client key", description="PEM key.")
    check_hostname: bool = Field(
        default=True, title="Check hostname", description="Verify the broker's hostname."
    )

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError(at("cert_file", "cert_file and key_file go together; set both"))
        return self


_MQTT_URL = re.compile(r"^mqtts?://[^\s/:]+(:\d{1,5})?/?$")


class MqttConfig(Strict):
    enabled: bool = Field(default=False, title="Enabled", description="Connect to a broker.")
    url: str = Field(
        default="mqtt://127.0.0.1:1883",
        title="Broker URL",
        description="mqtt://host:port or mqtts://host:port.",
    )
    keepalive_s: int = Field(
        default=30, ge=5, le=3600, title="Keepalive (s)", description="MQTT keepalive."
    )
    username: str | None = Field(default=None, title="Username", description="Optional.")
    password: str | None = Field(default=None, title="Password", description="Optional.")
    tls: TlsConfig | None = Field(default=None, title="TLS", description="TLS settings.")
    spool_max_mib: int = Field(
        default=64, ge=1, title="Spool size (MiB)", description="Offline store-and-forward cap."
    )
    client_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        title="Client id",
        description="MQTT client id; null = the device id.",
    )
    protocol: Literal["auto", "5", "3.1.1"] = Field(
        default="auto",
        title="Protocol",
        description="MQTT protocol version; auto tries 5 and falls back to 3.1.1 when the broker "
        "refuses it.",
    )
    group: str | None = Field(
        default=None,
        pattern=_NAME,
        title="OTA group",
        description="Group whose OTA pushes (edge/<fleet>/group/<group>/ota) this device takes.",
    )
    max_payload_kib: int = Field(
        default=256,
        ge=1,
        le=65536,
        title="Max command payload (KiB)",
        description="Command requests larger than this are refused with an error response.",
    )
    detections_enabled: bool = Field(
        default=False,
        title="Publish detections",
        description="Publish per-frame detections on .../detections (QoS 0, rate-limited).",
    )
    detections_max_per_s: float = Field(
        default=2.0,
        gt=0,
        le=100,
        title="Detections rate (msg/s)",
        description="Upper bound on detections messages per second; extra ones are dropped.",
    )
    reconnect_min_s: float = Field(
        default=0.5,
        gt=0,
        le=60,
        title="Reconnect delay min (s)",
        description="First reconnect delay; it doubles (with jitter) up to reconnect_max_s.",
    )
    reconnect_max_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        title="Reconnect delay max (s)",
        description="Longest delay between two reconnect attempts.",
    )
    publish_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        title="Publish timeout (s)",
        description="Longest wait for a broker acknowledgement where a publish is awaited.",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        match = _MQTT_URL.match(v)
        if not match:
            raise ValueError(f"'{v}' is not mqtt://host:port or mqtts://host:port")
        if match.group(1) is not None and not 1 <= int(match.group(1)[1:]) <= 65535:
            raise ValueError(f"'{v}': port {match.group(1)[1:]} is not in 1..65535")
        return v

    @model_validator(mode="after")
    def _cross(self) -> MqttConfig:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(
                at(
                    "reconnect_min_s",
                    f"{self.reconnect_min_s} must not exceed reconnect_max_s "
                    f"({self.reconnect_max_s})",
                )
            )
        if self.tls is not None and not self.url.startswith("mqtts://"):
            raise ValueError(at("url", "a tls section needs an mqtts:// url; change the scheme"))
        return self


class OtaConfig(Strict):
    """Over-the-air model updates (signed pushes over MQTT, see ``agent/ota``)."""

    enabled: bool = Field(
        default=False,
        title="Enabled",
        description="Accept signed model pushes on this device's OTA topic and its group's "
        "(mqtt.group).",
    )
    trust_dir: Path = Field(
        default=Path("/etc/edge-agent/trust"),
        title="Trust directory",
        description="Directory of Ed25519 public keys (PEM, one per file) whose signatures "
        "are accepted; several keys allow rotation.",
    )
    keep_versions: int = Field(
        default=3,
        ge=2,
        le=50,
        title="Versions kept",
        description="Model versions kept on disk per model (the committed one included); at "
        "least 2 so that a rollback target exists.",
    )
    disk_quota_mib: int = Field(
        default=2048,
        ge=1,
        title="Disk quota (MiB)",
        description="Most disk space all kept OTA bundles may use together; a push that would "
        "exceed it is rejected with reason over_quota.",
    )
    max_bundle_mib: int = Field(
        default=512,
        ge=1,
        title="Largest bundle (MiB)",
        description="Largest single pushed bundle (all files together).",
    )
    download_timeout_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        title="Download timeout (s)",
        description="Socket timeout of one bundle file download (http, https, file).",
    )
    inline_timeout_s: float = Field(
        default=300.0,
        gt=0,
        le=86400,
        title="Inline chunk timeout (s)",
        description="How long to wait for the chunks of an inline push before failing it.",
    )
    build_poll_s: float = Field(
        default=5.0,
        gt=0,
        le=600,
        title="Build admission poll (s)",
        description="How often the updater asks the governor whether a build may start.",
    )
    build_wait_max_s: float = Field(
        default=3600.0,
        gt=0,
        title="Build admission wait (s)",
        description="Give up (state failed) after the governor held builds back this long.",
    )
    probation_s: float = Field(
        default=60.0,
        ge=0,
        le=86400,
        title="Probation (s)",
        description="After a hot swap, how long the new model is watched before it is "
        "committed; NaN outputs, a crash or low throughput in this window roll it back.",
    )
    probation_interval_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        title="Probation sampling interval (s)",
        description="How often the serving model is sampled during probation.",
    )
    probation_min_fps_fraction: float = Field(
        default=0.5,
        gt=0,
        le=1,
        title="Probation throughput fraction",
        description="Roll back when the served inference throughput over the probation window "
        "falls below this fraction of the throughput the validation gate measured.",
    )

    @model_validator(mode="after")
    def _sizes(self) -> OtaConfig:
        if self.max_bundle_mib > self.disk_quota_mib:
            raise ValueError(
                at(
                    "max_bundle_mib",
                    f"{self.max_bundle_mib} exceeds disk_quota_mib ({self.disk_quota_mib}); "
                    "lower it or raise the quota",
                )
            )
        return self


class PrometheusConfig(Strict):
    enabled: bool = Field(
        default=False,
        title="Prometheus endpoint",
        description="Serve the metrics payload's figures in Prometheus text format.",
    )
    host: str = Field(
        default="127.0.0.1",
        min_length=1,
        title="Listen address",
        description="Address the endpoint binds; keep it on loopback unless a proxy guards it.",
    )
    port: int = Field(
        default=9108, ge=1, le=65535, title="Port", description="TCP port of /metrics."
    )


class LoggingConfig(Strict):
    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", title="Level", description="Log level."
    )


class DaemonConfig(Strict):
    """How ``edge-agent run`` behaves as a service: drain, supervision and the watchdog."""

    stop_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        title="Stop timeout (s)",
        description="On SIGTERM, in-flight frames are drained for at most this long in all; "
        "keep it below the unit's TimeoutStopSec.",
    )
    stats_interval_s: float = Field(
        default=5.0,
        gt=0,
        title="Stats interval (s)",
        description="Seconds between stats log lines (and systemd STATUS= updates).",
    )
    restart_budget: int = Field(
        default=5,
        ge=0,
        title="Restart budget",
        description="Restarts of one failed component (a pipeline, the monitor) allowed within "
        "restart_window_s; one more failure and the daemon exits with code 3 so systemd "
        "restarts the whole service.",
    )
    restart_window_s: float = Field(
        default=300.0,
        gt=0,
        title="Restart window (s)",
        description="The sliding window of the restart budget.",
    )
    progress_timeout_s: float = Field(
        default=30.0,
        gt=0,
        title="Progress timeout (s)",
        description="A component with work to do (frames pending, a source streaming) that "
        "makes no progress for this long is stuck: the systemd watchdog pings stop and systemd "
        "restarts the service. Keep it above every source's stall_timeout_s so a source's own "
        "stall recovery acts first.",
    )
    ready_timeout_s: float = Field(
        default=120.0,
        gt=0,
        title="Ready timeout (s)",
        description="READY=1 is sent when the first frame has gone through; if no frame came "
        "this long after the pipelines started (a camera that is down), READY=1 is sent anyway "
        "so that one dead camera does not keep the service from starting.",
    )


class AgentConfig(Strict):
    """``agent.yaml``."""

    device_id: str = Field(pattern=_NAME, title="Device id", description="Unique per device.")
    fleet: str = Field(pattern=_NAME, title="Fleet", description="Fleet/group name.")
    profile: str = Field(
        default="auto",
        title="Profile",
        description="Device profile name, or auto to detect the board.",
    )
    state_dir: Path = Field(
        default=Path("/var/lib/edge-agent"),
        title="State directory",
        description="Persistent state (active model, OTA, spool).",
    )
    cache_dir: Path = Field(
        default=Path("/var/cache/edge-agent"),
        title="Cache directory",
        description="Engine cache and timing caches.",
    )
    models: Annotated[list[ModelRef], Field(min_length=1)] = Field(
        title="Models", description="Models this device serves."
    )
    sources: list[SourceConfig] = Field(
        default_factory=list, title="Sources", description="Camera/video sources."
    )
    mqtt: MqttConfig = Field(default_factory=MqttConfig, title="MQTT", description="Broker.")
    metrics: PrometheusConfig = Field(
        default_factory=PrometheusConfig,
        title="Prometheus",
        description="Optional local Prometheus endpoint.",
    )
    ota: OtaConfig = Field(
        default_factory=OtaConfig, title="OTA", description="Over-the-air model updates."
    )
    logging: LoggingConfig = Field(
        default_factory=LoggingConfig, title="Logging", description="Logging."
    )
    daemon: DaemonConfig = Field(
        default_factory=DaemonConfig,
        title="Daemon",
        description="Service behaviour: stop drain, restart budget, watchdog progress timeout.",
    )

    @model_validator(mode="after")
    def _refs(self) -> AgentConfig:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError("model names must be unique")
        src_names = [s.name for s in self.sources]
        if len(set(src_names)) != len(src_names):
            raise ValueError("source names must be unique")
        for index, src in enumerate(self.sources):
            if src.model not in names:
                raise ValueError(
                    at(
                        f"sources.{index}.model",
                        f"model '{src.model}' is not in models {names}; "
                        "add it to models or fix the name",
                    )
                )
        return self
