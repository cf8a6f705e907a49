"""Per-device progress of a rollout from the registry, each tick (pure).

For every published device: take the state the registry shows (when the transition table
allows it), apply the offline and install timeouts, note the first metrics on the new version,
and clear the retained manifest once the device is final (``offline`` devices keep theirs, so
they update when they return).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

from agent.core.logs import log_fields
from agent.fleet.registry.records import DeviceRecord
from agent.fleet.rollout.actions import Action, ClearManifest
from agent.fleet.rollout.observe import reported_state, serves_version
from agent.fleet.rollout.records import DeviceProgress, Rollout
from agent.fleet.rollout.states import DEVICE_FINAL, DeviceState, allowed, check_transition

__all__ = ["INSTALL_TIMEOUT", "OFFLINE", "follow_devices", "move_device"]

log = logging.getLogger(__name__)

INSTALL_TIMEOUT = "install_timeout"
OFFLINE = "offline"
_CLEARED_WHEN = frozenset({DeviceState.ACTIVE, DeviceState.FAILED, DeviceState.ROLLED_BACK})
_WAITING = frozenset({DeviceState.PENDING, DeviceState.IN_PROGRESS})


def move_device(
    rollout: Rollout,
    device: str,
    progress: DeviceProgress,
    new: DeviceState,
    *,
    reason: str | None,
    now: float,
) -> DeviceProgress:
    """``progress`` moved to ``new`` (table-checked, logged); the install clock restarts when
    the device comes back from ``offline``."""
    old = progress.state
    check_transition(old, new, f"{rollout.id}/{device}")
    log.info(
        "rollout device state",
        extra=log_fields(
            rollout=rollout.id, device=device, old=old.value, new=new.value, reason=reason
        ),
    )
    return dataclasses.replace(
        progress,
        state=new,
        reason=reason,
        final_at=now if new in DEVICE_FINAL else None,
        clock_at=now if old is DeviceState.OFFLINE else progress.clock_at,
    )


def _timeouts(
    rollout: Rollout,
    device: str,
    progress: DeviceProgress,
    record: DeviceRecord | None,
    now: float,
) -> DeviceProgress:
    if progress.state not in _WAITING or progress.clock_at is None:
        return progress
    waited = now - progress.clock_at
    online = record is not None and record.online
    if not online and waited >= rollout.spec.offline_after_s:
        return move_device(rollout, device, progress, DeviceState.OFFLINE, reason=OFFLINE, now=now)
    if online and waited >= rollout.spec.probation_timeout_s:
        return move_device(
            rollout, device, progress, DeviceState.FAILED, reason=INSTALL_TIMEOUT, now=now
        )
    return progress


def _follow(
    rollout: Rollout, device: str, progress: DeviceProgress, record: DeviceRecord | None, now: float
) -> tuple[DeviceProgress, Action | None]:
    reported = reported_state(record, progress, rollout.model, rollout.version)
    if reported is not None and allowed(progress.state, reported.state):
        progress = move_device(
            rollout, device, progress, reported.state, reason=reported.reason, now=now
        )
    progress = _timeouts(rollout, device, progress, record, now)
    if not progress.metrics_seen and serves_version(record, rollout.model, rollout.version):
        progress = dataclasses.replace(progress, metrics_seen=True)
    if progress.state in _CLEARED_WHEN and not progress.cleared:
        return dataclasses.replace(progress, cleared=True), ClearManifest(device)
    return progress, None


def follow_devices(
    rollout: Rollout, registry: Mapping[str, DeviceRecord], now: float
) -> tuple[Rollout, list[Action]]:
    """Every published device brought up to what the registry shows."""
    devices = dict(rollout.devices)
    actions: list[Action] = []
    for device, progress in rollout.devices.items():
        if not progress.published:
            continue
        new, action = _follow(rollout, device, progress, registry.get(device), now)
        if new != progress:
            devices[device] = new
        if action is not None:
            actions.append(action)
    if devices == rollout.devices:
        return rollout, actions
    return dataclasses.replace(rollout, devices=devices), actions
