"""Pure decisions: how one parsed device message changes a :class:`DeviceRecord`.

Each ``merge_*`` takes the stored record (None for a device never seen) and returns a
:class:`Merge`: the new record (None = nothing to write) and the outcome. No I/O, no clock
(``now`` is passed in), so the rules are tested on their own:

* ``state`` (retained birth / last will): taken unless it comes from an older ``boot``; the
  birth's ``group`` replaces the stored one (a birth without it: the device has no group; an
  ``offline`` state keeps it);
* ``metrics`` / ``events``: a ``seq`` at or below the highest taken is a duplicate (the spool
  re-sends what was in flight) — it still proves the device is alive;
* an OTA record (retained ``model``, ``ota.state`` events): an older one than stored is stale
  (``updated_at``, then the number of states it went through);
* ``last_seen`` is ``now`` for live messages; for retained ones (``state``, ``model``, which
  the broker replays to every new subscriber) it is the device's ``ts`` capped at ``now``, so a
  controller restart does not make every device look just seen.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum

from agent.fleet.registry.records import DeviceRecord, OtaStatus
from agent.fleet.registry.wire import EventMessage, MetricsMessage, StateMessage

__all__ = ["Merge", "Outcome", "merge_event", "merge_metrics", "merge_ota", "merge_state"]

OTA_EVENT = "ota.state"


class Outcome(str, Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"
    REJECTED = "rejected"
    IGNORED = "ignored"


@dataclass(frozen=True)
class Merge:
    record: DeviceRecord | None
    outcome: Outcome


def _base(current: DeviceRecord | None, fleet: str, device: str, seen: float) -> DeviceRecord:
    if current is None:
        return DeviceRecord(fleet=fleet, device=device, first_seen=seen, last_seen=seen)
    return dataclasses.replace(current, last_seen=max(current.last_seen, seen))


def _retained_seen(ts: float, now: float) -> float:
    return min(ts, now)


def merge_state(
    current: DeviceRecord | None, fleet: str, device: str, msg: StateMessage, now: float
) -> Merge:
    if current is not None and current.boot is not None and msg.boot < current.boot:
        return Merge(None, Outcome.STALE)
    record = _base(current, fleet, device, _retained_seen(msg.ts, now))
    record = dataclasses.replace(
        record,
        online=msg.online,
        boot=msg.boot,
        state_ts=msg.ts,
        offline_reason=None if msg.online else msg.reason,
        agent_version=msg.version or record.agent_version,
        profile=msg.profile or record.profile,
        board=msg.board or record.board,
        group=msg.group if msg.online else record.group,
    )
    return Merge(record, Outcome.APPLIED)


def merge_metrics(
    current: DeviceRecord | None, fleet: str, device: str, msg: MetricsMessage, now: float
) -> Merge:
    record = _base(current, fleet, device, now)
    seq = msg.snapshot.seq
    if record.metrics_seq is not None and seq <= record.metrics_seq:
        return Merge(record, Outcome.DUPLICATE)
    record = dataclasses.replace(
        record,
        metrics=msg.snapshot,
        metrics_seq=seq,
        model=msg.model if msg.model is not None else record.model,
        models=msg.models or record.models,
        profile=msg.profile or record.profile,
        board=msg.board or record.board,
    )
    return Merge(record, Outcome.APPLIED)


def _newer(new: OtaStatus, old: OtaStatus | None) -> bool:
    if old is None:
        return True
    if new.updated_at != old.updated_at:
        return new.updated_at > old.updated_at
    return new.id != old.id or new.steps >= old.steps


def merge_ota(
    current: DeviceRecord | None,
    fleet: str,
    device: str,
    status: OtaStatus,
    seen: float,
) -> Merge:
    """An OTA record; ``seen`` is ``now`` for an event, the capped ``ts`` for the retained topic."""
    record = _base(current, fleet, device, seen)
    if not _newer(status, record.ota):
        return Merge(record, Outcome.STALE)
    return Merge(dataclasses.replace(record, ota=status), Outcome.APPLIED)


def merge_event(
    current: DeviceRecord | None,
    fleet: str,
    device: str,
    msg: EventMessage,
    now: float,
    *,
    ota: OtaStatus | None,
) -> Merge:
    """An event; ``ota`` is its parsed record when the kind is ``ota.state``."""
    record = _base(current, fleet, device, now)
    if record.events_seq is not None and msg.seq <= record.events_seq:
        return Merge(record, Outcome.DUPLICATE)
    record = dataclasses.replace(
        record, events_seq=msg.seq, last_event_kind=msg.kind, last_event_ts=msg.ts
    )
    if ota is not None and _newer(ota, record.ota):
        record = dataclasses.replace(record, ota=ota)
    return Merge(record, Outcome.APPLIED)
