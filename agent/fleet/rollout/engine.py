"""The rollout engine (pure): one :func:`tick` moves a rollout on from what the registry shows
and returns the actions the I/O shell carries out; :func:`control` applies the operator's
pause / resume / abort.

A tick: ``planned → running``; follow every published device; check the abort criteria;
advance the waves and publish what the rate allows (running only: a paused rollout publishes
nothing but is still followed); on an aborted rollout, clear every retained manifest, send
``rollback-model`` to the devices that took the new version, and keep watching ("cleanup")
until all are back or ``probation_timeout_s`` has passed.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from agent.core.errors import EdgeAgentError
from agent.core.logs import log_fields
from agent.fleet.registry.records import DeviceRecord
from agent.fleet.rollout.actions import Action, ClearManifest, SendRollback
from agent.fleet.rollout.criteria import evaluate
from agent.fleet.rollout.observe import (
    IN_PROGRESS_OTA,
    active_on_new_version,
    matching_ota,
    took_new_version,
)
from agent.fleet.rollout.progress import follow_devices
from agent.fleet.rollout.records import DeviceProgress, Rollout
from agent.fleet.rollout.states import DeviceState, RolloutState, allowed
from agent.fleet.rollout.waves import advance_waves, publish_due, set_state

__all__ = ["OPERATOR_ABORT", "ROLLBACK_RESEND_S", "ControlOp", "TickResult", "control", "tick"]

log = logging.getLogger(__name__)

ControlOp = Literal["pause", "resume", "abort"]
OPERATOR_ABORT = "aborted by operator"
ROLLBACK_RESEND_S = 60.0
"""A device seen on the new version again this long after a rollback command gets another."""

_CONTROL = {
    "pause": RolloutState.PAUSED,
    "resume": RolloutState.RUNNING,
    "abort": RolloutState.ABORTED,
}
_LIVE = (RolloutState.RUNNING, RolloutState.PAUSED)


@dataclass(frozen=True)
class TickResult:
    """The rollout after the tick, what to do, and whether the document must be written."""

    rollout: Rollout
    actions: list[Action]
    changed: bool


def tick(
    rollout: Rollout,
    registry: Mapping[str, DeviceRecord],
    now: float,
    *,
    tick_s: float = 1.0,
) -> TickResult:
    """One step of ``rollout`` at ``now``; ``registry`` maps device id → record (its fleet)."""
    current = rollout
    actions: list[Action] = []
    if current.state is RolloutState.PLANNED:
        current = set_state(current, RolloutState.RUNNING, now, "first tick")
    current, done = follow_devices(current, registry, now)
    actions += done
    if current.state in _LIVE:
        verdict = evaluate(current, registry)
        if verdict is not None:
            current = set_state(current, RolloutState.ABORTED, now, verdict.reason)
            current = dataclasses.replace(
                current, abort_reason=verdict.reason, tripped=verdict.tripped
            )
    if current.state is RolloutState.RUNNING:
        current, done = advance_waves(current, registry, now)
        actions += done
    if current.state is RolloutState.RUNNING:
        current, done = publish_due(current, registry, now, tick_s)
        actions += done
    if current.state is RolloutState.ABORTED and not current.cleanup_done:
        current, done = _cleanup(current, registry, now)
        actions += done
    changed = current != rollout
    if changed:
        current = dataclasses.replace(current, updated_at=now)
    return TickResult(current, actions, changed)


def control(rollout: Rollout, op: ControlOp, now: float) -> Rollout:
    """The rollout after the operator's ``op``; asking for the state it is in changes nothing.

    Raises :class:`EdgeAgentError` when the rollout cannot take ``op`` (e.g. resuming a
    completed one)."""
    if op not in _CONTROL:
        raise EdgeAgentError(f"unknown rollout control {op!r}", fix="use pause, resume or abort")
    new = _CONTROL[op]
    if rollout.state is new:
        return rollout
    if not allowed(rollout.state, new):
        raise EdgeAgentError(
            f"rollout {rollout.id} is {rollout.state.value}; it cannot {op}",
            fix="only a planned or running rollout can pause, a paused one resume, and a "
            "rollout not yet completed or aborted abort",
        )
    changed = set_state(rollout, new, now, f"operator {op}")
    if new is RolloutState.ABORTED:
        changed = dataclasses.replace(changed, abort_reason=OPERATOR_ABORT, tripped=())
    return dataclasses.replace(changed, updated_at=now)


def _first_cleanup(
    rollout: Rollout, device: str, progress: DeviceProgress, record: DeviceRecord | None, now: float
) -> tuple[DeviceProgress, list[Action]]:
    """At the abort: clear the manifest; roll back a device that took the new version."""
    actions: list[Action] = []
    if not progress.cleared:
        progress = dataclasses.replace(progress, cleared=True)
        actions.append(ClearManifest(device))
    took = progress.state is DeviceState.ACTIVE or took_new_version(
        record, progress, rollout.model, rollout.version
    )
    if took:
        progress = dataclasses.replace(progress, rollback_at=now)
        actions.append(SendRollback(device, rollout.model))
    return progress, actions


def _later_cleanup(
    rollout: Rollout, device: str, progress: DeviceProgress, record: DeviceRecord | None, now: float
) -> tuple[DeviceProgress, list[Action]]:
    """After the abort: roll back a device seen active on the new version (again)."""
    if not active_on_new_version(record, progress, rollout.model, rollout.version):
        return progress, []
    last = progress.rollback_at
    if last is not None and now - last < ROLLBACK_RESEND_S:
        return progress, []
    return dataclasses.replace(progress, rollback_at=now), [SendRollback(device, rollout.model)]


def _still_new(rollout: Rollout, progress: DeviceProgress, record: DeviceRecord | None) -> bool:
    """Whether the device may still serve (or be installing) the new version."""
    if took_new_version(record, progress, rollout.model, rollout.version):
        return True
    ota = matching_ota(record, progress)
    return ota is not None and ota.state in IN_PROGRESS_OTA


def _cleanup(
    rollout: Rollout, registry: Mapping[str, DeviceRecord], now: float
) -> tuple[Rollout, list[Action]]:
    first = rollout.abort_sent_at is None
    step = _first_cleanup if first else _later_cleanup
    devices = dict(rollout.devices)
    actions: list[Action] = []
    waiting = 0
    for device, progress in rollout.devices.items():
        if not progress.published:
            continue
        record = registry.get(device)
        devices[device], done = step(rollout, device, progress, record, now)
        actions += done
        waiting += _still_new(rollout, devices[device], record)
    cleaned = dataclasses.replace(rollout, devices=devices)
    if first:
        cleaned = dataclasses.replace(cleaned, abort_sent_at=now)
    if actions:
        log.info(
            "rollout cleanup",
            extra=log_fields(rollout=rollout.id, actions=[type(a).__name__ for a in actions]),
        )
    finished = rollout.finished_at if rollout.finished_at is not None else now
    if waiting == 0 or now - finished >= rollout.spec.probation_timeout_s:
        log.info(
            "rollout cleanup done",
            extra=log_fields(rollout=rollout.id, still_on_new_version=waiting),
        )
        cleaned = dataclasses.replace(cleaned, cleanup_done=True)
    return cleaned, actions
