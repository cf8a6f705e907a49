"""The build steps before the gate: prepare, calibrate, quantize (int8, isolated), backend
build (isolated; one retry at half the workspace after running out of memory)."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any

from agent.backends.base import BuildRequest, BuildResult
from agent.core.errors import BuildFailed, CalibrationError
from agent.core.progress import ProgressFn
from agent.engine.build.candidates import Candidate
from agent.engine.build.context import BuildContext, BuildInputs
from agent.engine.build.outcome import BuildRecord, QuantizationRecord
from agent.engine.bundle import ModelBundle
from agent.engine.calibration import CalibrationSet, load_calibration_set
from agent.engine.isolate.launch import IsolatedOutcome, build_isolated, run_isolated
from agent.engine.prepare import PreparedModel, prepare
from agent.engine.quantize.entry import QuantizedModel, quantize

__all__ = [
    "build_candidates",
    "prepare_inputs",
    "quantize_target",
    "resolve_calib_dir",
]

log = logging.getLogger(__name__)

_MIN_WORKSPACE_MIB = 16


def resolve_calib_dir(bundle: ModelBundle, calib_dir: Path | None, cwd: Path | None = None) -> Path:
    """``calib_dir`` if given, else ``calib/<model name>/`` under the working directory, else
    the bundle's own ``calib/`` folder."""
    if calib_dir is not None:
        return Path(calib_dir)
    base = Path.cwd() if cwd is None else cwd
    candidates = [base / "calib" / bundle.config.name, bundle.directory / "calib"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise CalibrationError(
        "no calibration frames found (looked in " + " and ".join(str(c) for c in candidates) + ")",
        fix="put camera frames in calib/<model name>/ (see calib/README.md) or pass --calib DIR",
        path=candidates[0],
    )


def quantize_target(
    progress: ProgressFn, prepared: PreparedModel, calib: CalibrationSet, options: dict[str, Any]
) -> QuantizedModel:
    """Quantize in the isolated child (calibration can use a lot of memory)."""
    return quantize(prepared, calib, progress=progress, **options)


# ---------------------------------------------------------------------------- prepare + calibrate


def prepare_inputs(ctx: BuildContext) -> BuildInputs:
    """Prepare the ONNX model and load the calibration set (with its held-out frames)."""
    config, progress = ctx.bundle.config, ctx.progress
    with ctx.watch.stage("prepare"):
        progress("prepare", 0.0, "checking and shaping the ONNX model")
        prepared = prepare(ctx.bundle, ctx.profile, ctx.work / "prepare", static=ctx.static)
        progress("prepare", 1.0, "; ".join(prepared.notes) or "ok")
    input_name = config.input.name
    shapes = prepared.shapes[input_name]
    nchw = config.input.layout == "NCHW"
    size_hw = (shapes.opt[2], shapes.opt[3]) if nchw else (shapes.opt[1], shapes.opt[2])
    with ctx.watch.stage("calibrate"):
        directory = resolve_calib_dir(ctx.bundle, ctx.options.calib_dir)
        cal = ctx.build_cfg.calibration
        calib = load_calibration_set(
            directory, ctx.bundle, size_hw, cal.frames, cal.heldout_frames, progress=progress
        )
    if not calib.heldout:
        raise CalibrationError(
            "no held-out frames for the validation gate",
            fix="set build.calibration.heldout_frames > 0 and add that many frames",
            path=directory,
        )
    return BuildInputs(prepared, calib, directory, size_hw, input_name)


# ---------------------------------------------------------------------------- quantize


def _quantize_isolated(ctx: BuildContext, inputs: BuildInputs) -> QuantizedModel:
    build_cfg, cal, calib = ctx.build_cfg, ctx.build_cfg.calibration, inputs.calib
    ctx.progress("quantize", 0.0, f"calibrating on {len(calib.calib)} frames")
    slim = dataclasses.replace(calib, heldout=[], heldout_frames=[])
    options = {
        "recipe": ctx.backend_name,
        "method": cal.method,
        "keep_float": list(ctx.bundle.config.keep_float),
        "work_dir": ctx.work / "quantize",
        "cache_dir": ctx.cache_root / "calibration",
        "percentile": cal.percentile,
    }
    try:
        q = run_isolated(
            quantize_target,
            (inputs.prepared, slim, options),
            memory_cap_mib=build_cfg.build_memory_cap_mib,
            timeout_s=build_cfg.build_timeout_s,
            progress=ctx.progress,
            what="int8 quantization",
            scratch_dir=ctx.work,
        )
    except BuildFailed as exc:
        if not exc.out_of_memory:
            raise
        # the workspace does not matter here: calibration holds activations
        raise BuildFailed(
            exc.message,
            fix="lower build.calibration.frames (calibration keeps every "
            "frame's activations in memory) or raise "
            "build.build_memory_cap_mib in the device profile",
            out_of_memory=True,
            memory_cap_mib=build_cfg.build_memory_cap_mib,
        ) from exc
    ctx.record_rss(q.peak_rss_mib)
    return q.value


def quantize_candidate(ctx: BuildContext, inputs: BuildInputs, cand: Candidate) -> Path:
    """Quantize the prepared model for ``cand`` (int8); returns the Q/DQ ONNX file."""
    with ctx.watch.stage("quantize"):
        quantized = _quantize_isolated(ctx, inputs)
    # the range collection inside quantize counts as calibration time
    timings = ctx.watch.timings
    calib_s = float(quantized.report.get("calibration_s", 0.0) or 0.0)
    calib_s = min(calib_s, timings.get("quantize", 0.0))
    timings["quantize"] = timings.get("quantize", 0.0) - calib_s
    ctx.watch.add("calibrate", calib_s)
    cand.quantization = QuantizationRecord(
        recipe=quantized.recipe,
        method=quantized.method,
        excluded_nodes=quantized.excluded_nodes,
        auto_excluded=quantized.auto_excluded,
        calib_sha256=quantized.calib_sha256,
        calibration_frames=len(inputs.calib.calib),
        report=quantized.report,
    )
    return quantized.path


# ---------------------------------------------------------------------------- backend build


def _retry_with_half_workspace(
    ctx: BuildContext, request: BuildRequest, first: BuildFailed
) -> tuple[BuildResult, float | None, int]:
    cap = ctx.build_cfg.build_memory_cap_mib
    half = max(_MIN_WORKSPACE_MIB, request.workspace_mib // 2)
    note = (
        f"{request.precision} build ran out of memory with workspace "
        f"{request.workspace_mib} MiB under a {cap} MiB cap; retrying once with {half} MiB"
    )
    log.warning(note)
    ctx.notes.append(note)
    ctx.progress("build", 0.0, note)
    shutil.rmtree(request.out_dir, ignore_errors=True)
    request.out_dir.mkdir(parents=True, exist_ok=True)
    retry = dataclasses.replace(request, workspace_mib=half)
    try:
        outcome = _build_isolated(ctx, retry)
    except BuildFailed as second:
        raise BuildFailed(
            f"{request.precision} build failed twice: first {first.message}; then, with "
            f"half the workspace ({half} MiB): {second.message}",
            fix=second.fix or first.fix,
            out_of_memory=second.out_of_memory,
            workspace_mib=half,
            memory_cap_mib=cap,
        ) from second
    return outcome.value, outcome.peak_rss_mib, half


def _build_isolated(ctx: BuildContext, request: BuildRequest) -> IsolatedOutcome[BuildResult]:
    return build_isolated(
        ctx.backend_name,
        request,
        memory_cap_mib=ctx.build_cfg.build_memory_cap_mib,
        timeout_s=ctx.build_cfg.build_timeout_s,
        progress=ctx.progress,
        scratch_dir=ctx.work,
    )


def _build_with_retry(
    ctx: BuildContext, request: BuildRequest
) -> tuple[BuildResult, float | None, int]:
    """Backend build in the isolated child; after running out of memory, retry once with half
    the workspace. Returns (result, peak RSS MiB, workspace used)."""
    try:
        outcome = _build_isolated(ctx, request)
    except BuildFailed as first:
        if not first.out_of_memory:
            raise
        return _retry_with_half_workspace(ctx, request, first)
    return outcome.value, outcome.peak_rss_mib, request.workspace_mib


def _request(
    ctx: BuildContext, inputs: BuildInputs, cand: Candidate, onnx_path: Path
) -> BuildRequest:
    build_cfg = ctx.build_cfg
    out_dir = ctx.work / f"stage-{cand.precision}"
    out_dir.mkdir()
    timing_cache = None
    if build_cfg.timing_cache and ctx.backend_name == "tensorrt":
        name = f"{ctx.backend_name}-{ctx.backend_version}.cache"
        timing_cache = (ctx.cache_root / "timing" / name).resolve()
    return BuildRequest(
        onnx_path=Path(onnx_path).resolve(),
        out_dir=out_dir.resolve(),
        precision=cand.precision,  # type: ignore[arg-type]
        shapes=inputs.prepared.shapes,
        workspace_mib=build_cfg.workspace_mib,
        optimization_level=build_cfg.optimization_level,
        dla_core=ctx.dla_core,
        gpu_fallback=build_cfg.dla.gpu_fallback,
        timing_cache=timing_cache,
        threads=ctx.threads,
        static_shapes=ctx.static,
    )


def build_candidate(ctx: BuildContext, inputs: BuildInputs, cand: Candidate) -> None:
    """Quantize (int8) and build ``cand`` into the work directory."""
    onnx_path = inputs.prepared.path
    if cand.precision == "int8":
        onnx_path = quantize_candidate(ctx, inputs, cand)
    request = _request(ctx, inputs, cand, onnx_path)
    with ctx.watch.stage("build"):
        ctx.progress("build", 0.0, f"building {cand.precision} with {ctx.backend_name}")
        result, rss, workspace_used = _build_with_retry(ctx, request)
        ctx.record_rss(rss)
    cand.staged = request.out_dir
    cand.result = result
    cand.build = BuildRecord(workspace_used, dict(result.info), rss)


def build_candidates(ctx: BuildContext, inputs: BuildInputs, candidates: list[Candidate]) -> None:
    """Build every candidate that is not already in the cache."""
    for cand in candidates:
        if cand.artifact is None:
            build_candidate(ctx, inputs, cand)
