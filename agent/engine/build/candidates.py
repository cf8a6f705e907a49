"""Which precisions to try, their cache keys, and the all-cached shortcut.

Each candidate precision gets a :class:`~agent.engine.cache.CacheKey` covering everything that
changes its bytes; a build whose candidates are all in the cache (with their stored gate
results) returns them without building or validating anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from agent.backends.base import BuildResult
from agent.config.device import DeviceProfile
from agent.core.errors import BackendUnavailable, BuildFailed
from agent.engine.build.context import BuildContext, BuildInputs
from agent.engine.build.outcome import BuildOutcome, BuildRecord, QuantizationRecord
from agent.engine.bundle import ModelBundle
from agent.engine.cache import Artifact, CacheKey
from agent.engine.validate.choice import choose_precision
from agent.engine.validate.results import GateReport, PrecisionResult

__all__ = [
    "Candidate",
    "RequestedPrecision",
    "cached_outcome",
    "lookup_candidates",
    "wanted_precisions",
]

log = logging.getLogger(__name__)

RequestedPrecision = Literal["int8", "fp16", "fp32", "auto"]


@dataclass
class Candidate:
    """One precision to serve: a cache hit (``artifact``) or a fresh build staged in the work
    directory (``staged`` + ``result``, with the records its manifest carries)."""

    precision: str
    key: CacheKey
    artifact: Artifact | None = None
    staged: Path | None = None
    result: BuildResult | None = None
    quantization: QuantizationRecord | None = None
    build: BuildRecord | None = None
    failure: str | None = None

    def location(self) -> tuple[Path, str]:
        """(directory, main file) of the engine to run."""
        if self.artifact is not None:
            return self.artifact.dir, self.artifact.main_file
        assert self.staged is not None and self.result is not None
        return self.staged, self.result.main_file

    @property
    def fresh(self) -> bool:
        """Built in this run (not a cache hit) and not failed."""
        return self.artifact is None and self.failure is None

    def manifest_extra(self) -> dict[str, Any]:
        """The manifest sections only a fresh build has."""
        extra: dict[str, Any] = {}
        if self.quantization is not None:
            extra["quantization"] = self.quantization.to_json()
        if self.build is not None:
            extra["build"] = self.build.to_json()
        return extra


def wanted_precisions(
    precision: str, profile: DeviceProfile, supported: tuple[str, ...]
) -> list[str]:
    """The precisions to build: the profile's buildable ones for ``auto``, else the one asked
    for, which the profile must allow and the backend must build."""
    build_cfg = profile.build
    backend_name = build_cfg.backend
    if precision == "auto":
        wanted = [p for p in build_cfg.precisions if p in supported]
        if not wanted:
            raise BackendUnavailable(
                f"none of the profile's precisions {build_cfg.precisions} can be built by "
                f"{backend_name} (it builds {list(supported)})",
                fix=f"add one of {list(supported)} to build.precisions of profile {profile.name}",
            )
        return wanted
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
    return [precision]


def _bundle_digest(bundle: ModelBundle) -> str:
    text = bundle.config.model_dump_json() + "\0" + "\n".join(bundle.labels)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _cache_key(ctx: BuildContext, inputs: BuildInputs, precision: str) -> CacheKey:
    config, cal = ctx.bundle.config, ctx.build_cfg.calibration
    recipe: dict[str, Any] = {"static": ctx.static, "bundle_config": _bundle_digest(ctx.bundle)}
    if ctx.dynamic_batch:
        recipe["dynamic_batch"] = True
    if not ctx.options.overrides.empty:  # an override never returns an engine built without it
        recipe["overrides"] = ctx.options.overrides.key_json()
    if precision == "int8":
        recipe.update(
            {
                "recipe": ctx.backend_name,
                "method": cal.method,
                "percentile": cal.percentile if cal.method == "percentile" else None,
                "keep_float": sorted(config.keep_float),
                # every calibration setting (frames, held-out count, whatever is added later)
                # and the gate-driven search change which INT8 bytes are kept
                "calibration": cal.model_dump(mode="json"),
                "search": ctx.options.search.to_json(),
            }
        )
    return CacheKey(
        onnx_sha256=ctx.bundle.onnx_sha256,
        calib_sha256=inputs.calib.sha256 if precision == "int8" else "none",
        precision=precision,
        shapes=inputs.prepared.shapes,
        workspace_mib=ctx.build_cfg.workspace_mib,
        backend=ctx.backend_name,
        backend_version=ctx.backend_version,
        gpu_compute_capability=ctx.profile.identity.gpu_compute_capability,
        dla_core=ctx.dla_core,
        l4t_release=ctx.options.l4t_release,
        model=config.name,
        recipe=recipe,
    )


def lookup_candidates(ctx: BuildContext, inputs: BuildInputs, wanted: list[str]) -> list[Candidate]:
    """One candidate per wanted precision, with its cache entry unless the build is forced."""
    candidates: list[Candidate] = []
    for precision in wanted:
        key = _cache_key(ctx, inputs, precision)
        hit = None if ctx.options.force else ctx.cache.lookup(key)
        candidates.append(Candidate(precision, key, artifact=hit))
    return candidates


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


def cached_outcome(ctx: BuildContext, candidates: list[Candidate]) -> BuildOutcome | None:
    """The outcome straight from the cache when every candidate is cached with its gate
    result; None when something must be built or validated."""
    artifacts = {c.precision: c.artifact for c in candidates if c.artifact is not None}
    if len(artifacts) != len(candidates):
        return None
    stored = {p: _stored_result(a, p) for p, a in artifacts.items()}
    results = {p: r for p, r in stored.items() if r is not None}
    if len(results) != len(stored):
        return None
    old = GateReport.from_json(artifacts[candidates[0].precision].manifest["validation"])
    requested = ctx.options.precision
    # keep what the gate measured (task metrics, power, notes); decide again for this request
    report = dataclasses.replace(old, results=results, requested=requested, chosen=None, why="")
    supported = ctx.backend.precisions
    chosen, why = choose_precision(results, requested, ctx.build_cfg.precisions, supported)
    report.chosen, report.why = chosen, why
    ctx.progress("done", 1.0, f"cache hit: {artifacts[chosen].dir}")
    return BuildOutcome(
        artifact=artifacts[chosen],
        report=report,
        cache_hit=True,
        timings=ctx.watch.timings,
        peak_rss_mib=None,
        artifacts=artifacts,
        notes=ctx.notes,
    )
