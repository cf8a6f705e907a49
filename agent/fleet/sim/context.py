"""What the OTA walk and the command handlers of one simulated device work with: its config,
identity, scheduler, random stream, wire and state, plus the record transitions they share."""

from __future__ import annotations

import random
from dataclasses import dataclass

from agent.fleet.sim.config import TERMINAL, SimConfig
from agent.fleet.sim.record import DeviceState, SimCounters, SimRecord
from agent.fleet.sim.scheduler import Scheduler
from agent.fleet.sim.wire import DeviceWire
from agent.ota.trust import TrustStore

__all__ = ["DeviceContext"]


@dataclass(frozen=True)
class DeviceContext:
    """One device's collaborators (built by :class:`~agent.fleet.sim.device.SimDevice`)."""

    cfg: SimConfig
    device: str
    group: str | None
    trust: TrustStore
    sched: Scheduler
    rng: random.Random
    wire: DeviceWire
    state: DeviceState
    counters: SimCounters

    def begin(self, record: SimRecord) -> None:
        """A new record: published (retained ``model`` + ``ota.state`` event)."""
        self.state.record = record
        self.wire.record(record.as_dict())

    def transition(self, state: str, reason: str | None = None, detail: str = "") -> None:
        """The current record moves to ``state``; a terminal state is counted per op."""
        record = self.state.record
        assert record is not None, "transition without a record"
        record.to(state, reason, detail)
        self.wire.record(record.as_dict())
        if state in TERMINAL:
            self.counters.add(f"{record.op}.{state}")
