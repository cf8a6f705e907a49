"""The I/O shell around the pure rollout engine: lease, tick inside the store's atomic update,
then the actions.

For every rollout of the fleet that still needs ticks (:meth:`Rollout.needs_tick`), the driver
takes or renews the lease (:meth:`RolloutStore.claim`, ``ttl = 3 × tick_s + 5``); the holder
runs :func:`~agent.fleet.rollout.engine.tick` *inside* :meth:`RolloutStore.update`, so a pause or
abort written by the API (or another instance) between two ticks is always the input of the
next one, never overwritten. The actions of a committed tick are then handed to the executor.
A controller that restarts with the same instance id re-claims its rollouts at once; another
instance takes them over once the lease has expired. An instance that takes a lease it did not
hold before (a restart, a takeover) first publishes again the manifests of the devices that were
marked published but never answered: a controller killed between the commit of a tick and its
publishes would otherwise leave those devices waiting for a manifest that never went out
(publishing the same retained manifest twice is harmless: devices drop a manifest they have
already processed).

Operator controls (:meth:`RolloutDriver.control`) go through the same atomic update. Every
committed change of a rollout is told to ``on_change`` (the live stream's change feed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from agent.core.logs import log_fields
from agent.fleet.controller.executor import ActionExecutor
from agent.fleet.registry.records import DeviceRecord
from agent.fleet.rollout.actions import Action, PublishManifest
from agent.fleet.rollout.engine import ControlOp, control, tick
from agent.fleet.rollout.observe import matching_ota
from agent.fleet.rollout.records import Rollout
from agent.fleet.rollout.states import DeviceState, RolloutState
from agent.fleet.store.base import FleetStore

__all__ = ["WATCHED_STATES", "RolloutDriver"]

log = logging.getLogger(__name__)

_UNANSWERED = (DeviceState.PENDING, DeviceState.IN_PROGRESS, DeviceState.OFFLINE)
"""States of a published device that may never have received its manifest."""

WATCHED_STATES = tuple(s.value for s in RolloutState)
"""States listed each tick; :meth:`Rollout.needs_tick` decides (completed ones are still
followed while devices counted offline may return)."""


class RolloutDriver:
    """Ticks the fleet's rollouts this instance holds the lease of."""

    def __init__(
        self,
        store: FleetStore,
        fleet: str,
        owner: str,
        executor: ActionExecutor,
        *,
        lease_s: float,
        tick_s: float = 1.0,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[str], None] = lambda _rollout_id: None,
    ) -> None:
        self.store = store
        self.on_change = on_change
        self.fleet = fleet
        self.owner = owner
        self.executor = executor
        self.lease_s = lease_s
        self.tick_s = tick_s
        self.clock = clock
        self._retired: set[str] = set()
        self._held: set[str] = set()
        self.ticks = 0
        self.republished = 0

    def tick_all(self) -> int:
        """One pass over the fleet's rollouts; returns how many were ticked here."""
        now = self.clock()
        registry: dict[str, DeviceRecord] | None = None
        ticked = 0
        for doc in self.store.rollouts.list(self.fleet, states=WATCHED_STATES):
            rollout_id = str(doc["id"])
            if rollout_id in self._retired:
                continue
            if not Rollout.from_json(doc).needs_tick(now):
                self._retired.add(rollout_id)
                continue
            if not self.store.rollouts.claim(rollout_id, self.owner, self.lease_s, now):
                self._held.discard(rollout_id)
                continue
            if registry is None:
                registry = {r.device: r for r in self.store.registry.devices(self.fleet)}
            if rollout_id not in self._held:
                self._held.add(rollout_id)
                self._republish(Rollout.from_json(doc), registry, now)
            self.tick_one(rollout_id, registry, now)
            ticked += 1
        self.ticks += 1
        return ticked

    def _republish(
        self, rollout: Rollout, registry: Mapping[str, DeviceRecord], now: float
    ) -> None:
        """Publish again what this rollout published but no device answered (lease taken)."""
        if rollout.state not in (RolloutState.RUNNING, RolloutState.PAUSED):
            return
        silent = [
            PublishManifest(device)
            for device, progress in rollout.devices.items()
            if progress.published
            and not progress.cleared
            and progress.state in _UNANSWERED
            and matching_ota(registry.get(device), progress) is None
        ]
        if silent:
            log.info(
                "lease taken: manifests published again",
                extra=log_fields(rollout=rollout.id, devices=len(silent)),
            )
            self.republished += len(silent)
            self.executor.execute(rollout.id, silent, now)

    def tick_one(
        self, rollout_id: str, registry: Mapping[str, DeviceRecord], now: float
    ) -> Rollout | None:
        """Tick one rollout (the caller holds its lease); returns it as stored after."""
        actions: list[Sequence[Action]] = []
        changed: list[bool] = []

        def change(doc: dict[str, Any] | None) -> dict[str, Any] | None:
            actions.clear()
            changed.clear()
            if doc is None:
                return None
            result = tick(Rollout.from_json(doc), registry, now, tick_s=self.tick_s)
            actions.append(result.actions)
            changed.append(result.changed)
            return result.rollout.to_json() if result.changed else None

        stored = self.store.rollouts.update(rollout_id, change)
        if stored is None:
            return None
        if changed and changed[-1]:
            self.on_change(rollout_id)
        rollout = Rollout.from_json(stored)
        if actions and actions[-1]:
            self.executor.execute(rollout_id, actions[-1], now)
        return rollout

    def control(self, rollout_id: str, op: str) -> Rollout | None:
        """Pause, resume or abort (the engine refuses what the state does not allow with an
        :class:`~agent.core.errors.EdgeAgentError`); None when the rollout is unknown."""
        now = self.clock()

        def change(doc: dict[str, Any] | None) -> dict[str, Any] | None:
            if doc is None:
                return None
            return control(Rollout.from_json(doc), cast(ControlOp, op), now).to_json()

        stored = self.store.rollouts.update(rollout_id, change)
        if stored is None:
            return None
        self._retired.discard(rollout_id)
        self.on_change(rollout_id)
        log.info("rollout control", extra=log_fields(rollout=rollout_id, op=op))
        return Rollout.from_json(stored)
