"""The model registry: what serves each model (prepared engine, bundle, running pipeline) and
the hot swap an OTA update asks for; the figures others read about a model (stats, failures,
latest frame, model info)."""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from agent.app.engines import PreparedModel
from agent.app.events import EventBus
from agent.app.exits import RunError
from agent.app.pipeline_component import PipelineComponent
from agent.engine.artifact import engine_sha256_or_none
from agent.engine.bundle import served_bundle
from agent.engine.cache import load_artifact
from agent.pipeline.pipeline import Pipeline
from agent.pipeline.stats import PipelineStats

log = logging.getLogger(__name__)


class ModelRegistry:
    """Model name → prepared engine and pipeline component. ``bundle_overrides`` (shared with
    the run configuration) maps a model to the bundle that serves instead of the config's (a
    committed OTA version)."""

    def __init__(self, events: EventBus, bundle_overrides: dict[str, Path]) -> None:
        self.events = events
        self.bundle_overrides = bundle_overrides
        self.pipelines: dict[str, PipelineComponent] = {}
        self.prepared: dict[str, PreparedModel] = {}
        #: a supervisor restart never races an OTA swap of the same pipeline
        self.swap_lock = threading.RLock()

    def live_pipelines(self) -> list[Pipeline]:
        return [c.pipeline for c in self.pipelines.values() if c.pipeline is not None]

    def pipeline_stats(self, model: str) -> PipelineStats | None:
        comp = self.pipelines.get(model)
        return comp.stats() if comp is not None else None

    def all_stats(self) -> dict[str, PipelineStats | None]:
        """Each served model's pipeline stats (None while not running)."""
        return {name: comp.stats() for name, comp in list(self.pipelines.items())}

    def pipeline_failures(self, model: str) -> tuple[str, ...]:
        comp = self.pipelines.get(model)
        if comp is None or comp.pipeline is None:
            return ("not running",)
        return comp.pipeline.health().failures

    def latest_frame(self, source: str | None) -> np.ndarray | None:
        """The newest decoded frame of ``source`` (any source when None), or None."""
        for comp in list(self.pipelines.values()):
            pipe = comp.pipeline
            if pipe is None:
                continue
            frame = pipe.latest_frame(source)
            if frame is not None:
                return frame
        return None

    def model_info(self, model: str) -> dict[str, Any] | None:
        """Name, bundle version, precision and engine hash of what serves ``model``."""
        comp = self.pipelines.get(model)
        pipe = comp.pipeline if comp is not None else None
        if pipe is None:
            return None
        artifact = pipe.artifact
        return {
            "name": model,
            "version": pipe.bundle.version,
            "precision": artifact.precision,
            "engine_hash": engine_sha256_or_none(artifact),
        }

    def model_infos(self) -> dict[str, dict[str, Any] | None]:
        return {name: self.model_info(name) for name in list(self.pipelines)}

    def swap_model(self, model: str, bundle_dir: Path, artifact_dir: Path) -> None:
        """Serve ``artifact_dir`` (built from ``bundle_dir``) for ``model``: the pipeline's pool
        is swapped between frames (see :meth:`Pipeline.swap`); later restarts and reloads use
        the new bundle. Raises, with the old model still serving, when the swap fails."""
        artifact = load_artifact(artifact_dir)
        bundle = served_bundle(bundle_dir, artifact)  # no model parse in the daemon
        with self.swap_lock:
            comp = self.pipelines.get(model)
            if comp is None or comp.pipeline is None:
                raise RunError(
                    f"model '{model}' has no running pipeline to swap",
                    fix="add a source for the model to agent.yaml",
                )
            info = comp.pipeline.swap(artifact=artifact, bundle=bundle.config, labels=bundle.labels)
            old = self.prepared[model]
            outcome = dataclasses.replace(old.outcome, artifact=artifact)
            self.prepared[model] = PreparedModel(old.ref, outcome, bundle)
            self.bundle_overrides[model] = bundle_dir
        self.events.emit(
            "model.swapped", {"model": model, "engine": artifact.dir.name, **info.to_json()}
        )
