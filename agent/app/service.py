"""The composition root: :func:`build_service` builds the daemon's whole object graph (run
configuration, event bus, model registry, pipelines, monitor, supervision, reload) and the
fleet side (telemetry over MQTT and Prometheus, commands, OTA) once a configuration is loaded,
wiring the peers (pipeline, monitor, comms, ota) to each other through thin adapters."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from agent import __version__
from agent.app.components import Components, DaemonHandle, Fleet
from agent.app.control import DaemonControl
from agent.app.engines import EnginePreparer
from agent.app.events import EventBus
from agent.app.lifecycle import Daemon, DaemonParts
from agent.app.metrics import metrics_body
from agent.app.models import ModelRegistry
from agent.app.monitor_component import make_monitor
from agent.app.ota import OtaComponent
from agent.app.ota_host import OtaHost
from agent.app.pipeline_component import PipelineFactory
from agent.app.readiness import Readiness
from agent.app.reload import Reloader
from agent.app.runconfig import DaemonOptions, RunConfig
from agent.app.settings import DaemonSettings
from agent.app.supervisor import ProgressWatch, Supervisor
from agent.app.systemd import Notifier
from agent.app.telemetry_component import DetectionsSink, TelemetryComponent
from agent.comms.ports import Control
from agent.comms.prometheus import PrometheusExporter
from agent.comms.service import CommsService
from agent.config.agent import AgentConfig, DaemonConfig
from agent.config.device import DeviceProfile
from agent.config.profiles.board import board_label
from agent.core.lifecycle import Component

log = logging.getLogger(__name__)


class TelemetrySlot:
    """The telemetry component once wired: pipelines built later take its detections sink."""

    def __init__(self) -> None:
        self.telemetry: TelemetryComponent | None = None

    def detections_sink(self) -> DetectionsSink | None:
        return self.telemetry.detections_sink() if self.telemetry is not None else None


class FleetWiring:
    """Builds the fleet side (telemetry, commands, OTA) for a loaded configuration."""

    def __init__(
        self, config: RunConfig, events: EventBus, components: Components, slot: TelemetrySlot
    ) -> None:
        self.config = config
        self.events = events
        self.components = components
        self.slot = slot

    def __call__(self, cfg: AgentConfig, profile: DeviceProfile, daemon: DaemonHandle) -> Fleet:
        """The telemetry and OTA components ``cfg`` asks for. OTA recovery runs here, before
        the engines are prepared, so a committed OTA version is what starts serving."""
        ota: OtaComponent | None = None
        if cfg.ota.enabled:
            host = OtaHost(
                self.config, self.events, self.components.models, self.components.builds_allowed
            )
            ota = OtaComponent(host, cfg, profile)
        telemetry: TelemetryComponent | None = None
        if cfg.mqtt.enabled or cfg.metrics.enabled:
            telemetry = self._telemetry(cfg, profile, ota, daemon)
            if ota is not None:
                ota.publish_state = telemetry.set_model_state
        self.slot.telemetry = telemetry
        comps: list[Component] = [c for c in (telemetry, ota) if c is not None]
        if telemetry is None:
            return Fleet(components=comps)
        return Fleet(components=comps, early=[telemetry], tick_hooks=[telemetry.tick])

    def _telemetry(
        self,
        cfg: AgentConfig,
        profile: DeviceProfile,
        ota: OtaComponent | None,
        daemon: DaemonHandle,
    ) -> TelemetryComponent:
        models, monitor = self.components.models, lambda: self.components.monitor
        service: CommsService | None = None
        if cfg.mqtt.enabled:
            control: Control = DaemonControl(
                self.config, models.latest_frame, daemon.request_reload,
                lambda: ota.updater if ota is not None else None,
            )  # fmt: skip
            service = CommsService(
                cfg.mqtt, fleet=cfg.fleet, device_id=cfg.device_id, state_dir=cfg.state_dir,
                control=control, on_ota_message=ota.on_message if ota is not None else None,
                version=__version__,
            )  # fmt: skip
        exporter = None
        if cfg.metrics.enabled:
            exporter = PrometheusExporter(cfg.metrics, device=cfg.device_id)

        board = board_label(self.config.options.root)

        def metrics() -> dict[str, Any]:
            body = metrics_body(
                daemon.uptime_s(), models.all_stats(), models.model_infos(), monitor()
            )
            in_force = self.config.profile  # a reload or set-profile may have switched it
            body.update(board=board, profile=in_force.name if in_force is not None else None)
            return body

        return TelemetryComponent(
            service, exporter, events=self.events, metrics=metrics,
            profile=lambda: self.config.profile, interval_s=profile.telemetry.interval_s,
        )  # fmt: skip


def build_service(
    options: DaemonOptions,
    *,
    notifier: Notifier | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Daemon:
    """The daemon for ``edge-agent run`` with these options, ready to :meth:`~Daemon.run`."""
    config = RunConfig(options)
    events = EventBus(clock=clock)
    models = ModelRegistry(events, config.bundle_overrides)
    slot = TelemetrySlot()
    factory = PipelineFactory(options, events, models.prepared.__getitem__, slot.detections_sink)
    monitors = functools.partial(
        make_monitor, pipelines=models.live_pipelines, source=options.monitor_source,
        root=options.root, on_event=events.emit,
    )  # fmt: skip
    components = Components(models, factory, monitors if options.monitor else None)
    fleet = FleetWiring(config, events, components, slot)
    engines = EnginePreparer(events, config.cache_dir, options.progress_factory)
    defaults = DaemonConfig()
    supervisor = Supervisor(defaults.restart_budget, defaults.restart_window_s, clock=clock)
    watch = ProgressWatch(defaults.progress_timeout_s, clock=clock)
    readiness = Readiness(defaults.ready_timeout_s)
    settings = DaemonSettings(options, supervisor, watch, readiness)
    reloader = Reloader(
        config, components=components, engines=engines, events=events, watch=watch,
        apply_settings=settings.apply, stop_timeout=lambda: settings.stop_timeout_s,
    )  # fmt: skip
    parts = DaemonParts(
        config, events, components, engines, supervisor, watch, readiness, settings, reloader, fleet
    )
    return Daemon(parts, notifier=notifier, clock=clock)
