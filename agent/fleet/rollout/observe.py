"""What the registry says about one target device, read against its rollout (pure).

A device's OTA record belongs to this rollout when its ``manifest_sha256`` is the hash of the
manifest signed for that device; its metrics show the new version when the served model slot
of the rollout's model has the rollout's version. A ``rollback`` record leaving the new version
is our rollback command's result.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.core.errors import OtaReason
from agent.fleet.registry.records import DeviceRecord, ModelSlot, OtaStatus
from agent.fleet.rollout.records import DeviceProgress
from agent.fleet.rollout.states import DeviceState

__all__ = [
    "IN_PROGRESS_OTA",
    "TOOK_OTA",
    "Reported",
    "active_on_new_version",
    "matching_ota",
    "reported_state",
    "served_version",
    "serves_version",
    "took_new_version",
]

IN_PROGRESS_OTA = frozenset(
    {"received", "verified", "downloaded", "building", "validating", "activating", "probation"}
)
TOOK_OTA = frozenset({"activating", "probation", "active"})
"""OTA states in which the new model may already serve."""
_FAILED_OTA = frozenset({"rejected", "failed"})
ROLLBACK_REQUESTED = OtaReason.ROLLBACK_REQUESTED.value


@dataclass(frozen=True)
class Reported:
    """The device state the registry shows, with the reason of a failure or rollback."""

    state: DeviceState
    reason: str | None = None


def matching_ota(record: DeviceRecord | None, progress: DeviceProgress) -> OtaStatus | None:
    """The device's OTA record when it is about this rollout's manifest."""
    if record is None or record.ota is None or not progress.sha256:
        return None
    return record.ota if record.ota.manifest_sha256 == progress.sha256 else None


def _slot(record: DeviceRecord, model: str) -> ModelSlot | None:
    if model in record.models:
        return record.models[model]
    if record.model is not None and record.model.name == model:
        return record.model
    return None


def served_version(record: DeviceRecord | None, model: str) -> int | None:
    """The version of ``model`` the device's latest metrics show (None: unknown)."""
    slot = None if record is None else _slot(record, model)
    return None if slot is None else slot.version


def serves_version(record: DeviceRecord | None, model: str, version: int) -> bool:
    """Whether the device's latest metrics show ``model`` at ``version``."""
    if record is None or record.metrics is None:
        return False
    slot = _slot(record, model)
    return slot is not None and slot.version == version


def _commanded_back(record: DeviceRecord | None, version: int) -> bool:
    ota = None if record is None else record.ota
    return (
        ota is not None
        and ota.op == "rollback"
        and ota.version == version
        and ota.state == DeviceState.ROLLED_BACK.value
    )


def took_new_version(
    record: DeviceRecord | None, progress: DeviceProgress, model: str, version: int
) -> bool:
    """Whether the new model may serve on the device (it needs a rollback on abort)."""
    if _commanded_back(record, version):
        return False
    ota = matching_ota(record, progress)
    if ota is not None and ota.state in TOOK_OTA:
        return True
    return serves_version(record, model, version)


def reported_state(
    record: DeviceRecord | None, progress: DeviceProgress, model: str, version: int
) -> Reported | None:
    """The state the registry shows for a published device; None: nothing about this rollout.

    Precedence: the device's own rollback, our rollback command's result, ``active``, metrics
    on the new version, a failure, then an install in progress."""
    ota = matching_ota(record, progress)
    if ota is not None and ota.state == DeviceState.ROLLED_BACK.value:
        return Reported(DeviceState.ROLLED_BACK, ota.reason or ota.state)
    if progress.rollback_at is not None and _commanded_back(record, version):
        assert record is not None and record.ota is not None
        return Reported(DeviceState.ROLLED_BACK, record.ota.reason or ROLLBACK_REQUESTED)
    if ota is not None and ota.state == DeviceState.ACTIVE.value:
        return Reported(DeviceState.ACTIVE)
    if serves_version(record, model, version):
        return Reported(DeviceState.ACTIVE)
    if ota is not None and ota.state in _FAILED_OTA:
        return Reported(DeviceState.FAILED, ota.reason or ota.state)
    if ota is not None and ota.state in IN_PROGRESS_OTA:
        return Reported(DeviceState.IN_PROGRESS)
    return None


def active_on_new_version(
    record: DeviceRecord | None, progress: DeviceProgress, model: str, version: int
) -> bool:
    """Whether the device reports the new version active with nothing underway (an update or
    rollback still running is left to finish: a rollback command then would hit the wrong
    version)."""
    if record is None or _commanded_back(record, version):
        return False
    if record.ota is not None and record.ota.state in IN_PROGRESS_OTA:
        return False
    ota = matching_ota(record, progress)
    if ota is not None and ota.state == DeviceState.ACTIVE.value:
        return True
    return serves_version(record, model, version)
