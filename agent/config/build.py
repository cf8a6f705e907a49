"""The build section of a device profile: engine builder limits, DLA use and INT8 calibration."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from agent.config.base import Backend, CalibrationMethod, Precision, Strict, at

#: Default held-out count: from 523 frames on, a classifier whose true top-1 agreement is 0.98
#: fails the 0.99 tolerance with >= 95 % probability (exact binomial; docs/validation.md).
DEFAULT_HELDOUT_FRAMES = 600


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
        default=DEFAULT_HELDOUT_FRAMES,
        ge=4,
        le=20000,
        title="Held-out frames",
        description="Frames the validation gate compares on: the bundle's labelled heldout/ "
        "images when it has them, else the last files of the calibration folder (never used "
        "for calibration). The default (600) is enough that a classifier whose true top-1 "
        "agreement is 0.98 fails the 0.99 tolerance with >= 95 % probability "
        "(docs/validation.md); the gate warns when fewer frames were available.",
    )
    percentile: float = Field(
        default=99.999,
        gt=90,
        le=100,
        title="Percentile",
        description="Percentile for method=percentile.",
    )


class GateConfig(Strict):
    """Limits of the validation gate beyond model.yaml's agreement tolerance."""

    top1_drop_max: float = Field(
        default=0.01,
        ge=0,
        le=1,
        title="Top-1 accuracy drop",
        description="classify, with labelled held-out frames: a candidate's top-1 accuracy may "
        "be at most this much (a fraction: 0.01 = 1 point) below the float reference's.",
    )
    map50_drop_max: float = Field(
        default=0.005,
        ge=0,
        le=1,
        title="mAP50 drop",
        description="detect, with labelled held-out frames: a candidate's mAP50 may be at most "
        "this much (a fraction: 0.005 = 0.5 point) below the float reference's.",
    )
    bootstrap_samples: int = Field(
        default=1000,
        ge=100,
        le=20000,
        title="Bootstrap samples",
        description="Resamples of the held-out frames for the mAP50 confidence intervals.",
    )
    seed: int = Field(
        default=0, ge=0, title="Seed", description="Seed of the bootstrap (reproducible reports)."
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
    gate: GateConfig = Field(
        default_factory=GateConfig,
        title="Validation gate",
        description="Task-metric limits of the validation gate (used with labelled frames).",
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
