"""The build steps before the gate: prepare, calibrate, quantize (int8, isolated), backend
build (isolated; one retry at half the workspace after running out of memory)."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.backends.base import BuildRequest, BuildResult
from agent.config.build import BuildLimits
from agent.core.errors import BuildFailed, CalibrationError
from agent.core.progress import ProgressFn
from agent.engine.build.candidates import Candidate
from agent.engine.build.context import BuildContext, BuildInputs
from agent.engine.build.floats import SearchReason, explain_float_layers, graph_facts
from agent.engine.build.outcome import BuildRecord, QuantizationRecord
from agent.engine.bundle import ModelBundle
from agent.engine.calibration import CalibrationSet, load_calibration_set
from agent.engine.isolate.launch import IsolatedOutcome, build_isolated, run_isolated
from agent.engine.prepare import PreparedModel, prepare
from agent.engine.quantize.entry import QuantizedModel, quantize
from agent.engine.quantize.oom import StageTracker, oom_fix, oom_message

__all__ = [
    "build_candidate",
    "prepare_inputs",
    "quantize_in_child",
    "quantize_target",
    "resolve_calib_dir",
]

log = logging.getLogger(__name__)

_MIN_WORKSPACE_MIB = 16


#: the frames of the models bundled with the package (``agent/data/calib/<name>``, in the wheel)
_PACKAGED = Path(__file__).resolve().parents[2] / "data"


def resolve_calib_dir(bundle: ModelBundle, calib_dir: Path | None, cwd: Path | None = None) -> Path:
    """``calib_dir`` if given, else ``calib/<model name>/`` under the working directory, else
    the bundle's own ``calib/`` folder, else (a model bundled with the package) its packaged
    frames in ``agent/data/calib/<model name>/``."""
    if calib_dir is not None:
        return Path(calib_dir)
    base = Path.cwd() if cwd is None else cwd
    candidates = [base / "calib" / bundle.config.name, bundle.directory / "calib"]
    if bundle.directory.resolve().is_relative_to(_PACKAGED / "models"):
        candidates.append(_PACKAGED / "calib" / bundle.config.name)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise CalibrationError(
        "no calibration frames found (looked in " + " and ".join(str(c) for c in candidates) + ")",
        fix="put camera frames in calib/<model name>/ (see agent/data/calib/README.md) or "
        "pass --calib DIR",
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
        prepared = prepare(
            ctx.bundle,
            ctx.profile,
            ctx.work / "prepare",
            static=ctx.static,
            dynamic_batch=ctx.dynamic_batch,
        )
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
        # the child derives its streaming budget from the cap less its own resident memory
        "memory_cap_mib": build_cfg.build_memory_cap_mib,
    }
    value, rss = quantize_in_child(
        inputs.prepared,
        slim,
        options,
        limits=build_cfg,
        progress=ctx.progress,
        scratch_dir=ctx.work,
    )
    ctx.record_rss(rss)
    return value


def quantize_in_child(
    prepared: PreparedModel,
    calib: CalibrationSet,
    options: dict[str, Any],
    *,
    limits: BuildLimits,
    progress: ProgressFn,
    scratch_dir: Path,
) -> tuple[QuantizedModel, float | None]:
    """:func:`quantize` with ``options`` in the isolated child under the profile's memory cap
    and timeout (shared by the build and ``edge-agent quantize``); returns the model and the
    child's peak RSS (MiB), also put into its report. Out of memory names the stage and a fix."""
    stage = StageTracker(progress)
    try:
        q = run_isolated(
            quantize_target,
            (prepared, calib, options),
            memory_cap_mib=limits.build_memory_cap_mib,
            timeout_s=limits.build_timeout_s,
            progress=stage,
            what="int8 quantization",
            scratch_dir=scratch_dir,
        )
    except BuildFailed as exc:
        if not exc.out_of_memory:
            raise
        # the workspace does not matter here: name the stage and what helps
        raise BuildFailed(
            oom_message(stage.stage, exc.message),
            fix=oom_fix(stage.stage, limits.build_memory_cap_mib),
            out_of_memory=True,
            memory_cap_mib=limits.build_memory_cap_mib,
        ) from exc
    value = q.value
    if q.peak_rss_mib is not None:
        memory = dict(value.report.get("memory") or {})
        memory["isolated_peak_rss_mib"] = round(q.peak_rss_mib, 1)
        value.report["memory"] = memory
        value.report["peak_rss_mib"] = round(q.peak_rss_mib, 1)
    return value, q.peak_rss_mib


def quantize_candidate(
    ctx: BuildContext,
    inputs: BuildInputs,
    cand: Candidate,
    search_reasons: Mapping[str, SearchReason] | None = None,
) -> Path:
    """Quantize the prepared model for ``cand`` (int8); returns the Q/DQ ONNX file.

    ``ctx`` may be an accuracy-search attempt's context (another calibration method, more
    nodes in ``keep_float``); ``search_reasons`` says why the search kept its nodes float."""
    with ctx.watch.stage("quantize"):
        quantized = _quantize_isolated(ctx, inputs)
    # the range collection inside quantize counts as calibration time
    timings = ctx.watch.timings
    calib_s = float(quantized.report.get("calibration_s", 0.0) or 0.0)
    calib_s = min(calib_s, timings.get("quantize", 0.0))
    timings["quantize"] = timings.get("quantize", 0.0) - calib_s
    ctx.watch.add("calibrate", calib_s)
    reasons = dict(search_reasons or {})
    yaml_keep = [n for n in ctx.bundle.config.keep_float if n not in reasons]
    facts = graph_facts(inputs.prepared.path, quantized.recipe)
    cand.quantization = QuantizationRecord(
        recipe=quantized.recipe,
        method=quantized.method,
        excluded_nodes=quantized.excluded_nodes,
        auto_excluded=quantized.auto_excluded,
        calib_sha256=quantized.calib_sha256,
        calibration_frames=len(inputs.calib.calib),
        report=quantized.report,
        float_layers=explain_float_layers(quantized, yaml_keep, facts.ops, reasons),
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
    ctx: BuildContext, inputs: BuildInputs, cand: Candidate, onnx_path: Path, stage: str
) -> BuildRequest:
    build_cfg = ctx.build_cfg
    out_dir = ctx.work / stage
    out_dir.mkdir()
    timing_cache = None
    if build_cfg.timing_cache and ctx.backend_name == "tensorrt":
        name = f"{ctx.backend_name}-{ctx.backend_version}.cache"
        timing_cache = (ctx.cache_root / "timing" / name).resolve()
    if ctx.options.overrides.timing_cache is not None:  # --timing-cache wins over the profile
        timing_cache = ctx.options.overrides.timing_cache.resolve()
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
        memory_cap_mib=build_cfg.build_memory_cap_mib,
        board=ctx.target_board,
    )


def build_candidate(
    ctx: BuildContext,
    inputs: BuildInputs,
    cand: Candidate,
    *,
    stage: str | None = None,
    search_reasons: Mapping[str, SearchReason] | None = None,
) -> None:
    """Quantize (int8) and build ``cand`` into ``stage`` (default ``stage-<precision>``) in
    the work directory."""
    onnx_path = inputs.prepared.path
    if cand.precision == "int8":
        onnx_path = quantize_candidate(ctx, inputs, cand, search_reasons)
    request = _request(ctx, inputs, cand, onnx_path, stage or f"stage-{cand.precision}")
    with ctx.watch.stage("build"):
        ctx.progress("build", 0.0, f"building {cand.precision} with {ctx.backend_name}")
        result, rss, workspace_used = _build_with_retry(ctx, request)
        ctx.record_rss(rss)
    cand.staged = request.out_dir
    cand.result = result
    cand.build = BuildRecord(workspace_used, dict(result.info), rss)
