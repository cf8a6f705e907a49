"""``model.yaml`` (the bundle next to the ONNX file) and the model references of ``agent.yaml``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from agent.config.base import NAME_PATTERN, Precision, Strict


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

    name: str = Field(pattern=NAME_PATTERN, title="Name", description="Model name.")
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


class ModelRef(Strict):
    name: str = Field(pattern=NAME_PATTERN, title="Name", description="How sources refer to it.")
    bundle: Path = Field(title="Bundle", description="Directory with model.yaml and the ONNX file.")
    precision: Precision | Literal["auto"] = Field(
        default="auto", title="Precision", description="Build precision."
    )
    calib_dir: Path | None = Field(
        default=None,
        title="Calibration frames",
        description="Folder of images/.npy; default calib/<model name>/.",
    )
