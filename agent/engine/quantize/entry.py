"""Explicit INT8 quantization: calibrate activation ranges, insert Q/DQ nodes per backend recipe.

The recipes are data (:mod:`agent.engine.quantize.recipes`); activation ranges are computed
once and cached (:mod:`agent.engine.quantize.ranges`).

Mixed precision: nodes named in ``keep_float`` are never quantized, nor is the float tail of the
graph (:func:`~agent.engine.quantize.placement.float_tail`: everything downstream of the last
weighted layers, e.g. a detector's decode head, which TensorRT also runs in float). Then an
automatic pass (:mod:`agent.engine.quantize.exclusion`) runs the float and the Q/DQ model side by
side on a few calibration frames, measures how much error each node *adds* and excludes nodes
whose added error is far above the rest; the model is then re-quantized.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.backends.base import TensorSpec
from agent.core.errors import CalibrationError, ModelError
from agent.core.progress import ProgressFn, no_progress
from agent.engine.bundle import onnx_sha256
from agent.engine.calibration import CalibrationSet
from agent.engine.onnxgraph import ModelProto, load_model
from agent.engine.prepare import PreparedModel
from agent.engine.quantize.exclusion import Exclusion, exclude_outliers
from agent.engine.quantize.placement import float_tail, quantized_consumers
from agent.engine.quantize.qdq import count_qdq, quantize_once
from agent.engine.quantize.ranges import (
    cached_ranges_ok,
    calibrate_ranges,
    calibration_cache_key,
    method_enum,
)
from agent.engine.quantize.reader import FrameReader
from agent.engine.quantize.recipes import RECIPES, Method, Recipe

__all__ = ["QuantizedModel", "quantize"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantizedModel:
    """A Q/DQ ONNX file and how it was made."""

    path: Path
    recipe: str
    method: str
    excluded_nodes: tuple[str, ...]
    auto_excluded: tuple[str, ...]
    calib_sha256: str
    report: dict[str, Any]


@dataclass(frozen=True)
class _Ranges:
    """Where the activation ranges are and how they were obtained."""

    cache_path: Path
    cache_hit: bool
    calibrated_tensors: int
    seconds: float


def _check_keep_float(model: ModelProto, keep_float: Sequence[str], path: Path) -> None:
    node_names = [n.name for n in model.graph.node]
    unknown = [n for n in keep_float if n not in set(node_names)]
    if unknown:
        hints = {u: difflib.get_close_matches(u, node_names, n=3) for u in unknown}
        raise ModelError(
            f"keep_float names nodes that are not in the model: {hints} (name: close matches)",
            fix="use node names as shown by `edge-agent inspect` / Netron; remove stale entries "
            "from keep_float in model.yaml",
            path=path,
        )


def _check_request(
    prepared: PreparedModel,
    calib: CalibrationSet,
    recipe: str,
    method: str,
    keep_float: Sequence[str],
) -> tuple[Recipe, ModelProto]:
    """The recipe and the prepared graph; user errors for a bad recipe, an empty calibration
    set, stale ``keep_float`` names or a model without inputs."""
    if recipe not in RECIPES:
        raise ModelError(
            f"unknown quantization recipe '{recipe}'",
            fix=f"use one of {sorted(RECIPES)} (it follows the profile's build.backend)",
        )
    method_enum(method)
    if not calib.calib:
        raise CalibrationError(
            "the calibration set is empty",
            fix="copy JPEGs from this device's cameras into the model's calibration folder "
            "(calib/README.md says how)",
        )
    model = load_model(prepared.path, external_data=False)
    _check_keep_float(model, keep_float, prepared.path)
    if not prepared.inputs:
        raise ModelError("the prepared model has no inputs", path=prepared.path)
    return RECIPES[recipe], model


def _batch_of(image: TensorSpec) -> int:
    batch = image.shape[0] if image.shape and isinstance(image.shape[0], int) else 1
    return batch if batch > 0 else 1


@dataclass(frozen=True)
class _Job:
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

    def requantize(self, exclude: Sequence[str]) -> None:
        quantize_once(
            self.prepared,
            self.out_path,
            self.reader,
            recipe=self.recipe,
            method=self.method,
            exclude=exclude,
            cache_path=self.cache_path,
        )


def _obtain_ranges(job: _Job, tmp_dir: Path) -> _Ranges:
    """Activation ranges from the cache when valid, else calibrated and cached now."""
    started = time.monotonic()
    cache_path, progress = job.cache_path, job.progress
    cache_hit = cached_ranges_ok(cache_path, job.method)
    calibrated_tensors = 0
    if cache_hit:
        progress("calibrate", 1.0, f"activation ranges from cache {cache_path.name}")
    else:
        with contextlib.suppress(FileNotFoundError):
            cache_path.unlink()  # stale/corrupt: quantize_static must not trust it
        progress("calibrate", 0.0, f"calibrating {len(job.calib.calib)} frames ({job.method})")
        calibrated_tensors = calibrate_ranges(
            job.prepared,
            job.reader,
            method=job.method,
            percentile=job.percentile,
            cache_path=cache_path,
            tmp_dir=tmp_dir,
        )
    return _Ranges(cache_path, cache_hit, calibrated_tensors, time.monotonic() - started)


def _exclude(
    job: _Job, model: ModelProto, excluded: list[str], probe_frames: int, max_rounds: int
) -> Exclusion:
    """Run the automatic mixed-precision pass on a few calibration frames."""
    image = job.prepared.inputs[0].name
    probe = job.calib.calib[: max(1, probe_frames)]
    batch = job.batch
    feeds = [{image: np.concatenate([t] * batch, axis=0) if batch > 1 else t} for t in probe]
    return exclude_outliers(
        job.prepared.path,
        job.out_path,
        feeds,
        excluded=excluded,
        consumers=quantized_consumers(model, job.recipe),
        requantize=job.requantize,
        progress=job.progress,
        max_rounds=max_rounds,
    )


def _report(job: _Job, ranges: _Ranges, exclusion: Exclusion, tail: list[str]) -> dict[str, Any]:
    rcp, method = job.recipe, job.method
    worst = sorted(exclusion.final_errors.items(), key=lambda kv: -kv[1])[:8]
    return {
        "recipe": rcp.name,
        "recipe_description": rcp.description,
        "activation_type": rcp.activation_type,
        "weight_type": rcp.weight_type,
        "per_channel": rcp.per_channel,
        "op_types": list(rcp.op_types) if rcp.op_types else "all",
        "method": method,
        "percentile": job.percentile if method == "percentile" else None,
        "calibration_frames": len(job.calib.calib),
        "calibration_batch": job.batch,
        "calibration_cache": str(ranges.cache_path),
        "calibration_cache_hit": ranges.cache_hit,
        "calibrated_tensors": ranges.calibrated_tensors,
        "calibration_s": round(ranges.seconds, 3),
        "reader_batches": job.reader.calls,
        "qdq_nodes": count_qdq(job.out_path),
        "node_error_before": {n: round(e, 6) for n, e in sorted(exclusion.errors.items())},
        "output_error_before": exclusion.out_err,
        "output_error": exclusion.final_out_err,
        "auto_exclusion_reverted": exclusion.reverted,
        "float_tail": tail,
        "worst_node_errors": {n: round(e, 6) for n, e in worst},
        "prepare_notes": list(job.prepared.notes),
    }


def _job(
    prepared: PreparedModel,
    calib: CalibrationSet,
    rcp: Recipe,
    *,
    recipe: str,
    method: str,
    percentile: float,
    work_dir: Path,
    cache_dir: Path,
    progress: ProgressFn,
) -> _Job:
    image = prepared.inputs[0]
    batch = _batch_of(image)
    key = calibration_cache_key(onnx_sha256(prepared.path), calib.sha256, method, percentile)
    return _Job(
        prepared=prepared,
        calib=calib,
        recipe=rcp,
        method=method,
        percentile=percentile,
        batch=batch,
        reader=FrameReader(image.name, calib.calib, batch=batch, progress=progress),
        out_path=work_dir / f"model.int8.{recipe}.onnx",
        cache_path=cache_dir / "calib" / f"{key}.json",
        progress=progress,
    )


def quantize(
    prepared: PreparedModel,
    calib: CalibrationSet,
    *,
    recipe: str,
    method: Method,
    keep_float: Sequence[str] = (),
    work_dir: Path,
    cache_dir: Path | None = None,
    percentile: float = 99.999,
    progress: ProgressFn = no_progress,
    auto_exclude: bool = True,
    probe_frames: int = 8,
    max_rounds: int = 3,
) -> QuantizedModel:
    """Quantize ``prepared`` with ``recipe`` into ``work_dir/model.int8.<recipe>.onnx``.

    Ranges come from ``cache_dir/calib/<key>.json`` when present (no calibration run), else
    are computed on ``calib.calib`` and saved there (``work_dir`` is used without a cache dir).
    """
    rcp, model = _check_request(prepared, calib, recipe, method, keep_float)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    job = _job(
        prepared,
        calib,
        rcp,
        recipe=recipe,
        method=method,
        percentile=percentile,
        work_dir=work_dir,
        cache_dir=Path(cache_dir if cache_dir is not None else work_dir),
        progress=progress,
    )
    tail = float_tail(model) if rcp.keep_tail_float else []
    excluded = list(dict.fromkeys([*keep_float, *tail]))
    with tempfile.TemporaryDirectory(prefix="quant.", dir=work_dir) as tmp:
        ranges = _obtain_ranges(job, Path(tmp))
        progress("quantize", 0.0, f"inserting Q/DQ ({recipe} recipe)")
        job.requantize(excluded)
        exclusion = Exclusion()
        if auto_exclude:
            exclusion = _exclude(job, model, excluded, probe_frames, max_rounds)
        progress("quantize", 1.0, f"wrote {job.out_path.name}")
    report = _report(job, ranges, exclusion, tail)
    (work_dir / f"model.int8.{recipe}.json").write_text(json.dumps(report, indent=2, default=str))
    return QuantizedModel(
        path=job.out_path,
        recipe=recipe,
        method=method,
        excluded_nodes=tuple(excluded + exclusion.auto),
        auto_excluded=tuple(exclusion.auto),
        calib_sha256=calib.sha256,
        report=report,
    )
