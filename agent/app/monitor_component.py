"""Monitor → governor → pipelines as a supervised component. The sampler thread only enqueues;
:meth:`MonitorComponent.apply` runs on the main loop: the governor's pool size and fps cap go
to every pipeline, energy figures to the stats."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from agent.app.events import Listener
from agent.config.device import DeviceProfile
from agent.core.lifecycle import Activity, Health
from agent.core.logs import log_fields
from agent.monitor.energy import EnergyMeter
from agent.monitor.governor.machine import Governor
from agent.monitor.sample import MonitorSource, Sample
from agent.monitor.sampler import Sampler
from agent.monitor.select import Prefer, open_source
from agent.pipeline.pipeline import Pipeline

log = logging.getLogger(__name__)


class MonitorComponent:
    """Applies the governor's decisions to the pipelines ``pipelines()`` returns; governor
    actions go to ``on_event``."""

    name = "monitor"

    def __init__(
        self,
        profile: DeviceProfile,
        *,
        source: MonitorSource,
        governor: Governor,
        energy: EnergyMeter,
        pipelines: Callable[[], list[Pipeline]],
        on_event: Listener,
    ) -> None:
        self.profile = profile
        self.source = source
        self.governor = governor
        self.energy = energy
        self._pipelines = pipelines
        self._on_event = on_event
        self.last_sample: Sample | None = None
        self.sampler: Sampler | None = None
        self._pending: list[Sample] = []
        self._lock = threading.Lock()
        self._applied: object | None = None  # the governor decision last applied

    def start(self) -> None:
        self.sampler = Sampler(
            self.source, self.profile.monitor.interval_s, on_sample=self._enqueue
        )
        self.sampler.start()
        self._applied = None  # re-apply the decision to (possibly new) pipelines

    def _enqueue(self, sample: Sample) -> None:
        with self._lock:
            self._pending.append(sample)
            del self._pending[:-16]

    def apply(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        pipelines = self._pipelines()
        for sample in pending:
            fps = sum(s.fps for p in pipelines for s in p.stats().sources.values())
            self.energy.add_sample(sample, fps)
            self.last_sample = sample
            for event in self.governor.update(sample):
                log.warning(
                    f"governor: {event.action}: {event.reason}",
                    extra=log_fields(event="governor", governor=event.to_json()),
                )
                self._on_event("governor.action", event.to_json())
        decision = self.governor.decision
        if decision != self._applied:
            for p in pipelines:
                p.resize(decision.pool_size)
                p.limit(fps_cap=decision.fps_cap, shed_frames=decision.shed_frames)
            self._applied = decision

    def reapply(self) -> None:
        """Apply the governor's decision again on the next tick (the pipelines changed)."""
        self._applied = None

    def builds_allowed(self) -> bool:
        return bool(self.governor.decision.builds_allowed)

    def health(self) -> Health:
        if self.sampler is None or not self.sampler.running:
            return Health(failure="monitor sampler thread is not running")
        return Health(activities=(Activity("samples", True, int(self.sampler.reads)),))

    def snapshot(self) -> dict[str, Any]:
        return {"governor": self.governor.to_json(), "energy": self.energy.to_json()}

    def stop(self, timeout: float) -> None:
        if self.sampler is not None:
            self.sampler.stop(timeout=min(timeout, 2.0))

    def close(self) -> None:
        self.source.close()


def make_monitor(
    profile: DeviceProfile,
    pipelines: Callable[[], list[Pipeline]],
    *,
    source: str,
    root: Path,
    on_event: Listener,
) -> MonitorComponent:
    """The monitor for ``profile``: its reading source (``--monitor-source``), a governor that
    lowers the fps cap from the pipelines' configured caps (else 30 fps), an energy meter."""
    caps = [c for p in pipelines() for c in p.fps_caps()]
    governor = Governor(profile, max_fps=max(caps, default=30.0))
    choice = cast(Prefer, source if source in ("jtop", "sysfs", "host") else "auto")
    reading = open_source(profile, root=root, prefer=choice)
    return MonitorComponent(
        profile, source=reading, governor=governor, energy=EnergyMeter(), pipelines=pipelines,
        on_event=on_event,
    )  # fmt: skip
