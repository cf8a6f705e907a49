"""A monitor sample as the governor sees it: finite numbers or None, the hottest zone, and the
power budget of the sample's nvpmodel mode."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from agent.config.device import DeviceProfile, PowerMode
from agent.monitor.sample import Sample


@dataclass(frozen=True)
class Reading:
    mem_pct: float | None
    temp_c: float | None
    hottest_zone: str | None
    power_w: float | None
    budget_w: float | None
    power_mode: str | None
    mode_id: int | None
    sample_ts: float

    def to_json(self) -> dict[str, Any]:
        return {
            "sample_ts": self.sample_ts,
            "memory_used_pct": _round(self.mem_pct),
            "max_temp_c": _round(self.temp_c),
            "hottest_zone": self.hottest_zone,
            "board_power_w": _round(self.power_w),
            "power_budget_w": self.budget_w,
            "power_mode": self.power_mode,
            "power_mode_id": self.mode_id,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def known(value: float | None) -> float | None:
    """A finite number, else None (NaN or inf is as good as unknown)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def find_mode(profile: DeviceProfile, name: str | None) -> PowerMode | None:
    """The profile's power mode named ``name`` (exact, then case-insensitive); None if unknown."""
    if not name:
        return None
    modes = profile.identity.power_modes
    for mode in modes:
        if mode.name == name:
            return mode
    folded = name.strip().casefold()
    for mode in modes:
        if mode.name.casefold() == folded:
            return mode
    return None


def mode_id(profile: DeviceProfile, name: str | None) -> int | None:
    """nvpmodel id of the sample's mode name; None = unknown (the default mode's budget)."""
    mode = find_mode(profile, name)
    return None if mode is None else mode.id


def budget_w(profile: DeviceProfile, name: str | None) -> float | None:
    """Budget of the mode named ``name``, found by name because ids repeat across module SKUs
    (see ``Identity._modes``); the override, or the default mode's budget, when unknown."""
    mode = find_mode(profile, name)
    if profile.monitor.power_budget_w is not None or mode is None:
        return profile.power_budget_w(None)
    return mode.budget_w


def capped_budget(budget: float | None, board_limit: float | None) -> float | None:
    """The power budget, lowered to the limit the board enforces on its input where that is
    known and lower (a Thor carrier throttles itself past its INA238 VIN limit: the governor
    acts before the board does)."""
    limit = known(board_limit)
    if limit is None or limit <= 0:
        return budget
    return limit if budget is None else min(budget, limit)


def read_sample(sample: Sample, profile: DeviceProfile) -> Reading:
    """The governor's view of ``sample`` (unknown stays None). Its power is the board input
    (``board_power_w``: Thor's INA238 ``VIN``, ``VDD_IN``, or the module rails' sum)."""
    temps = {k: known(v) for k, v in sample.temps_c.items()}
    found = {k: v for k, v in temps.items() if v is not None}
    hottest = max(found, key=found.__getitem__) if found else None
    mode = mode_id(profile, sample.power_mode)
    return Reading(
        mem_pct=known(sample.memory.used_pct),
        temp_c=found[hottest] if hottest is not None else None,
        hottest_zone=hottest,
        power_w=known(sample.board_power_w),
        budget_w=capped_budget(budget_w(profile, sample.power_mode), sample.board_power_limit_w),
        power_mode=sample.power_mode,
        mode_id=mode,
        sample_ts=sample.ts,
    )
