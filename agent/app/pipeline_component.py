"""Each served model's :class:`~agent.pipeline.pipeline.Pipeline` as a supervised component, and
the factory that builds one from the prepared engine, the profile's runtime limits and the
sinks ``edge-agent run`` asked for."""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable
from typing import Any

from agent.app.engines import PreparedModel
from agent.app.events import EventBus
from agent.app.runconfig import DaemonOptions
from agent.backends.registry import get_backend
from agent.config.agent import AgentConfig
from agent.config.device import DeviceProfile
from agent.core.lifecycle import Activity, Health
from agent.pipeline.assembly import build_pipeline
from agent.pipeline.pipeline import Pipeline, PipelineOptions
from agent.pipeline.pool.events import PoolEvent, PoolEventKind
from agent.pipeline.sinks import ConsoleSink, FanoutSink, JsonlSink, Sink, SnapshotSink
from agent.pipeline.stats import PipelineStats

log = logging.getLogger(__name__)

#: pool events worth telling the fleet about
_FLEET_POOL_EVENTS = (
    PoolEventKind.WORKER_FAILED,
    PoolEventKind.WORKER_RESTARTED,
    PoolEventKind.RESTART_BUDGET_EXHAUSTED,
    PoolEventKind.RESIZED,
)


class PipelineComponent:
    """One model's pipeline as a supervised component. A restart builds a fresh Pipeline on the
    same (already validated) engine."""

    def __init__(self, name: str, make: Callable[[], Pipeline]) -> None:
        self.name = f"pipeline:{name}"
        self.model = name
        self._make = make
        self.pipeline: Pipeline | None = None
        self._serving_workers = 0

    def start(self) -> None:
        self.pipeline = self._make().start()

    def stop(self, timeout: float) -> None:
        if self.pipeline is not None:
            self._serving_workers = self.pipeline.stats().workers
            self.pipeline.stop(timeout=timeout)

    @property
    def finished(self) -> bool:
        return self.pipeline is not None and self.pipeline.finished

    def health(self) -> Health:
        if self.pipeline is None:
            return Health(failure="not started")
        h = self.pipeline.health()
        acts = [Activity("results", h.pending, h.completed)]
        acts.extend(
            Activity(f"source:{name}", sp.state == "streaming", sp.frames)
            for name, sp in h.sources.items()
        )
        return Health(failure="; ".join(h.failures) or None, activities=tuple(acts))

    def stats(self) -> PipelineStats | None:
        return self.pipeline.stats() if self.pipeline is not None else None

    def snapshot(self) -> dict[str, Any]:
        stats = self.stats()
        return stats.to_json() if stats is not None else {}

    def final_stats(self) -> PipelineStats | None:
        """The last stats, with the pool size that served (stopping empties the pool)."""
        stats = self.stats()
        return dataclasses.replace(stats, workers=self._serving_workers) if stats else None


class PipelineFactory:
    """Builds a model's :class:`PipelineComponent`. ``prepared(name)`` is the newest engine (a
    hot swap replaces it); ``detections()`` the telemetry's detections sink, if any."""

    def __init__(
        self,
        options: DaemonOptions,
        events: EventBus,
        prepared: Callable[[str], PreparedModel],
        detections: Callable[[], Sink | None],
    ) -> None:
        self.options = options
        self.events = events
        self.prepared = prepared
        self.detections = detections

    def component(self, name: str, cfg: AgentConfig, profile: DeviceProfile) -> PipelineComponent:
        sources = [s for s in cfg.sources if s.model == name]
        opts = self.options
        backend = get_backend(profile.build.backend)
        options = PipelineOptions(
            workers=opts.workers or profile.runtime.streams,
            max_batch=profile.shapes.batch.opt,
            threads_per_worker=profile.runtime.intra_op_threads,
            queue_depth=profile.runtime.queue_depth,
            realtime=opts.realtime,
            keep_frames=opts.snapshots is not None,
            prefer_gpu_preprocess=profile.build.backend == "tensorrt",
        )

        def make() -> Pipeline:
            prepared = self.prepared(name)
            return build_pipeline(
                model=name,
                artifact=prepared.outcome.artifact,
                backend=backend,
                bundle=prepared.bundle.config,
                labels=prepared.bundle.labels,
                sources=sources,
                sink=FanoutSink(self._sinks(name)),
                options=options,
                on_status=lambda st: self.events.emit("source.state", st.to_json()),
                on_pool_event=self._pool_event,
            )

        return PipelineComponent(name, make)

    def _sinks(self, name: str) -> list[Sink]:
        opts = self.options
        sinks: list[Sink] = []
        detections = self.detections()
        if detections is not None:
            sinks.append(detections)
        if opts.print_results:
            sinks.append(ConsoleSink(sys.stdout))
        if opts.jsonl is not None:
            sinks.append(JsonlSink(opts.jsonl))
        if opts.snapshots is not None:
            sinks.append(SnapshotSink(opts.snapshots / name))
        return sinks

    def _pool_event(self, event: PoolEvent) -> None:
        if event.kind in _FLEET_POOL_EVENTS:
            self.events.emit("pool.event", event.to_json())
