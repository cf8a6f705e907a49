"""The typed reading every monitor source returns, and the source interface.

A field a source could not read is ``None`` ("unknown"), never a guess and never an exception:
the governor treats unknown as "no evidence" and the telemetry shows it as null.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class MemorySample:
    """RAM and swap in MiB (on a Jetson the GPU shares this RAM)."""

    total_mib: float | None = None
    used_mib: float | None = None
    available_mib: float | None = None
    swap_total_mib: float | None = None
    swap_used_mib: float | None = None

    @property
    def used_pct(self) -> float | None:
        """Used share of RAM in percent: (total - available) / total."""
        if self.total_mib is None or not self.total_mib:
            return None
        if self.available_mib is not None:
            return 100.0 * (self.total_mib - self.available_mib) / self.total_mib
        if self.used_mib is not None:
            return 100.0 * self.used_mib / self.total_mib
        return None


@dataclass(frozen=True)
class Sample:
    """One reading of the board.

    ``power_w`` maps rail names (as the board labels them, e.g. ``VDD_IN``, ``VDD_CPU_GPU_CV``,
    ``VDD_SOC``; ``VIN``, ``VDD_GPU``, ``VDD_CPU_SOC_MSS`` on Thor) to watts; ``board_power_w`` is
    the board/module input power (``VIN`` from the INA238 on AGX Thor, ``VDD_IN`` on Orin Nano/NX,
    ``VDD_IN`` / ``POM_5V_IN`` on older boards, the module rails' sum on AGX Orin, RAPL package
    power on x86 hosts) when known. ``board_power_limit_w`` is the limit the board itself enforces
    on that input, where its monitor exposes one (the INA238 ``power1_max`` on Thor).
    ``temps_c`` maps thermal zone names (``cpu-thermal``, ``gpu-thermal``, ``tj-thermal``...) to °C.
    ``throttling`` maps a throttle reason (e.g. ``oc_alarm``, ``thermal``) to whether it is active.
    """

    ts: float
    source: str
    power_w: dict[str, float | None] = field(default_factory=dict[str, float | None])
    board_power_w: float | None = None
    board_power_limit_w: float | None = None
    temps_c: dict[str, float | None] = field(default_factory=dict[str, float | None])
    memory: MemorySample = field(default_factory=MemorySample)
    gpu_load_pct: float | None = None
    cpu_load_pct: float | None = None
    power_mode: str | None = None
    throttling: dict[str, bool] = field(default_factory=dict[str, bool])

    @property
    def max_temp_c(self) -> float | None:
        """Hottest known zone, or None when no zone could be read."""
        known = [t for t in self.temps_c.values() if t is not None]
        return max(known) if known else None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["memory"]["used_pct"] = self.memory.used_pct
        data["max_temp_c"] = self.max_temp_c
        return data


class MonitorSource(Protocol):
    """A place readings come from (jtop, Jetson sysfs, a plain Linux host)."""

    name: str

    def read(self) -> Sample:
        """Take one reading; unreadable fields are None. Must not raise for bad data."""
        ...

    def close(self) -> None:
        """Release what the source holds (jtop's connection, open files)."""
        ...
