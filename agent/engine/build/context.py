"""The state one build carries from step to step: what was asked, where it works, what the
steps produced so far."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.backends.base import Backend, TargetBoard
from agent.backends.tensorrt.dla import decide_dla
from agent.config.build import BuildLimits
from agent.config.device import DeviceProfile
from agent.config.profiles.board import jetpack_for_l4t
from agent.core.errors import BuildFailed
from agent.core.progress import ProgressFn
from agent.engine.build.outcome import Stopwatch, max_rss
from agent.engine.build.overrides import BuildOverrides
from agent.engine.bundle import ModelBundle
from agent.engine.cache import EngineCache
from agent.engine.calibration import CalibrationSet
from agent.engine.prepare import PreparedModel

__all__ = ["BuildContext", "BuildInputs", "BuildOptions", "SearchLimits", "open_context"]

log = logging.getLogger(__name__)


#: calibration methods the accuracy search may try (the profile's own method goes first)
SEARCH_METHODS = ("entropy", "percentile", "minmax")


@dataclass(frozen=True)
class SearchLimits:
    """Bounds of the gate-driven accuracy search for INT8 (:mod:`agent.engine.build.search`).

    When the INT8 candidate fails the gate, the search re-quantizes it keeping the
    ``sizes[i]`` most sensitive layers in float (for the profile's calibration method, then
    for each other one of ``methods``), at most ``max_attempts`` re-quantizations and
    ``max_seconds`` in all. ``enabled=False`` keeps the first INT8 attempt whatever the gate
    says. Part of the INT8 cache key: other limits can keep other bytes."""

    enabled: bool = True
    methods: tuple[str, ...] = SEARCH_METHODS
    sizes: tuple[int, ...] = (1, 2, 4, 8, 16)
    max_attempts: int = 8
    max_seconds: float = 1200.0

    def to_json(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "methods": list(self.methods),
            "sizes": list(self.sizes),
            "max_attempts": self.max_attempts,
            "max_seconds": self.max_seconds,
        }


@dataclass(frozen=True)
class BuildOptions:
    """What the caller asked for, beyond the bundle and the profile."""

    precision: str
    calib_dir: Path | None
    l4t_release: str | None
    force: bool
    gate_seconds: float
    gate_iterations: int
    search: SearchLimits = field(default_factory=SearchLimits)
    #: trtexec-style command-line overrides (already applied to the context's profile)
    overrides: BuildOverrides = field(default_factory=BuildOverrides)


@dataclass
class BuildContext:
    """One build: its profile, backend, bundle, cache, scratch directory and running totals.

    Everything is built in ``work`` (a ``.tmp-build-*`` directory under the cache root), which
    the orchestrator removes at the end whatever happens."""

    profile: DeviceProfile
    backend: Backend
    backend_version: str
    bundle: ModelBundle
    cache: EngineCache
    cache_root: Path
    work: Path
    options: BuildOptions
    progress: ProgressFn
    watch: Stopwatch = field(default_factory=Stopwatch)
    notes: list[str] = field(default_factory=list[str])
    peak_rss: float | None = None

    @property
    def build_cfg(self) -> BuildLimits:
        return self.profile.build

    @property
    def backend_name(self) -> str:
        return self.profile.build.backend

    @property
    def static(self) -> bool:
        """ONNX Runtime runs static shapes: every dynamic input dimension is pinned."""
        return self.backend_name == "onnxruntime"

    @property
    def dynamic_batch(self) -> bool:
        """ONNX Runtime runs any batch: its static build keeps the batch axis dynamic when the
        profile gives a batch range (only height and width are pinned)."""
        return self.backend_name == "onnxruntime"

    @property
    def threads(self) -> int:
        return self.profile.runtime.intra_op_threads

    @property
    def dla_core(self) -> int | None:
        dla = self.profile.build.dla
        return dla.core if dla.enabled else None

    @property
    def target_board(self) -> TargetBoard:
        """The profile's board, with the JetPack of the detected L4T release (if any)."""
        return target_board(self.profile, self.options.l4t_release)

    def record_rss(self, rss: float | None) -> None:
        self.peak_rss = max_rss(self.peak_rss, rss)


@dataclass(frozen=True)
class BuildInputs:
    """The prepared model and the calibration set every candidate is built from."""

    prepared: PreparedModel
    calib: CalibrationSet
    calib_dir: Path
    size_hw: tuple[int, int]
    input_name: str


def target_board(profile: DeviceProfile, l4t_release: str | None) -> TargetBoard:
    ident = profile.identity
    return TargetBoard(
        profile=profile.name,
        family=str(ident.family),
        dla_cores=ident.dla_cores,
        jetpack=jetpack_for_l4t(l4t_release),
    )


def check_dla(profile: DeviceProfile, backend_version: str, l4t_release: str | None) -> None:
    """Refuse a TensorRT DLA build the installed TensorRT or the board cannot do, before any
    work (the backend's plan applies the same rule again in the build child)."""
    dla = profile.build.dla
    if profile.build.backend != "tensorrt" or not dla.enabled:
        return
    decision = decide_dla(backend_version, target_board(profile, l4t_release), dla.core)
    if not decision.allowed:
        raise BuildFailed(
            f"profile {profile.name}, build.dla.enabled: {decision.reason}", fix=decision.fix
        )
    log.info("profile %s: DLA core %d: %s", profile.name, dla.core, decision.reason)


def open_context(
    *,
    profile: DeviceProfile,
    backend: Backend,
    backend_version: str,
    bundle: ModelBundle,
    cache_dir: Path,
    options: BuildOptions,
    progress: ProgressFn,
) -> BuildContext:
    """A context with the cache root created and a fresh ``.tmp-build-*`` directory in it;
    raises :class:`BuildFailed` first when the profile asks for a DLA this TensorRT and board do
    not have (:func:`check_dla`)."""
    check_dla(profile, backend_version, options.l4t_release)
    cache_root = Path(cache_dir).resolve()
    cache = EngineCache(cache_root)
    cache_root.mkdir(parents=True, exist_ok=True)
    work = cache_root / f".tmp-build-{bundle.config.name}-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    return BuildContext(
        profile=profile,
        backend=backend,
        backend_version=backend_version,
        bundle=bundle,
        cache=cache,
        cache_root=cache_root,
        work=work,
        options=options,
        progress=progress,
    )
