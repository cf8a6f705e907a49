"""Which devices a rollout targets and in which waves: pure, from registry records and a spec.

Targets are sorted by id (stable across restarts and controller instances). Wave 0 is the
canary; the spec's cumulative percentages cut the rest; a wave that would be empty is dropped
and no device is in two waves.
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.core.errors import EdgeAgentError
from agent.fleet.registry.records import DeviceRecord
from agent.fleet.rollout.spec import RolloutSpec

__all__ = ["plan_waves", "select_targets"]


def select_targets(spec: RolloutSpec, devices: Sequence[DeviceRecord], fleet: str) -> list[str]:
    """The sorted device ids of ``fleet`` the spec's target names; an error for unknown ids
    (``devices:``) and for an empty selection."""
    known = sorted({d.device for d in devices if d.fleet == fleet})
    target = spec.target_set
    if target.kind == "all":
        chosen = known
    elif target.kind == "group":
        chosen = sorted({d.device for d in devices if d.fleet == fleet and d.group == target.group})
    else:
        unknown = sorted(set(target.devices) - set(known))
        if unknown:
            raise EdgeAgentError(
                f"devices not in the registry of fleet {fleet!r}: {', '.join(unknown)}",
                fix="check the ids (`edge-agent fleet devices`); a device appears once it has "
                "connected to the broker",
            )
        chosen = list(target.devices)
    if not chosen:
        raise EdgeAgentError(
            f"target {spec.target!r} selects no device of fleet {fleet!r}",
            fix="check the group name or wait until the devices have connected (`edge-agent "
            "fleet devices` lists what the registry knows)",
        )
    return chosen


def plan_waves(spec: RolloutSpec, targets: Sequence[str]) -> list[tuple[str, ...]]:
    """Split ordered, distinct ``targets`` into waves: the canary, then the spec's waves."""
    ordered = list(dict.fromkeys(targets))
    total = len(ordered)
    if total == 0:
        raise EdgeAgentError("a rollout needs at least one device", fix="choose another target")
    start = spec.canary_count(total)
    waves = [tuple(ordered[:start])]
    for end in spec.wave_ends(total):
        if end > start:
            waves.append(tuple(ordered[start:end]))
            start = end
    return waves
