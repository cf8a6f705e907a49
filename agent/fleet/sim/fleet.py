"""``cfg.devices`` simulated devices sharing one scheduler thread and one trust store, with the
controls tests and load runs need: take devices offline and back, progress counts."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from agent.core.errors import EdgeAgentError
from agent.fleet.sim.config import SimConfig
from agent.fleet.sim.device import SimDevice
from agent.fleet.sim.record import SimCounters
from agent.fleet.sim.scheduler import Scheduler
from agent.ota.trust import TrustStore

__all__ = ["SimFleet", "SimProgress"]

_PARALLEL = 32
"""Sessions opened or closed at once (a clean close waits for the broker's goodbye)."""


@dataclass(frozen=True)
class SimProgress:
    """Where a simulated fleet stands: sessions and the outcomes of its updates so far."""

    devices: int
    connected: int
    active: int
    failed: int
    rejected: int
    rolled_back: int
    rollbacks: int
    """``rollback-model`` commands that rolled a device back."""

    def as_dict(self) -> dict[str, int]:
        return {
            "devices": self.devices,
            "connected": self.connected,
            "active": self.active,
            "failed": self.failed,
            "rejected": self.rejected,
            "rolled_back": self.rolled_back,
            "rollbacks": self.rollbacks,
        }


class SimFleet:
    """The devices ``<prefix>-0000`` … of ``cfg``; a context manager (start/stop)."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.trust = TrustStore.load(cfg.trust_dir)
        self.sched = Scheduler()
        self.counters = SimCounters()
        rng = random.Random(cfg.seed)
        self.devices = [
            SimDevice(cfg, i, trust=self.trust, sched=self.sched, rng=rng, counters=self.counters)
            for i in cfg.indices
        ]
        self._by_id = {d.id: d for d in self.devices}

    @property
    def ids(self) -> list[str]:
        return [d.id for d in self.devices]

    def device(self, device_id: str) -> SimDevice:
        try:
            return self._by_id[device_id]
        except KeyError:
            raise EdgeAgentError(
                f"no simulated device {device_id!r}",
                fix=f"use ids {self.devices[0].id} … {self.devices[-1].id}",
            ) from None

    def _select(self, device_ids: Iterable[str] | None) -> list[SimDevice]:
        return self.devices if device_ids is None else [self.device(d) for d in device_ids]

    def start(self) -> SimFleet:
        self.sched.start()
        try:
            for device in self.devices:
                device.start()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_connected(self, timeout_s: float, device_ids: Iterable[str] | None = None) -> bool:
        """True once every (selected) device holds a session, False after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        for device in self._select(device_ids):
            client = device.client
            if client is None or not client.wait_connected(max(0.0, deadline - time.monotonic())):
                return False
        return True

    def take_offline(self, device_ids: Iterable[str], *, clean: bool = False) -> None:
        """Disconnect these devices (retained ``offline``: ``lost`` or, when ``clean``,
        ``shutdown``); they keep running and any update under way keeps walking."""
        self._each(self._select(device_ids), lambda d: d.go_offline(clean=clean))

    def bring_online(self, device_ids: Iterable[str]) -> None:
        """Reconnect these devices with fresh sessions (birth, then the retained manifests)."""
        for device in self._select(device_ids):
            device.go_online()

    def progress(self) -> SimProgress:
        counts = self.counters.snapshot()
        return SimProgress(
            devices=len(self.devices),
            connected=sum(1 for d in self.devices if d.connected),
            active=counts.get("update.active", 0),
            failed=counts.get("update.failed", 0),
            rejected=counts.get("update.rejected", 0),
            rolled_back=counts.get("update.rolled_back", 0),
            rollbacks=counts.get("rollback.rolled_back", 0),
        )

    def stop(self) -> None:
        """Clean shutdown of every device, then the scheduler."""
        self._each(self.devices, SimDevice.stop)
        self.sched.stop()

    @staticmethod
    def _each(devices: list[SimDevice], action: Callable[[SimDevice], None]) -> None:
        if len(devices) <= 1:
            for device in devices:
                action(device)
            return
        with ThreadPoolExecutor(min(_PARALLEL, len(devices)), "fleet-sim-close") as pool:
            list(pool.map(action, devices))

    def __enter__(self) -> SimFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
