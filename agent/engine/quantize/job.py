"""One quantization job: what goes in, where it goes, how it is fed, and the Q/DQ insertion it
repeats (with the bias correction applied to the layers that are quantized)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.core.progress import ProgressFn
from agent.engine.calibration import CalibrationSet
from agent.engine.onnxgraph import load_model
from agent.engine.prepare import PreparedModel
from agent.engine.quantize.biascorr import (
    bias_deltas,
    corrected_model,
    input_means,
    weighted_inputs,
)
from agent.engine.quantize.probe import output_error
from agent.engine.quantize.qdq import quantize_once
from agent.engine.quantize.reader import FrameReader
from agent.engine.quantize.recipes import Recipe

__all__ = ["Job", "apply_bias_correction"]

log = logging.getLogger(__name__)


@dataclass
class BiasState:
    """The bias corrections in force: per node, added to the float bias before Q/DQ."""

    deltas: dict[str, np.ndarray] = field(default_factory=dict[str, np.ndarray])
    active: bool = False


@dataclass(frozen=True)
class Job:
    """One quantization: what goes in, where it goes, how it is fed."""

    prepared: PreparedModel
    calib: CalibrationSet
    recipe: Recipe
    method: str
    percentile: float
    batch: int
    reader: FrameReader
    out_path: Path
    cache_path: Path
    progress: ProgressFn
    budget_mib: int
    tmp_dir: Path
    probe_frames: int
    bias: BiasState = field(default_factory=BiasState)

    def requantize(self, exclude: Sequence[str]) -> None:
        """Insert Q/DQ into ``out_path`` keeping ``exclude`` float (bias-corrected source when
        the correction is in force)."""
        source = self.prepared.path
        if self.bias.active and self.bias.deltas:
            source = self.tmp_dir / "bias_corrected.onnx"
            corrected_model(self.prepared.path, self.bias.deltas, exclude, source)
        quantize_once(
            self.prepared,
            self.out_path,
            self.reader,
            recipe=self.recipe,
            method=self.method,
            exclude=exclude,
            cache_path=self.cache_path,
            source=source,
        )

    def probe_feeds(self) -> list[dict[str, np.ndarray]]:
        """The probe's frames (the first calibration frames, batched like the model input)."""
        image = self.prepared.inputs[0].name
        probe = self.calib.calib[: max(1, self.probe_frames)]
        batch = self.batch
        return [{image: np.concatenate([t] * batch, axis=0) if batch > 1 else t} for t in probe]

    def output_error(self) -> float:
        """Mean per-channel error of the graph outputs of ``out_path`` against float."""
        return output_error(
            self.prepared.path, self.out_path, self.probe_feeds(), budget_mib=self.budget_mib
        )


def apply_bias_correction(job: Job, exclude: Sequence[str]) -> Mapping[str, Any]:
    """Bias-correct the quantized Conv/Gemm layers of ``job.out_path`` (already quantized with
    ``exclude`` float) and keep the correction only when it lowers the output error on the
    probe frames; returns what was measured, for the report."""
    job.progress("bias", 0.0, "bias correction: measuring layer input means")
    float_model = load_model(job.prepared.path)
    targets = weighted_inputs(float_model)
    means = input_means(
        job.prepared.path,
        list(targets.values()),
        job.reader.feeds,
        budget_mib=job.budget_mib,
        tmp_dir=job.tmp_dir,
    )
    deltas = bias_deltas(float_model, job.out_path, means)
    del float_model
    if not deltas:
        return {"enabled": True, "applied": False, "layers": 0}
    job.progress("bias", 0.5, f"bias correction: {len(deltas)} layers, measuring output error")
    before = job.output_error()
    job.bias.deltas, job.bias.active = deltas, True
    job.requantize(exclude)
    after = job.output_error()
    if after >= before:
        job.bias.active = False
        job.requantize(exclude)
    job.progress("bias", 1.0, f"output error {before:.5f} -> {after:.5f}")
    return {
        "enabled": True,
        "applied": job.bias.active,
        "layers": len(deltas),
        "output_error_without": round(before, 6),
        "output_error_with": round(after, 6),
        "max_abs_bias_change": round(float(max(np.abs(d).max() for d in deltas.values())), 6),
    }
