"""The build orchestrator: model bundle → validated, cached engine artifact.

::

    load bundle → prepare → calibration set → for each candidate precision:
        cache lookup → (miss) quantize (int8, isolated) → backend build (isolated; one retry at
        half the workspace after running out of memory) → validate against the float
        reference → commit to the cache (manifest carries the gate report) → choose

The float reference is the prepared float model run by ONNX Runtime on the CPU. Everything is
built in a ``.tmp-build-*`` directory under the cache root, removed at the end whatever happens;
only complete, verified entries are ever published (by :meth:`EngineCache.commit`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np

from agent.backends.base import (
    Backend,
    BuildRequest,
    BuildResult,
    ProgressFn,
    Runner,
    get_backend,
    no_progress,
)
from agent.config.schema import DeviceProfile
from agent.core.errors import BackendUnavailable, BuildFailed, CalibrationError, ValidationFailed
from agent.engine.bundle import ModelBundle, load_bundle
from agent.engine.cache import Artifact, CacheKey, EngineCache
from agent.engine.isolate import build_isolated, run_isolated
from agent.engine.validate import (
    GateReport,
    PrecisionResult,
    choose_precision,
    validate_candidates,
)

__all__ = [
    "BuildOutcome",
    "build_engine",
    "default_cache_dir",
    "resolve_calib_dir",
]

log = logging.getLogger(__name__)

RequestedPrecision = Literal["int8", "fp16", "fp32", "auto"]

REFERENCE = "fp32 onnxruntime CPU (prepared float model)"
_MIN_WORKSPACE_MIB = 16


@dataclass
class BuildOutcome:
    """The chosen artifact, the gate report and how the build went."""

    artifact: Artifact
    report: GateReport
    cache_hit: bool
    timings: dict[str, float]
    peak_rss_mib: float | None
    artifacts: dict[str, Artifact] = field(default_factory=dict[str, Artifact])
    notes: list[str] = field(default_factory=list[str])

    def to_json(self) -> dict[str, Any]:
        return {
            "artifact": str(self.artifact.dir),
            "precision": self.artifact.precision,
            "why": self.report.why,
            "cache_hit": self.cache_hit,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "peak_rss_mib": None if self.peak_rss_mib is None else round(self.peak_rss_mib, 1),
            "artifacts": {p: str(a.dir) for p, a in self.artifacts.items()},
            "report": self.report.to_json(),
            "notes": self.notes,
        }


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CACHE_HOME/edge-agent`` when XDG_CACHE_HOME is set, else ``.cache/edge-agent``."""
    import os

    env = os.environ if environ is None else environ
    xdg = env.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg) / "edge-agent"
    return Path(".cache") / "edge-agent"


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


# ---------------------------------------------------------------------------- child targets


def quantize_target(
    progress: ProgressFn, prepared: Any, calib: Any, options: dict[str, Any]
) -> Any:
    """Quantize in the isolated child (calibration can use a lot of memory)."""
    from agent.engine.quantize import quantize

    return quantize(prepared, calib, progress=progress, **options)


# ---------------------------------------------------------------------------- helpers


def _bundle_digest(bundle: ModelBundle) -> str:
    text = bundle.config.model_dump_json() + "\0" + "\n".join(bundle.labels)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _clear_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)


class _Stopwatch:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start


def _max(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


@dataclass
class _Candidate:
    precision: str
    key: CacheKey
    artifact: Artifact | None = None  # cache hit
    staged: Path | None = None  # freshly built
    result: BuildResult | None = None
    manifest_extra: dict[str, Any] = field(default_factory=dict[str, Any])


def _build_with_retry(
    backend_name: str,
    request: BuildRequest,
    profile: DeviceProfile,
    progress: ProgressFn,
    *,
    notes: list[str],
    scratch_dir: Path | None = None,
) -> tuple[BuildResult, float | None, int]:
    """Backend build in the isolated child; after running out of memory, retry once with half
    the workspace. Returns (result, peak RSS MiB, workspace used)."""
    cap = profile.build.build_memory_cap_mib
    timeout = profile.build.build_timeout_s
    try:
        outcome = build_isolated(
            backend_name,
            request,
            memory_cap_mib=cap,
            timeout_s=timeout,
            progress=progress,
            scratch_dir=scratch_dir,
        )
        return outcome.value, outcome.peak_rss_mib, request.workspace_mib
    except BuildFailed as first:
        if not first.out_of_memory:
            raise
        half = max(_MIN_WORKSPACE_MIB, request.workspace_mib // 2)
        note = (
            f"{request.precision} build ran out of memory with workspace "
            f"{request.workspace_mib} MiB under a {cap} MiB cap; retrying once with {half} MiB"
        )
        log.warning(note)
        notes.append(note)
        progress("build", 0.0, note)
        _clear_dir(request.out_dir)
        retry = dataclasses.replace(request, workspace_mib=half)
        try:
            outcome = build_isolated(
                backend_name,
                retry,
                memory_cap_mib=cap,
                timeout_s=timeout,
                progress=progress,
                scratch_dir=scratch_dir,
            )
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


def _stored_result(artifact: Artifact, precision: str) -> PrecisionResult | None:
    report = artifact.manifest.get("validation")
    if not isinstance(report, dict):
        return None
    data = report.get("results", {}).get(precision)
    if not isinstance(data, dict):
        return None
    try:
        return PrecisionResult.from_json(data)
    except (KeyError, TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------- orchestrator


def build_engine(
    bundle_path: Path,
    profile: DeviceProfile,
    *,
    precision: RequestedPrecision,
    calib_dir: Path | None,
    cache_dir: Path,
    l4t_release: str | None = None,
    progress: ProgressFn = no_progress,
    force: bool = False,
    gate_seconds: float = 3.0,
    gate_iterations: int = 200,
) -> BuildOutcome:
    """Build (or fetch from the cache) a validated engine for ``bundle_path`` on ``profile``.

    Raises :class:`ModelError`, :class:`CalibrationError`,
    :class:`BuildFailed` or :class:`ValidationFailed`, each saying
    how to fix the problem; nothing half-written is left in ``cache_dir``.
    """
    from agent.engine.calibration import load_calibration_set
    from agent.engine.prepare import prepare

    watch = _Stopwatch()
    notes: list[str] = []
    build_cfg = profile.build
    backend_name = build_cfg.backend
    backend: Backend = get_backend(backend_name)
    backend_version = backend.version()
    supported = backend.precisions

    if precision == "auto":
        wanted = [p for p in build_cfg.precisions if p in supported]
        if not wanted:
            raise BackendUnavailable(
                f"none of the profile's precisions {build_cfg.precisions} can be built by "
                f"{backend_name} (it builds {list(supported)})",
                fix=f"add one of {list(supported)} to build.precisions of profile {profile.name}",
            )
    else:
        if precision not in build_cfg.precisions:
            raise BuildFailed(
                f"precision {precision} is not allowed by device profile {profile.name} "
                f"(build.precisions: {build_cfg.precisions})",
                fix=f"use one of {build_cfg.precisions} or --precision auto",
            )
        if precision not in supported:
            raise BackendUnavailable(
                f"backend {backend_name} cannot build {precision} (it builds {list(supported)})",
                fix=f"use --precision {' or '.join(supported)}, or a profile with another backend",
            )
        wanted = [precision]

    progress("load", 0.0, f"loading bundle {bundle_path}")
    bundle = load_bundle(Path(bundle_path))
    config = bundle.config
    cache_root = Path(cache_dir).resolve()
    cache = EngineCache(cache_root)
    cache_root.mkdir(parents=True, exist_ok=True)
    work = cache_root / f".tmp-build-{config.name}-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    peak_rss: float | None = None
    static = backend_name == "onnxruntime"
    threads = profile.runtime.intra_op_threads
    try:
        # ---------------------------------------------------------------- prepare
        with watch.stage("prepare"):
            progress("prepare", 0.0, "checking and shaping the ONNX model")
            prepared = prepare(bundle, profile, work / "prepare", static=static)
            progress("prepare", 1.0, "; ".join(prepared.notes) or "ok")
        input_name = config.input.name
        shapes = prepared.shapes[input_name]
        nchw = config.input.layout == "NCHW"
        size_hw = (shapes.opt[2], shapes.opt[3]) if nchw else (shapes.opt[1], shapes.opt[2])

        # ---------------------------------------------------------------- calibration frames
        with watch.stage("calibrate"):
            directory = resolve_calib_dir(bundle, calib_dir)
            cal = build_cfg.calibration
            calib = load_calibration_set(
                directory, bundle, size_hw, cal.frames, cal.heldout_frames, progress=progress
            )
        if not calib.heldout:
            raise CalibrationError(
                "no held-out frames for the validation gate",
                fix="set build.calibration.heldout_frames > 0 and add that many frames",
                path=directory,
            )

        # ---------------------------------------------------------------- keys + lookup
        dla_core = build_cfg.dla.core if build_cfg.dla.enabled else None
        bundle_digest = _bundle_digest(bundle)
        candidates: list[_Candidate] = []
        for prec in wanted:
            recipe: dict[str, Any] = {"static": static, "bundle_config": bundle_digest}
            if prec == "int8":
                recipe.update(
                    {
                        "recipe": backend_name,
                        "method": cal.method,
                        "percentile": cal.percentile if cal.method == "percentile" else None,
                        "keep_float": sorted(config.keep_float),
                    }
                )
            key = CacheKey(
                onnx_sha256=bundle.onnx_sha256,
                calib_sha256=calib.sha256 if prec == "int8" else "none",
                precision=prec,
                shapes=prepared.shapes,
                workspace_mib=build_cfg.workspace_mib,
                backend=backend_name,
                backend_version=backend_version,
                gpu_compute_capability=profile.identity.gpu_compute_capability,
                dla_core=dla_core,
                l4t_release=l4t_release,
                model=config.name,
                recipe=recipe,
            )
            hit = None if force else cache.lookup(key)
            candidates.append(_Candidate(prec, key, artifact=hit))
        all_hit = all(c.artifact is not None for c in candidates)
        stored = {
            c.precision: _stored_result(c.artifact, c.precision)
            for c in candidates
            if c.artifact is not None
        }
        if all_hit and all(v is not None for v in stored.values()):
            results = {p: r for p, r in stored.items() if r is not None}
            first = candidates[0].artifact
            assert first is not None
            old = GateReport.from_json(first.manifest["validation"])
            report = GateReport(
                task=config.task,
                frames=old.frames,
                reference=old.reference,
                results=results,
                requested=precision,
                measured_at=old.measured_at,
            )
            chosen, why = choose_precision(results, precision, build_cfg.precisions, supported)
            report.chosen, report.why = chosen, why
            artifacts = {c.precision: c.artifact for c in candidates if c.artifact is not None}
            progress("done", 1.0, f"cache hit: {artifacts[chosen].dir}")
            return BuildOutcome(
                artifact=artifacts[chosen],
                report=report,
                cache_hit=True,
                timings=watch.timings,
                peak_rss_mib=None,
                artifacts=artifacts,
                notes=notes,
            )

        # ---------------------------------------------------------------- quantize + build
        for cand in candidates:
            if cand.artifact is not None:
                continue
            onnx_path = prepared.path
            if cand.precision == "int8":
                with watch.stage("quantize"):
                    progress("quantize", 0.0, f"calibrating on {len(calib.calib)} frames")
                    slim = dataclasses.replace(calib, heldout=[], heldout_frames=[])
                    options = {
                        "recipe": backend_name,
                        "method": cal.method,
                        "keep_float": list(config.keep_float),
                        "work_dir": work / "quantize",
                        "cache_dir": cache_root / "calibration",
                        "percentile": cal.percentile,
                    }
                    try:
                        q = run_isolated(
                            quantize_target,
                            (prepared, slim, options),
                            memory_cap_mib=build_cfg.build_memory_cap_mib,
                            timeout_s=build_cfg.build_timeout_s,
                            progress=progress,
                            what="int8 quantization",
                            scratch_dir=work,
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
                    peak_rss = _max(peak_rss, q.peak_rss_mib)
                    quantized = q.value
                # the range collection inside quantize counts as calibration time
                calib_s = float(quantized.report.get("calibration_s", 0.0) or 0.0)
                calib_s = min(calib_s, watch.timings.get("quantize", 0.0))
                watch.timings["quantize"] = watch.timings.get("quantize", 0.0) - calib_s
                watch.timings["calibrate"] = watch.timings.get("calibrate", 0.0) + calib_s
                onnx_path = quantized.path
                cand.manifest_extra["quantization"] = {
                    "recipe": quantized.recipe,
                    "method": quantized.method,
                    "excluded_nodes": list(quantized.excluded_nodes),
                    "auto_excluded": list(quantized.auto_excluded),
                    "calib_sha256": quantized.calib_sha256,
                    "calibration_frames": len(calib.calib),
                    "report": quantized.report,
                }
            out_dir = work / f"stage-{cand.precision}"
            out_dir.mkdir()
            request = BuildRequest(
                onnx_path=Path(onnx_path).resolve(),
                out_dir=out_dir.resolve(),
                precision=cand.precision,  # type: ignore[arg-type]
                shapes=prepared.shapes,
                workspace_mib=build_cfg.workspace_mib,
                optimization_level=build_cfg.optimization_level,
                dla_core=dla_core,
                gpu_fallback=build_cfg.dla.gpu_fallback,
                timing_cache=(
                    (cache_root / "timing" / f"{backend_name}-{backend_version}.cache").resolve()
                    if build_cfg.timing_cache and backend_name == "tensorrt"
                    else None
                ),
                threads=threads,
                static_shapes=static,
            )
            with watch.stage("build"):
                progress("build", 0.0, f"building {cand.precision} with {backend_name}")
                result, rss, workspace_used = _build_with_retry(
                    backend_name, request, profile, progress, notes=notes, scratch_dir=work
                )
                peak_rss = _max(peak_rss, rss)
            cand.staged = out_dir
            cand.result = result
            cand.manifest_extra["build"] = {
                "workspace_mib": workspace_used,
                "info": dict(result.info),
                "peak_rss_mib": None if rss is None else round(rss, 1),
            }

        # ---------------------------------------------------------------- validate
        with watch.stage("validate"), contextlib.ExitStack() as stack:
            ref_backend = backend if backend_name == "onnxruntime" else get_backend("onnxruntime")
            reference = ref_backend.runner(
                prepared.path.parent, prepared.path.name, threads=threads
            )
            stack.enter_context(reference)
            runners: dict[str, Runner] = {}
            for cand in candidates:
                if cand.artifact is not None:
                    where, main_file = cand.artifact.dir, cand.artifact.main_file
                else:
                    assert cand.staged is not None and cand.result is not None
                    where, main_file = cand.staged, cand.result.main_file
                # the cache key carries the DLA core the engine was built for
                runner = backend.runner(
                    where, main_file, threads=threads, dla_core=cand.key.dla_core
                )
                stack.enter_context(runner)
                runners[cand.precision] = runner
            feeds = [{input_name: np.ascontiguousarray(t)} for t in calib.heldout]
            results = validate_candidates(
                config,
                reference,
                runners,
                feeds,
                max_seconds=gate_seconds,
                iterations=gate_iterations,
                progress=progress,
            )
        report = GateReport(
            task=config.task,
            frames=len(feeds),
            reference=REFERENCE,
            results=results,
            requested=precision,
            measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        failure: ValidationFailed | None = None
        try:
            chosen, why = choose_precision(results, precision, build_cfg.precisions, supported)
            report.chosen, report.why = chosen, why
        except ValidationFailed as exc:
            failure = exc
            chosen = None
            report.why = exc.message

        # ---------------------------------------------------------------- commit
        artifacts: dict[str, Artifact] = {}
        progress("commit", 0.0, "publishing to the engine cache")
        for cand in candidates:
            if cand.artifact is not None:
                artifacts[cand.precision] = cand.artifact
                continue
            assert cand.staged is not None and cand.result is not None
            manifest = {
                "backend": backend_name,
                "backend_version": backend_version,
                "precision": cand.precision,
                "main_file": cand.result.main_file,
                "inputs": [t.to_json() for t in cand.result.inputs],
                "outputs": [t.to_json() for t in cand.result.outputs],
                "static_shapes": static,
                "shapes": {k: v.to_json() for k, v in prepared.shapes.items()},
                "input_size_hw": list(size_hw),
                "bundle": {
                    "name": config.name,
                    "version": config.version,
                    "directory": str(bundle.directory),
                    "onnx_sha256": bundle.onnx_sha256,
                    "config": config.model_dump(mode="json"),
                    "labels": list(bundle.labels),
                },
                "profile": profile.name,
                "calibration": {
                    "directory": str(directory),
                    "sha256": calib.sha256,
                    "calib_frames": len(calib.calib),
                    "heldout_frames": len(calib.heldout),
                },
                "prepare_notes": list(prepared.notes),
                "validation": report.to_json(),
                "gate": {
                    "passed": results[cand.precision].passed,
                    "chosen": cand.precision == chosen,
                },
                **cand.manifest_extra,
            }
            artifacts[cand.precision] = cache.commit(cand.key, cand.staged, manifest)
        progress("commit", 1.0, "done")
        if failure is not None or chosen is None:
            raise failure or ValidationFailed("no precision chosen")
        log.info(
            "engine built",
            extra={
                "model": config.name,
                "precision": chosen,
                "artifact": str(artifacts[chosen].dir),
            },
        )
        return BuildOutcome(
            artifact=artifacts[chosen],
            report=report,
            cache_hit=False,
            timings=watch.timings,
            peak_rss_mib=peak_rss,
            artifacts=artifacts,
            notes=notes + list(prepared.notes),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
