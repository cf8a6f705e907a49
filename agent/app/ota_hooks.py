"""Ready-made updater hooks on top of the engine layer, for the daemon to use or wrap.

* :func:`engine_build_hook` — ``build(bundle_dir)`` via :func:`agent.engine.build.build_engine`
  (isolated child, engine cache: a rollback to a version built before is a cache hit).
* :func:`golden_checker` — ``check_golden(result, bundle_dir)`` runs the manifest's golden
  inputs through the new engine and compares with the expected outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from agent.backends.base import ProgressFn, no_progress
from agent.config.schema import DeviceProfile
from agent.core.errors import OtaError, ValidationFailed
from agent.core.fsutil import sha256_file
from agent.ota.manifest import validate_manifest
from agent.ota.store import ENVELOPE_FILE
from agent.ota.updater import BuildResult

__all__ = ["engine_build_hook", "golden_checker"]


def engine_build_hook(
    profile: DeviceProfile,
    *,
    cache_dir: Path,
    calib_dirs: Mapping[str, Path] | None = None,
    precision: str = "auto",
    l4t_release: str | None = None,
    progress: ProgressFn = no_progress,
    gate_seconds: float = 3.0,
) -> Callable[[Path], BuildResult]:
    """A build hook: bundle → validated artifact with the gate's batch-1 throughput.

    ``calib_dirs`` maps model name → calibration frames (default: ``calib/<name>/`` or the
    bundle's own ``calib/``)."""
    from agent.engine.build import build_engine
    from agent.engine.bundle import load_bundle

    calib = dict(calib_dirs or {})

    def build(bundle_dir: Path) -> BuildResult:
        name = load_bundle(bundle_dir).config.name
        outcome = build_engine(
            bundle_dir,
            profile,
            precision=precision,  # pyright: ignore[reportArgumentType]
            calib_dir=calib.get(name),
            cache_dir=cache_dir,
            l4t_release=l4t_release,
            progress=progress,
            gate_seconds=gate_seconds,
        )
        artifact = outcome.artifact
        chosen = outcome.report.results.get(artifact.precision)
        fps = None
        if chosen is not None and chosen.latency is not None and chosen.latency.mean_ms > 0:
            fps = chosen.latency.throughput
        return BuildResult(
            artifact_dir=artifact.dir,
            engine_sha256=sha256_file(artifact.main_path),
            validated_fps=fps,
            precision=artifact.precision,
            cache_hit=outcome.cache_hit,
            details={"why": outcome.report.why},
        )

    return build


def golden_checker(*, threads: int = 0) -> Callable[[BuildResult, Path], None]:
    """A check_golden hook reading the golden spec from the installed bundle's signed
    manifest; raises :class:`~agent.core.errors.ValidationFailed` on a mismatch."""

    def check(result: BuildResult, bundle_dir: Path) -> None:
        import json

        from agent.backends.base import get_backend
        from agent.engine.cache import load_artifact

        envelope_path = bundle_dir / ENVELOPE_FILE
        try:
            envelope: Any = json.loads(envelope_path.read_text(encoding="utf-8"))
            manifest = validate_manifest(envelope["manifest"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise OtaError(
                f"cannot read the signed manifest of the installed bundle: {exc}",
                reason="state_corrupt",
                fix="push the version again",
                path=envelope_path,
            ) from exc
        golden = manifest.golden
        if golden is None:
            return
        atol, rtol = float(golden.atol), float(golden.rtol)
        artifact = load_artifact(result.artifact_dir)
        backend = get_backend(artifact.backend)
        with backend.runner(artifact.dir, artifact.main_file, threads=threads) as runner:
            for case in golden.cases:
                try:
                    feed = np.load(bundle_dir / case.input, allow_pickle=False)
                    expected = np.load(bundle_dir / case.expected, allow_pickle=False)
                    outputs = runner.infer({golden.input_name: np.ascontiguousarray(feed)})
                except Exception as exc:  # a bad .npy, a wrong shape/dtype/input name
                    raise ValidationFailed(
                        f"golden case {case.input}: cannot run it: {type(exc).__name__}: {exc}",
                        fix="ship golden inputs as plain .npy arrays with the model input's "
                        "name, shape and dtype (edge-agent push --golden DIR)",
                    ) from exc
                name = golden.output_name or next(iter(outputs))
                if name not in outputs:
                    raise ValidationFailed(
                        f"golden output {name!r} is not an output of the engine "
                        f"({sorted(outputs)})",
                        fix="set the golden output name to one of the model's outputs",
                    )
                got = outputs[name]
                if got.shape != expected.shape:
                    raise ValidationFailed(
                        f"golden case {case.input}: output shape {got.shape} != expected "
                        f"{expected.shape}",
                        fix="regenerate the expected outputs with this model",
                    )
                if not np.allclose(got, expected, atol=atol, rtol=rtol, equal_nan=False):
                    worst = float(np.max(np.abs(got.astype(np.float64) - expected)))
                    raise ValidationFailed(
                        f"golden case {case.input}: max |Δ| {worst:.4g} exceeds atol {atol:g} "
                        f"+ rtol {rtol:g}",
                        fix="check the model export, or loosen the golden tolerance if the "
                        "quantized engine is expected to differ this much",
                    )

    return check
