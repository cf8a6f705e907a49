"""Explicit INT8 quantization: calibrate activation ranges, insert Q/DQ nodes per backend recipe.

The recipes are data (:mod:`agent.engine.quantize.recipes`); activation ranges are computed
once and cached (:mod:`agent.engine.quantize.ranges`).

Mixed precision: nodes named in ``keep_float`` are never quantized, nor is the float tail of the
graph (:func:`~agent.engine.quantize.placement.float_tail`: everything downstream of the last
weighted layers, e.g. a detector's decode head, which TensorRT also runs in float). Then an
automatic pass (:mod:`agent.engine.quantize.exclusion`) runs the float and the Q/DQ model side by
side on a few calibration frames, measures how much error each node *adds* and excludes nodes
whose added error is far above the rest; the model is then re-quantized.

Memory is bounded (:mod:`agent.engine.quantize.memory`): calibration, bias-correction
statistics and the probe stream frame by frame and tensor group by tensor group within
``memory_budget_mib`` (beyond what the process holds now; without it, what is left under
``memory_cap_mib``, the process's cap, less a reserve; else
:data:`~agent.engine.quantize.memory.DEFAULT_BUDGET_MIB`). Every INT8 model gets a per-node
sensitivity ranking (``report["sensitivity"]``) and, per node kept float, the reason
(``report["kept_float"]``). With ``bias_correction``, empirical bias correction
(:mod:`agent.engine.quantize.biascorr`) is tried and kept when it lowers the output error on
the probe frames.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.backends.base import TensorSpec
from agent.core.errors import CalibrationError, ModelError
from agent.core.progress import ProgressFn, no_progress
from agent.engine.bundle import onnx_sha256
from agent.engine.calibration import CalibrationSet
from agent.engine.onnxgraph import ModelProto, load_model
from agent.engine.prepare import PreparedModel
from agent.engine.quantize.exclusion import Exclusion, exclude_outliers
from agent.engine.quantize.job import Job, apply_bias_correction
from agent.engine.quantize.memory import DEFAULT_BUDGET_MIB, budget_from_cap, own_rss_mib
from agent.engine.quantize.placement import float_tail, quantized_consumers
from agent.engine.quantize.probe import node_errors
from agent.engine.quantize.ranges import (
    cached_ranges_ok,
    calibrate_ranges,
    calibration_cache_key,
    method_enum,
)
from agent.engine.quantize.reader import FrameReader
from agent.engine.quantize.recipes import RECIPES, Method, Recipe
from agent.engine.quantize.report import FloatReasons, build_report

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
            "(agent/data/calib/README.md says how)",
        )
    model = load_model(prepared.path, external_data=False)
    _check_keep_float(model, keep_float, prepared.source)
    if not prepared.inputs:
        raise ModelError("the prepared model has no inputs", path=prepared.source)
    return RECIPES[recipe], model


def _unfolded(prepared: PreparedModel, names: Sequence[str]) -> list[str]:
    """``names`` with each BatchNormalization that prepare folded replaced by the layer it was
    folded into (keeping a BN float now means keeping that layer float)."""
    return list(dict.fromkeys(prepared.folded.get(n, n) for n in names))


def _batch_of(image: TensorSpec) -> int:
    batch = image.shape[0] if image.shape and isinstance(image.shape[0], int) else 1
    return batch if batch > 0 else 1


def _obtain_ranges(job: Job) -> _Ranges:
    """Activation ranges from the cache when valid, else calibrated and cached now."""
    started = time.monotonic()
    cache_path, progress = job.cache_path, job.progress
    cache_hit = cached_ranges_ok(cache_path, job.method)
    calibrated_tensors = 0
    if cache_hit:
        progress("calibrate", 1.0, f"activation ranges from cache {cache_path.name}")
    else:
        with contextlib.suppress(FileNotFoundError):
            cache_path.unlink()  # stale/corrupt: Q/DQ insertion must not trust it
        progress("calibrate", 0.0, f"calibrating {len(job.calib.calib)} frames ({job.method})")
        calibrated_tensors = calibrate_ranges(
            job.prepared,
            job.reader,
            method=job.method,
            percentile=job.percentile,
            cache_path=cache_path,
            tmp_dir=job.tmp_dir,
            budget_mib=job.budget_mib,
            progress=progress,
        )
    return _Ranges(cache_path, cache_hit, calibrated_tensors, time.monotonic() - started)


def _exclude(
    job: Job, model: ModelProto, excluded: list[str], auto_exclude: bool, max_rounds: int
) -> Exclusion:
    """Measure every node's added error (the sensitivity ranking) and, with ``auto_exclude``,
    keep outliers in float."""
    feeds = job.probe_feeds()

    def measure() -> tuple[dict[str, float], float]:
        return node_errors(job.prepared.path, job.out_path, feeds, budget_mib=job.budget_mib)

    return exclude_outliers(
        measure,
        excluded=excluded,
        consumers=quantized_consumers(model, job.recipe),
        requantize=job.requantize,
        progress=job.progress,
        max_rounds=max_rounds if auto_exclude else 0,
    )


def _budget(
    memory_budget_mib: int | None, memory_cap_mib: int | None
) -> tuple[int, dict[str, Any]]:
    """The memory budget, and the memory facts for the report."""
    rss = own_rss_mib()
    if memory_budget_mib is not None:
        budget = max(32, int(memory_budget_mib))
    elif memory_cap_mib is not None:
        budget = budget_from_cap(memory_cap_mib, rss)
    else:
        budget = DEFAULT_BUDGET_MIB
    return budget, {"budget_mib": budget, "cap_mib": memory_cap_mib, "rss_at_start_mib": rss}


def _job(
    prepared: PreparedModel,
    calib: CalibrationSet,
    rcp: Recipe,
    options: Mapping[str, Any],
    tmp_dir: Path,
) -> Job:
    image = prepared.inputs[0]
    batch = _batch_of(image)
    method, percentile, progress = options["method"], options["percentile"], options["progress"]
    key = calibration_cache_key(onnx_sha256(prepared.path), calib.sha256, method, percentile)
    work_dir, cache_dir = options["work_dir"], options["cache_dir"]
    return Job(
        prepared=prepared,
        calib=calib,
        recipe=rcp,
        method=method,
        percentile=percentile,
        batch=batch,
        reader=FrameReader(image.name, calib.calib, batch=batch, progress=progress),
        out_path=work_dir / f"model.int8.{options['recipe']}.onnx",
        cache_path=cache_dir / "calib" / f"{key}.json",
        progress=progress,
        budget_mib=options["budget_mib"],
        tmp_dir=tmp_dir,
        probe_frames=options["probe_frames"],
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
    memory_budget_mib: int | None = None,
    memory_cap_mib: int | None = None,
    bias_correction: bool = True,
    search_float: Sequence[str] = (),
) -> QuantizedModel:
    """Quantize ``prepared`` with ``recipe`` into ``work_dir/model.int8.<recipe>.onnx``.

    Ranges come from ``cache_dir/calib/<key>.json`` when present (no calibration run), else
    are computed on ``calib.calib`` and saved there (``work_dir`` is used without a cache dir).
    ``keep_float`` (model.yaml) and ``search_float`` (the accuracy search) stay float;
    memory and bias correction: see the module docstring.
    """
    keep_float, search_float = _unfolded(prepared, keep_float), _unfolded(prepared, search_float)
    rcp, model = _check_request(prepared, calib, recipe, method, [*keep_float, *search_float])
    budget_mib, memory = _budget(memory_budget_mib, memory_cap_mib)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    options = {
        "method": method,
        "percentile": percentile,
        "progress": progress,
        "work_dir": work_dir,
        "cache_dir": Path(cache_dir if cache_dir is not None else work_dir),
        "budget_mib": budget_mib,
        "probe_frames": probe_frames,
        "recipe": recipe,
    }
    tail = float_tail(model) if rcp.keep_tail_float else []
    reasons = FloatReasons(list(keep_float), list(search_float), tail)
    excluded = reasons.requested()
    with tempfile.TemporaryDirectory(prefix="quant.", dir=work_dir) as tmp:
        job = _job(prepared, calib, rcp, options, Path(tmp))
        ranges = _obtain_ranges(job)
        progress("quantize", 0.0, f"inserting Q/DQ ({recipe} recipe)")
        job.requantize(excluded)
        bias: Mapping[str, Any] = {"enabled": False, "applied": False}
        if bias_correction:
            bias = apply_bias_correction(job, excluded)
        exclusion = _exclude(job, model, excluded, auto_exclude, max_rounds)
        progress("quantize", 1.0, f"wrote {job.out_path.name}")
    report = build_report(job, model, reasons, exclusion)
    report.update(_ranges_report(ranges, job))
    report["bias_correction"] = dict(bias)
    report["memory"] = memory
    return _finish(job, recipe, report, excluded, exclusion)


def _finish(
    job: Job, recipe: str, report: dict[str, Any], excluded: list[str], exclusion: Exclusion
) -> QuantizedModel:
    """Write the report beside the model and return the result."""
    path = job.out_path.with_suffix(".json")
    path.write_text(json.dumps(report, indent=2, default=str))
    return QuantizedModel(
        path=job.out_path,
        recipe=recipe,
        method=job.method,
        excluded_nodes=tuple(excluded + exclusion.auto),
        auto_excluded=tuple(exclusion.auto),
        calib_sha256=job.calib.sha256,
        report=report,
    )


def _ranges_report(ranges: _Ranges, job: Job) -> dict[str, Any]:
    return {
        "calibration_cache": str(ranges.cache_path),
        "calibration_cache_hit": ranges.cache_hit,
        "calibrated_tensors": ranges.calibrated_tensors,
        "calibration_s": round(ranges.seconds, 3),
        "reader_batches": job.reader.calls,
    }
