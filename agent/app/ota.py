"""OTA inside the daemon: the :class:`OtaComponent` runs the
:class:`~agent.ota.updater.Updater` with its ports implemented by the adapters of
:mod:`agent.app.ota_adapters` (builds in the isolated child, held back while the governor
disallows builds; activation by a hot swap of the model's pipeline between frames; probation
figures from the pipeline; states as events and the retained ``model`` record).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from agent.app.ota_adapters import (
    EngineBuilderAdapter,
    EventPublisher,
    PipelineServing,
    engine_build_hook,
    golden_checker,
)
from agent.app.ota_host import OtaHost
from agent.backends.registry import get_backend
from agent.config.agent import AgentConfig
from agent.config.device import DeviceProfile
from agent.config.profiles.board import jetpack_for_l4t
from agent.core.errors import EdgeAgentError
from agent.core.lifecycle import Health
from agent.core.logs import log_fields
from agent.ota.ports import UpdaterPorts
from agent.ota.updater import Updater
from agent.ota.verify import DeviceFacts

__all__ = ["OtaComponent"]

log = logging.getLogger(__name__)


class OtaComponent:
    """The updater thread, wired to the daemon through the OTA port adapters."""

    name = "ota"

    def __init__(self, daemon: OtaHost, cfg: AgentConfig, profile: DeviceProfile):
        self.daemon = daemon
        self._publisher = EventPublisher(daemon)
        ports = UpdaterPorts(
            builder=self._builder(cfg, profile),
            serving=PipelineServing(daemon),
            admission=daemon,
            publisher=self._publisher,
        )
        facts = DeviceFacts.from_config(
            cfg,
            profile,
            tensorrt_version=_tensorrt_version(profile),
            jetpack_version=jetpack_for_l4t(daemon.l4t),
        )
        self.updater: Updater = Updater.from_config(
            cfg, facts, ports, config_dir=daemon.config_path.parent
        )
        self._recovered = self._recover(cfg)

    @property
    def publish_state(self) -> Callable[[dict[str, Any]], None]:
        """Where the retained ``model`` record goes (set once telemetry is wired)."""
        return self._publisher.sink

    @publish_state.setter
    def publish_state(self, sink: Callable[[dict[str, Any]], None]) -> None:
        self._publisher.sink = sink

    def _builder(self, cfg: AgentConfig, profile: DeviceProfile) -> EngineBuilderAdapter:
        calib = {m.name: m.calib_dir for m in cfg.models if m.calib_dir is not None}
        build = engine_build_hook(
            profile,
            cache_dir=self.daemon.cache_dir(cfg),
            calib_dirs=calib,
            l4t_release=self.daemon.l4t,
            progress=self._progress,
        )
        return EngineBuilderAdapter(build, golden_checker(threads=profile.runtime.intra_op_threads))

    def _recover(self, cfg: AgentConfig) -> bool:
        """Finish an interrupted update and serve the committed OTA bundles; True when
        recovery changed something (start() reports it: telemetry is not wired yet)."""
        report = self.updater.recover()
        if report.interrupted_at is not None:
            log.warning(
                "an update was interrupted at %s; %s",
                report.interrupted_at,
                "resuming it" if report.resumed else "the committed model serves",
                extra=log_fields(event="ota", interrupted_at=report.interrupted_at),
            )
        for ref in cfg.models:
            bundle = self.updater.serving_bundle(ref.name)
            if bundle is not None and bundle.resolve() != ref.bundle.resolve():
                self.daemon.bundle_overrides[ref.name] = bundle
                log.info(
                    "model %s: serving the committed OTA bundle %s",
                    ref.name,
                    bundle,
                    extra=log_fields(event="ota", model=ref.name, bundle=str(bundle)),
                )
        return report.interrupted_at is not None

    def _progress(self, stage: str, fraction: float, message: str) -> None:
        self.daemon.emit_throttled(
            "build.progress", {"stage": stage, "fraction": round(fraction, 3), "message": message}
        )

    # -- component

    def on_message(self, topic: str, payload: bytes) -> None:
        del topic
        self.updater.submit(payload)

    def start(self) -> None:
        # The record recovery finished (e.g. "failed: interrupted at probation" after a crash)
        # was written before MQTT was wired: publish it now, retained, so the broker's copy
        # does not keep saying "probation"; an event only when recovery changed something.
        record = self.updater.status()
        if record is not None:
            if self._recovered:
                self._publisher.publish_state(record)
            else:
                self.publish_state(record)
        self.updater.start()

    def health(self) -> Health:
        return Health()

    def snapshot(self) -> dict[str, Any]:
        return {
            "update": self.updater.status(),
            "committed": {k: v.version for k, v in self.updater.committed().items()},
            "dropped": self.updater.dropped(),
        }

    def stop(self, timeout: float) -> None:
        self.updater.stop(timeout_s=timeout)


def _tensorrt_version(profile: DeviceProfile) -> str | None:
    """The TensorRT the backend loads (JetPack's is a system package, not a pip dist)."""
    if profile.build.backend != "tensorrt":
        return None
    try:
        return get_backend("tensorrt").version()
    except EdgeAgentError:
        return None
