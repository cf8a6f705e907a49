"""The daemon side the OTA component works against, assembled from the narrow collaborators
(event bus, model registry, running configuration, build admission) instead of the daemon."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.app.events import EventBus
from agent.app.models import ModelRegistry
from agent.app.runconfig import RunConfig
from agent.config.agent import AgentConfig
from agent.pipeline.stats import PipelineStats


class OtaHost:
    """Events (``ota.state``, ``build.progress``), the hot swap and the figures probation
    reads, the governor's build admission, the engine cache and the L4T release in force, and
    the bundle overrides a committed OTA version sets at start."""

    def __init__(
        self,
        config: RunConfig,
        events: EventBus,
        models: ModelRegistry,
        builds_allowed: Callable[[], bool],
    ) -> None:
        self._config = config
        self._events = events
        self._models = models
        self.builds_allowed = builds_allowed

    @property
    def config_path(self) -> Path:
        return self._config.config_path

    @property
    def l4t(self) -> str | None:
        return self._config.l4t

    @property
    def bundle_overrides(self) -> dict[str, Path]:
        return self._config.bundle_overrides

    def cache_dir(self, cfg: AgentConfig) -> Path:
        return self._config.cache_dir(cfg)

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        self._events.emit(kind, data)

    def emit_throttled(self, kind: str, data: dict[str, Any], every_s: float = 1.0) -> None:
        self._events.emit_throttled(kind, data, every_s)

    def swap_model(self, model: str, bundle_dir: Path, artifact_dir: Path) -> None:
        self._models.swap_model(model, bundle_dir, artifact_dir)

    def pipeline_stats(self, model: str) -> PipelineStats | None:
        return self._models.pipeline_stats(model)

    def pipeline_failures(self, model: str) -> tuple[str, ...]:
        return self._models.pipeline_failures(model)
