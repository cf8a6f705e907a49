"""The daemon's running components: one pipeline per served model (in the model registry),
the monitor, and the extra components (telemetry, OTA, tests' own). Starting, supervising,
draining and shutting them down, in order."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from agent.app.models import ModelRegistry
from agent.app.monitor_component import MonitorComponent
from agent.app.pipeline_component import PipelineComponent, PipelineFactory
from agent.app.statslog import log_final, log_stats
from agent.app.supervisor import ProgressWatch, Supervisor
from agent.config.agent import AgentConfig
from agent.config.device import DeviceProfile
from agent.core.lifecycle import Component, Health
from agent.core.logs import log_fields
from agent.pipeline.stats import PipelineStats

log = logging.getLogger(__name__)

MonitorFactory = Callable[[DeviceProfile], MonitorComponent]


@dataclass
class Fleet:
    """The fleet side wired for a loaded configuration: its components (in start order),
    those started before the engines are prepared (telemetry: birth, build progress), and
    hooks called on each main-loop tick with the clock's time."""

    components: list[Component] = field(default_factory=list[Component])
    early: list[Component] = field(default_factory=list[Component])
    tick_hooks: list[Callable[[float], None]] = field(default_factory=list[Callable[[float], None]])


class DaemonHandle(Protocol):
    """What the fleet side may ask of the running daemon."""

    def request_reload(self) -> None: ...

    def uptime_s(self) -> float: ...


FleetWiring = Callable[[AgentConfig, DeviceProfile, DaemonHandle], Fleet]
"""Builds the fleet side for a loaded configuration (:class:`agent.app.service.FleetWiring`)."""


def stop_quietly(comp: Component, timeout: float) -> None:
    try:
        comp.stop(timeout)
    except Exception:
        log.exception("stopping %s failed", comp.name, extra=log_fields(event="stop"))


class Components:
    """Pipelines (``models.pipelines``), the monitor (None with ``--no-monitor`` or before
    start) and ``extra`` components: started after the pipelines, stopped first."""

    def __init__(
        self,
        models: ModelRegistry,
        factory: PipelineFactory,
        make_monitor: MonitorFactory | None,
    ) -> None:
        self.models = models
        self.factory = factory
        self.make_monitor = make_monitor
        self.monitor: MonitorComponent | None = None
        self.extra: list[Component] = []

    @property
    def pipelines(self) -> dict[str, PipelineComponent]:
        return self.models.pipelines

    def all(self) -> list[Component]:
        out: list[Component] = list(self.pipelines.values())
        if self.monitor is not None:
            out.append(self.monitor)
        return out + self.extra

    def finished(self) -> bool:
        """Every pipeline's sources ended (False without pipelines)."""
        return bool(self.pipelines) and all(c.finished for c in self.pipelines.values())

    def builds_allowed(self) -> bool:
        """The governor's build admission (True without a monitor)."""
        monitor = self.monitor
        return True if monitor is None else monitor.builds_allowed()

    def governor_state(self) -> str | None:
        return None if self.monitor is None else self.monitor.governor.to_json().get("state")

    def start_pipeline(self, name: str, cfg: AgentConfig, profile: DeviceProfile) -> None:
        comp = self.factory.component(name, cfg, profile)
        comp.start()
        self.pipelines[name] = comp

    def stop_pipeline(self, name: str, timeout: float, reason: str) -> PipelineComponent | None:
        """Stop (draining in-flight frames) and forget ``name``'s pipeline; logs its final
        stats."""
        comp = self.pipelines.pop(name, None)
        if comp is not None:
            comp.stop(timeout=timeout)
            _log_final(comp, reason)
        return comp

    def start_monitor(self, profile: DeviceProfile) -> None:
        if self.make_monitor is not None:
            self.monitor = self.make_monitor(profile)
            self.monitor.start()

    def restart_monitor(self, profile: DeviceProfile, *, new_profile: bool) -> None:
        """After a reload: a new monitor for a new profile, else the same one restarted; the
        governor's decision goes to the new pipelines."""
        if self.monitor is None:
            return
        if new_profile and self.make_monitor is not None:
            self._close_monitor()
            self.monitor = self.make_monitor(profile)
        self.monitor.start()
        self.monitor.reapply()

    def supervise(self, supervisor: Supervisor, watch: ProgressWatch) -> dict[str, Health]:
        """Each component's health, after restarting the failed ones (within the budget)."""
        healths: dict[str, Health] = {}
        for comp in self.all():
            health = comp.health()
            with self.models.swap_lock:  # a restart never races an OTA swap of the same pipeline
                restarted = supervisor.check(comp, health)
            if restarted:
                watch.forget(comp.name)
                if self.monitor is not None and isinstance(comp, PipelineComponent):
                    self.monitor.reapply()  # re-apply to the new pipeline
                health = comp.health()
            healths[comp.name] = health
        return healths

    def drain(
        self, reason: str, timeout_s: float, clock: Callable[[], float]
    ) -> list[PipelineStats]:
        """Stop everything within ``timeout_s``: extras first, then each pipeline draining its
        in-flight frames (their results count in the final stats), then the monitor. Returns
        each pipeline's final stats."""
        deadline = clock() + timeout_s
        for comp in reversed(self.extra):
            stop_quietly(comp, min(2.0, max(0.1, deadline - clock())))
        comps = list(self.pipelines.values())
        finals: list[PipelineStats] = []
        for i, comp in enumerate(comps):
            comp.stop(timeout=max(0.1, (deadline - clock()) / (len(comps) - i)))
            final = _log_final(comp, reason)
            if final is not None:
                finals.append(final)
        self.pipelines.clear()
        if self.monitor is not None:
            self.monitor.stop(1.0)
            self.monitor.close()
            self.monitor = None
        return finals

    def shutdown(self) -> None:
        """Whatever is still running after a failure: stop it, bounded."""
        for comp in self.extra:
            stop_quietly(comp, 1.0)
        for comp in self.pipelines.values():
            stop_quietly(comp, 1.0)
        self.pipelines.clear()
        if self.monitor is not None:
            stop_quietly(self.monitor, 1.0)
            with contextlib.suppress(Exception):
                self.monitor.close()
            self.monitor = None

    def log_stats(self) -> None:
        """One stats line per pipeline, with the governor state and the power, temperature and
        energy figures where the monitor knows them."""
        monitor = self.monitor
        snapshot = monitor.snapshot() if monitor is not None else {}
        reading = (monitor.governor.last_reading if monitor is not None else None) or {}
        for comp in self.pipelines.values():
            stats = comp.stats()
            if stats is not None:
                log_stats(stats, snapshot, reading)

    def _close_monitor(self) -> None:
        if self.monitor is not None:
            self.monitor.stop(1.0)
            self.monitor.close()


def _log_final(comp: PipelineComponent, reason: str) -> PipelineStats | None:
    stats = comp.final_stats()
    if stats is not None:
        log_final(stats, reason)
    return stats
