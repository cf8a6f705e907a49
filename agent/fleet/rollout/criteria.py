"""Abort criteria (pure): given a rollout and the registry, whether to stop it and why.

Checked every tick over the devices published so far; each criterion names the devices that
tripped it. The shares are of all devices of the waves started so far, so a canary of ten with
three rollbacks trips ``max_failed_pct`` 10 as soon as the third one reports.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agent.core.errors import OtaReason
from agent.fleet.registry.records import DeviceRecord
from agent.fleet.rollout.observe import matching_ota, serves_version
from agent.fleet.rollout.records import DeviceProgress, Rollout
from agent.fleet.rollout.states import DeviceState

__all__ = ["Abort", "evaluate"]

Registry = Mapping[str, DeviceRecord]


@dataclass(frozen=True)
class Abort:
    """Why a rollout stops: one sentence per tripped criterion, and the devices."""

    reason: str
    tripped: tuple[str, ...]


@dataclass(frozen=True)
class _Trip:
    reason: str
    devices: list[str]


def _published(rollout: Rollout) -> list[tuple[str, DeviceProgress]]:
    return [(d, p) for d, p in rollout.devices.items() if p.published]


def _failed_share(rollout: Rollout, registry: Registry) -> _Trip | None:
    started = rollout.started_devices()
    bad_states = (DeviceState.FAILED, DeviceState.ROLLED_BACK)
    bad = [d for d in started if rollout.devices[d].state in bad_states]
    if not started or not bad:
        return None
    share = 100.0 * len(bad) / len(started)
    limit = rollout.spec.max_failed_pct
    if share <= limit:
        return None
    return _Trip(
        f"{len(bad)} of {len(started)} devices failed or rolled back ({share:.1f}% > "
        f"max_failed_pct {limit:g}%)",
        bad,
    )


def _slow(rollout: Rollout, registry: Registry) -> _Trip | None:
    ratio = rollout.spec.min_fps_ratio
    if ratio is None:
        return None
    slow: list[str] = []
    for device, progress in _published(rollout):
        record = registry.get(device)
        baseline = progress.baseline_fps
        if baseline is None or baseline <= 0 or record is None or record.metrics is None:
            continue
        fps = record.metrics.fps
        on_new = serves_version(record, rollout.model, rollout.version)
        if on_new and fps is not None and fps < ratio * baseline:
            slow.append(device)
    if not slow:
        return None
    return _Trip(
        f"{len(slow)} devices serve below min_fps_ratio {ratio:g} of their fps before", slow
    )


def _nan(rollout: Rollout, registry: Registry) -> _Trip | None:
    nan = [
        d
        for d, p in _published(rollout)
        if p.state is DeviceState.ROLLED_BACK and p.reason == OtaReason.PROBATION_NAN.value
    ]
    limit = rollout.spec.max_nan
    if len(nan) <= limit:
        return None
    return _Trip(f"{len(nan)} devices rolled back for NaN outputs (> max_nan {limit})", nan)


def _gate(rollout: Rollout, registry: Registry) -> _Trip | None:
    limit = rollout.spec.max_metric_drop
    gated: list[str] = []
    for device, progress in _published(rollout):
        ota = matching_ota(registry.get(device), progress)
        if ota is None:
            continue
        dropped = limit is not None and ota.task_drop is not None and ota.task_drop > limit
        if ota.gate_passed is False or dropped:
            gated.append(device)
    if not gated:
        return None
    what = "failed the validation gate" + ("" if limit is None else f" or task_drop > {limit:g}")
    return _Trip(f"{len(gated)} devices {what}", gated)


_CRITERIA: tuple[Callable[[Rollout, Registry], _Trip | None], ...] = (
    _failed_share,
    _slow,
    _nan,
    _gate,
)


def evaluate(rollout: Rollout, registry: Registry) -> Abort | None:
    """None while the rollout may go on; else every tripped criterion and its devices."""
    trips = [t for t in (check(rollout, registry) for check in _CRITERIA) if t is not None]
    if not trips:
        return None
    devices = sorted({d for t in trips for d in t.devices})
    return Abort("; ".join(t.reason for t in trips), tuple(devices))
