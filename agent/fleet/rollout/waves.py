"""Wave progress of a running rollout (pure): start, soak, advance, complete, and the
rate-limited publishing of the started waves' manifests (a token bucket kept in the doc)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

from agent.core.logs import log_fields
from agent.fleet.registry.records import DeviceRecord
from agent.fleet.rollout.actions import Action, ClearManifest, PublishManifest
from agent.fleet.rollout.observe import served_version
from agent.fleet.rollout.records import DeviceProgress, Rollout, Wave
from agent.fleet.rollout.states import DeviceState, RolloutState, check_transition

__all__ = ["FPS_UNCHECKED", "advance_waves", "bucket_capacity", "publish_due", "set_state"]

log = logging.getLogger(__name__)

FPS_UNCHECKED = "fps_unchecked"
"""Note on an active device that sent no metrics on the new version before its wave's soak
ended: the fps criterion could not be checked for it."""


def set_state(rollout: Rollout, new: RolloutState, now: float, why: str) -> Rollout:
    """``rollout`` in state ``new`` (table-checked, logged)."""
    check_transition(rollout.state, new, rollout.id)
    log.info(
        "rollout state",
        extra=log_fields(rollout=rollout.id, old=rollout.state.value, new=new.value, why=why),
    )
    changes: dict[str, object] = {"state": new}
    if new is RolloutState.RUNNING and rollout.started_at is None:
        changes["started_at"] = now
    if new in (RolloutState.COMPLETED, RolloutState.ABORTED):
        changes["finished_at"] = now
    return dataclasses.replace(rollout, **changes)  # type: ignore[arg-type]


def _replace_wave(rollout: Rollout, wave: Wave) -> Rollout:
    waves = list(rollout.waves)
    waves[wave.index] = wave
    return dataclasses.replace(rollout, waves=tuple(waves))


def _start(rollout: Rollout, index: int, now: float) -> Rollout:
    wave = rollout.waves[index]
    log.info(
        "rollout wave started",
        extra=log_fields(rollout=rollout.id, wave=index, devices=len(wave.devices)),
    )
    started = _replace_wave(rollout, dataclasses.replace(wave, started_at=now))
    return dataclasses.replace(started, current_wave=index)


def _final_at(rollout: Rollout, wave: Wave) -> float | None:
    """When the last device of the wave became final; None while one is not."""
    progress = [rollout.devices[d] for d in wave.devices]
    if not all(p.final and p.final_at is not None for p in progress):
        return None
    return max(p.final_at for p in progress if p.final_at is not None)


def _note_unchecked(rollout: Rollout, wave: Wave, registry: Mapping[str, DeviceRecord]) -> Rollout:
    devices = dict(rollout.devices)
    unchecked: list[str] = []
    for device in wave.devices:
        progress = devices[device]
        record = registry.get(device)
        online = record is not None and record.online
        if progress.state is DeviceState.ACTIVE and online and not progress.metrics_seen:
            devices[device] = dataclasses.replace(progress, note=FPS_UNCHECKED)
            unchecked.append(device)
    if unchecked:  # one line per wave, not per device: a wave may hold thousands
        log.info(
            "rollout fps not checked: no metrics on the new version before the soak ended",
            extra=log_fields(
                rollout=rollout.id, wave=wave.index, devices=len(unchecked), first=unchecked[:5]
            ),
        )
    return dataclasses.replace(rollout, devices=devices)


def _complete(rollout: Rollout, now: float) -> tuple[Rollout, list[Action]]:
    devices = dict(rollout.devices)
    actions: list[Action] = []
    for device, progress in rollout.devices.items():
        if (
            progress.published
            and not progress.cleared
            and progress.state is not DeviceState.OFFLINE
        ):
            devices[device] = dataclasses.replace(progress, cleared=True)
            actions.append(ClearManifest(device))
    done = dataclasses.replace(rollout, devices=devices)
    return set_state(done, RolloutState.COMPLETED, now, "last wave done"), actions


def advance_waves(
    rollout: Rollout, registry: Mapping[str, DeviceRecord], now: float
) -> tuple[Rollout, list[Action]]:
    """Start the current wave, track its soak, move to the next one or complete."""
    if rollout.waves[rollout.current_wave].started_at is None:
        rollout = _start(rollout, rollout.current_wave, now)
    wave = rollout.waves[rollout.current_wave]
    final_at = _final_at(rollout, wave)
    if final_at != wave.final_at:
        wave = dataclasses.replace(wave, final_at=final_at)
        rollout = _replace_wave(rollout, wave)
    if final_at is None or now - final_at < rollout.spec.soak_s:
        return rollout, []
    rollout = _note_unchecked(rollout, wave, registry)
    rollout = _replace_wave(rollout, dataclasses.replace(wave, done_at=now))
    counts = {s: sum(rollout.devices[d].state is s for d in wave.devices) for s in DeviceState}
    log.info(
        "rollout wave done",
        extra=log_fields(
            rollout=rollout.id, wave=wave.index, **{s.value: n for s, n in counts.items() if n}
        ),
    )
    if wave.index + 1 < len(rollout.waves):
        return _start(rollout, wave.index + 1, now), []
    return _complete(rollout, now)


def bucket_capacity(rollout: Rollout, tick_s: float) -> float:
    """Most manifests published in one tick: the rate's share of a tick, at least one."""
    return max(1.0, rollout.spec.rate_per_min / 60.0 * tick_s)


def _published(
    progress: DeviceProgress, record: DeviceRecord | None, model: str, now: float
) -> DeviceProgress:
    metrics = None if record is None else record.metrics
    return dataclasses.replace(
        progress,
        published_at=now,
        clock_at=now,
        old_version=served_version(record, model),
        baseline_fps=None if metrics is None else metrics.fps,
    )


def publish_due(
    rollout: Rollout, registry: Mapping[str, DeviceRecord], now: float, tick_s: float
) -> tuple[Rollout, list[Action]]:
    """Publish the started waves' unpublished devices, in order, as the bucket allows."""
    due = [
        d
        for wave in rollout.waves[: rollout.current_wave + 1]
        for d in wave.devices
        if not rollout.devices[d].published
    ]
    if not due:
        return rollout, []
    capacity = bucket_capacity(rollout, tick_s)
    if rollout.bucket_at is None:
        tokens = capacity
    else:
        elapsed = max(0.0, now - rollout.bucket_at)
        tokens = min(capacity, rollout.tokens + elapsed * rollout.spec.rate_per_min / 60.0)
    count = min(len(due), int(tokens + 1e-9))
    devices = dict(rollout.devices)
    for device in due[:count]:
        devices[device] = _published(devices[device], registry.get(device), rollout.model, now)
    if count:
        log.info(
            "rollout published",
            extra=log_fields(rollout=rollout.id, devices=due[:count], waiting=len(due) - count),
        )
    rest = dataclasses.replace(rollout, devices=devices, tokens=tokens - count, bucket_at=now)
    return rest, [PublishManifest(d) for d in due[:count]]
