"""``model.yaml`` (the bundle next to the ONNX file) and the model references of ``agent.yaml``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from agent.config.base import NAME_PATTERN, Precision, Strict


class InputSpec(Strict):
    """``input:`` the image input tensor and how a BGR frame becomes it."""

    name: str = Field(
        min_length=1, title="Input tensor", description="ONNX input name.", examples=["images"]
    )
    layout: Literal["NCHW", "NHWC"] = Field(
        default="NCHW",
        title="Layout",
        description="Tensor layout of the image input.",
        examples=["NHWC"],
    )
    color: Literal["rgb", "bgr"] = Field(
        default="rgb",
        title="Colour order",
        description="Channel order the model expects.",
        examples=["bgr"],
    )
    resize: Literal["letterbox", "stretch"] = Field(
        default="letterbox",
        title="Resize mode",
        description="How frames are fitted: 'letterbox' keeps the aspect ratio and pads "
        "(Ultralytics' rounding), 'stretch' resizes each axis to the input size.",
        examples=["stretch"],
    )
    size: tuple[int, int] | None = Field(
        default=None,
        title="Input size (H, W)",
        description="Fixed input size; null = take it from the device profile's shapes.",
        examples=[[640, 640]],
    )
    pad_value: int = Field(
        default=114,
        ge=0,
        le=255,
        title="Letterbox pad",
        description="Grey level of the letterbox border.",
        examples=[0],
    )
    scale: float = Field(
        default=1 / 255,
        gt=0,
        title="Scale",
        description="Pixel values (0..255) are multiplied by this first.",
        examples=[1.0],
    )
    mean: tuple[float, float, float] = Field(
        default=(0.0, 0.0, 0.0),
        title="Mean",
        description="Subtracted after scaling, per channel in the model's colour order.",
        examples=[[0.485, 0.456, 0.406]],
    )
    std: tuple[float, float, float] = Field(
        default=(1.0, 1.0, 1.0),
        title="Std",
        description="Divided after the mean, per channel (non-zero).",
        examples=[[0.229, 0.224, 0.225]],
    )

    @field_validator("std")
    @classmethod
    def _std_nonzero(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(x == 0 for x in v):
            raise ValueError("std values must be non-zero")
        return v


class OutputSpec(Strict):
    """``output:`` how the output tensor becomes results (top-k classes, boxes, statistics)."""

    decode: Literal["yolov8", "softmax_topk", "raw"] = Field(
        title="Decoding",
        description="How the output tensor is turned into results: 'softmax_topk' (classify), "
        "'yolov8' ([N, 4+C, anchors], detect) or 'raw' (summary statistics).",
        examples=["softmax_topk"],
    )
    name: str | None = Field(
        default=None,
        title="Output tensor",
        description="ONNX output name (default: the first).",
        examples=["output0"],
    )
    top_k: int = Field(
        default=5,
        ge=1,
        title="Top-k",
        description="softmax_topk: how many classes each result lists.",
        examples=[3],
    )
    conf_threshold: float = Field(
        default=0.25,
        ge=0,
        le=1,
        title="Confidence threshold",
        description="yolov8: detections scoring at or below it are dropped.",
        examples=[0.4],
    )
    iou_threshold: float = Field(
        default=0.5,
        gt=0,
        le=1,
        title="NMS IoU",
        description="yolov8: class-aware NMS drops a box overlapping a better one above it.",
        examples=[0.6],
    )
    max_detections: int = Field(
        default=100,
        ge=1,
        title="Max detections",
        description="yolov8: at most this many boxes per frame after NMS.",
        examples=[300],
    )
    softmax: Literal["auto", "apply", "none"] = Field(
        default="auto",
        title="Softmax",
        description="softmax_topk: 'apply' softmax to the output, 'none' = the output already "
        "holds probabilities, 'auto' = decided from the ONNX graph when the bundle is loaded "
        "('none' when the output is made by a Softmax node or Exp(LogSoftmax), else 'apply').",
        examples=["none"],
    )

    @property
    def applies_softmax(self) -> bool:
        """Whether the decoder applies softmax (an unresolved ``auto`` applies it)."""
        return self.softmax != "none"


class AccuracyTolerance(Strict):
    """``tolerance:`` what the validation gate accepts from a reduced-precision engine."""

    top1_agreement_min: float = Field(
        default=0.99,
        ge=0,
        le=1,
        title="Top-1 agreement",
        description="classify: minimum fraction of held-out frames whose top-1 class matches "
        "the float model's.",
        examples=[0.98],
    )
    box_agreement_min: float = Field(
        default=0.95,
        ge=0,
        le=1,
        title="Box agreement",
        description="detect: minimum fraction of reference boxes matched (same class, IoU ≥ 0.5).",
        examples=[0.9],
    )
    relative_error_max: float = Field(
        default=0.05,
        gt=0,
        title="Relative error",
        description="raw: maximum mean |Δ|/|ref| of the outputs.",
        examples=[0.1],
    )
    metric_drop_max: float | None = Field(
        default=None,
        ge=0,
        le=1,
        title="Task-metric drop",
        description="With a labelled heldout/ set: how far the candidate's top-1 (classify) or "
        "mAP50 (detect) may fall below the float model's, as a fraction (0.005 = 0.5 points); "
        "null = the profile's build.gate limit.",
        examples=[0.005],
    )


class ModelBundleConfig(Strict):
    """``model.yaml`` next to the ONNX file."""

    name: str = Field(
        pattern=NAME_PATTERN,
        title="Name",
        description="Model name (lower case, digits, '.', '_', '-'; up to 63 characters).",
        examples=["shapes-cls"],
    )
    version: int = Field(
        ge=0, title="Version", description="Monotonic integer version.", examples=[3]
    )
    task: Literal["classify", "detect", "raw"] = Field(
        title="Task",
        description="Model task: picks the gate's metric and, with output.decode, the results.",
        examples=["detect"],
    )
    onnx: str = Field(
        default="model.onnx",
        title="ONNX file",
        description="Relative to the bundle directory (no '..', no absolute path).",
        examples=["yolov8n.onnx"],
    )
    input: InputSpec = Field(
        title="Input", description="Image input and its preprocessing.", examples=[{"name": "x"}]
    )
    output: OutputSpec = Field(
        title="Output", description="Output decoding.", examples=[{"decode": "yolov8"}]
    )
    labels: list[str] | str = Field(
        default_factory=list,
        title="Labels",
        description="Class names in output order, or a file (relative to the bundle) with one "
        "per line.",
        examples=["labels.txt"],
    )
    keep_float: list[str] = Field(
        default_factory=list,
        title="Keep in float",
        description="ONNX node names that stay in float (not quantized); a name not in the "
        "graph fails the build with the closest names.",
        examples=[["/model.22/dfl/conv/Conv"]],
    )
    tolerance: AccuracyTolerance = Field(
        default_factory=AccuracyTolerance,
        title="Accuracy tolerance",
        description="Validation-gate limits against the float reference.",
        examples=[{"top1_agreement_min": 0.98}],
    )

    def with_softmax_resolved(self, output_is_softmax: bool) -> ModelBundleConfig:
        """This config with ``output.softmax: auto`` settled by what the graph does
        (``output_is_softmax``: its output is made by a Softmax node); other values stay."""
        if self.output.softmax != "auto":
            return self
        settled = "none" if output_is_softmax else "apply"
        return self.model_copy(
            update={"output": self.output.model_copy(update={"softmax": settled})}
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
