"""What the controller answers to reads — the API's GETs, the live stream's renders and the
``/metrics`` scrape — from the store, with the controller's clock.

:class:`FleetReads` is the live stream's :class:`~.stream.FeedSource` too, so a device reads the
same in ``GET /api/devices``, in an ``event: device`` and in the Prometheus series.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.config.fleet import FleetConfig
from agent.fleet.controller.exposition import FleetSample, exposition
from agent.fleet.controller.routes import ApiError
from agent.fleet.controller.views import device_json, summary_json
from agent.fleet.history.buckets import downsample
from agent.fleet.registry.records import DeviceRecord
from agent.fleet.rollout.records import Rollout
from agent.fleet.rollout.states import RolloutState
from agent.fleet.store.base import FleetStore

__all__ = ["BUSY_STATES", "FleetReads"]

BUSY_STATES = (RolloutState.PLANNED.value, RolloutState.RUNNING.value, RolloutState.PAUSED.value)
_EXPORTED_ROLLOUTS = (RolloutState.RUNNING.value, RolloutState.PAUSED.value)

JsonObject = dict[str, Any]


class FleetReads:
    """Reads of one fleet from ``store``; ``ingest_counts`` and ``dropped`` feed ``/metrics``."""

    def __init__(
        self,
        cfg: FleetConfig,
        store: FleetStore,
        clock: Callable[[], float],
        *,
        ingest_counts: Callable[[], dict[str, int]],
        dropped: Callable[[], int],
    ) -> None:
        self.cfg = cfg
        self.fleet = cfg.fleet
        self.store = store
        self.clock = clock
        self.ingest_counts = ingest_counts
        self.dropped = dropped

    # -- devices

    def _json(self, record: DeviceRecord, now: float) -> JsonObject:
        return device_json(record, now, self.cfg.rollouts.offline_after_s)

    def devices(self) -> list[JsonObject]:
        now = self.clock()
        return [self._json(r, now) for r in self.store.registry.devices(self.fleet)]

    def device_doc(self, device_id: str) -> JsonObject | None:
        record = self.store.registry.get(self.fleet, device_id)
        return None if record is None else self._json(record, self.clock())

    def device(self, device_id: str) -> JsonObject:
        doc = self.device_doc(device_id)
        if doc is None:
            raise ApiError(
                404,
                "not_found",
                f"no device {device_id!r} in fleet {self.fleet}",
                "list the devices with GET /api/devices",
            )
        return doc

    def history(self, device_id: str, seconds: int) -> JsonObject:
        self.device(device_id)
        now = self.clock()
        since = now - seconds
        points = self.store.history.points(self.fleet, device_id, since)
        kept = downsample(points, since, now)
        return {"device": device_id, "seconds": seconds, "points": [p.to_json() for p in kept]}

    def events(self, device_id: str, limit: int) -> JsonObject:
        self.device(device_id)
        events = self.store.history.events(self.fleet, device_id, limit)
        return {"device": device_id, "events": [e.to_json() for e in events]}

    def ota(self, device_id: str) -> JsonObject:
        self.device(device_id)
        updates = self.store.history.ota(self.fleet, device_id)
        return {"device": device_id, "updates": [u.to_json() for u in updates]}

    # -- rollouts and the fleet

    def rollout_doc(self, rollout_id: str) -> JsonObject | None:
        doc = self.store.rollouts.get(rollout_id)
        if doc is None or doc.get("fleet") != self.fleet:
            return None
        return Rollout.from_json(doc).status_json()

    def busy_rollouts(self, states: tuple[str, ...] = BUSY_STATES) -> list[JsonObject]:
        docs = self.store.rollouts.list(self.fleet, states=states)
        return [Rollout.from_json(d).status_json() for d in docs]

    def overview(self) -> tuple[list[JsonObject], JsonObject]:
        devices = self.devices()
        return devices, summary_json(self.fleet, devices, self.busy_rollouts(), self.clock())

    def summary(self) -> JsonObject:
        return self.overview()[1]

    def metrics_text(self) -> bytes:
        return exposition(self._sample)

    def _sample(self) -> FleetSample:
        return FleetSample(
            devices=self.devices(),
            rollouts=self.busy_rollouts(_EXPORTED_ROLLOUTS),
            ingest=self.ingest_counts(),
            dropped=self.dropped(),
            max_devices=self.cfg.metrics.max_devices,
        )
