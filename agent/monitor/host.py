"""Readings from any Linux host, taken from files under a root path.

Everything is read from ``<root>/proc`` and ``<root>/sys`` (``/`` on a device, a fixture tree in
tests), so a reading is a pure function of those files:

* ``proc/meminfo``  RAM and swap (kB) → MiB,
* ``proc/stat``     CPU load from the delta of the aggregate ``cpu`` line between two reads,
* ``sys/class/thermal/thermal_zone*/{type,temp}``  temperatures (m°C),
* ``sys/class/powercap/intel-rapl:<n>/{name,energy_uj,max_energy_range_uj}``  package power
  from the energy delta between two reads (the counter wraps at ``max_energy_range_uj``).

No GPU load and no power mode on a plain host (both None). A file that is missing or holds
garbage makes its field None and logs ONE warning for that field (not one per sample); nothing
here raises for bad data. The helpers are shared with :mod:`agent.monitor.sysfs`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.monitor.sample import MemorySample, Sample

log = logging.getLogger(__name__)

# The kernel reports -256 °C (-256000 m°C) for a zone whose sensor is offline; jetson-stats
# names it TEMPERATURE_OFFLINE (jtop/core/temperature.py) and reports such a zone as offline.
OFFLINE_MILLIDEG = -256000
# Readings outside this range are garbage, not temperatures.
_MIN_PLAUSIBLE_C = -60.0
_MAX_PLAUSIBLE_C = 200.0

_ZONE_NUM = re.compile(r"(\d+)$")
_RAPL_TOP = re.compile(r"^intel-rapl:\d+$")
_MEMINFO_LINE = re.compile(r"^(\w+):\s+(\d+)(?:\s+kB)?\s*$")


class WarnOnce:
    """Log one warning per field key for the lifetime of a source, then stay quiet.

    ``ok(key)`` re-arms a key once it reads again, so a field that breaks, recovers and
    breaks again is reported twice, not once per sample.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._warned: set[str] = set()
        self._noted: set[str] = set()

    def warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self._log.warning("%s (further problems with %s are not logged)", message, key)

    def note(self, key: str, message: str) -> None:
        """Log an expected condition (an offline zone) once, at info level."""
        if key not in self._noted:
            self._noted.add(key)
            self._log.info("%s", message)

    def ok(self, key: str) -> None:
        if key in self._warned:
            self._warned.discard(key)
            self._log.info("%s is readable again", key)

    @property
    def warned(self) -> frozenset[str]:
        return frozenset(self._warned)


def read_text(path: Path) -> str | None:
    """The file's text, or None when it is missing, unreadable or not text."""
    try:
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def read_int(path: Path) -> int | None:
    """The file's first token as an integer (``"32760 ma"`` → 32760), or None."""
    text = read_text(path)
    if text is None:
        return None
    parts = text.split()
    if not parts:
        return None
    try:
        return int(parts[0])
    except ValueError:
        return None


def zone_sort_key(path: Path) -> tuple[int, str]:
    match = _ZONE_NUM.search(path.name)
    return (int(match.group(1)) if match else 1 << 30, path.name)


# --------------------------------------------------------------------------- memory


def read_memory(meminfo: Path, warn: WarnOnce) -> MemorySample:
    """RAM and swap from ``/proc/meminfo`` (kB), in MiB.

    ``used`` is ``MemTotal - MemAvailable`` (what the governor's pressure is about); kernels
    without ``MemAvailable`` (< 3.14) get ``MemTotal - MemFree - Buffers - Cached``.
    """
    text = read_text(meminfo)
    if text is None:
        warn.warn("memory", f"{meminfo}: cannot read it; memory is unknown")
        return MemorySample()
    values: dict[str, int] = {}
    for line in text.splitlines():
        match = _MEMINFO_LINE.match(line.strip())
        if match:
            values[match.group(1)] = int(match.group(2))
    total = values.get("MemTotal")
    if total is None or total <= 0:
        warn.warn("memory", f"{meminfo}: no valid MemTotal line; memory is unknown")
        return MemorySample()
    warn.ok("memory")
    available = values.get("MemAvailable")
    if available is not None and available > total:
        warn.warn("memory.available", f"{meminfo}: MemAvailable exceeds MemTotal; ignoring it")
        available = None
    if available is not None:
        used: int | None = total - available
    elif all(k in values for k in ("MemFree", "Buffers", "Cached")):
        used = max(0, total - values["MemFree"] - values["Buffers"] - values["Cached"])
    else:
        used = None
    swap_total = values.get("SwapTotal")
    swap_free = values.get("SwapFree")
    swap_used = (
        swap_total - swap_free
        if swap_total is not None and swap_free is not None and swap_free <= swap_total
        else None
    )

    def mib(kib: int | None) -> float | None:
        return None if kib is None else kib / 1024.0

    return MemorySample(
        total_mib=mib(total),
        used_mib=mib(used),
        available_mib=mib(available),
        swap_total_mib=mib(swap_total),
        swap_used_mib=mib(swap_used),
    )


# --------------------------------------------------------------------------- CPU load


@dataclass
class CpuLoad:
    """CPU load from two reads of ``/proc/stat``: busy share of the jiffies between them.

    The aggregate ``cpu`` line holds user nice system idle iowait irq softirq steal guest
    guest_nice (proc(5)); guest time is already counted in user/nice, so only the first eight
    are summed. Busy time is ``user + nice + system``, the figure jtop reports
    (``jtop/core/cpu.py`` get_utilization() gives only user, nice, system and idle shares), so
    the jtop and sysfs sources agree. The first read has no previous one: None.
    """

    prev_total: int | None = None
    prev_idle: int | None = None

    def update(self, stat: Path, warn: WarnOnce) -> float | None:
        text = read_text(stat)
        fields: list[int] | None = None
        if text is not None:
            for line in text.splitlines():
                parts = line.split()
                if parts and parts[0] == "cpu":
                    try:
                        fields = [int(v) for v in parts[1:9]]
                    except ValueError:
                        fields = None
                    break
        if fields is None or len(fields) < 4 or any(v < 0 for v in fields):
            warn.warn("cpu_load", f"{stat}: no valid aggregate 'cpu' line; CPU load is unknown")
            self.prev_total = self.prev_idle = None
            return None
        warn.ok("cpu_load")
        total = sum(fields)
        idle = total - sum(fields[:3])  # everything but user + nice + system
        prev_total, prev_idle = self.prev_total, self.prev_idle
        self.prev_total, self.prev_idle = total, idle
        if prev_total is None or prev_idle is None:
            return None
        d_total, d_idle = total - prev_total, idle - prev_idle
        if d_total <= 0 or d_idle < 0 or d_idle > d_total:
            # No time passed, or the counters went backwards (a reset): no evidence.
            return None
        return 100.0 * (d_total - d_idle) / d_total


# --------------------------------------------------------------------------- thermal


def read_thermal_zones(base: Path, warn: WarnOnce) -> dict[str, float | None]:
    """``{zone type: °C}`` for every ``thermal_zone*`` under ``base``.

    An offline zone (``-256000``) and a zone whose ``temp`` cannot be read or parsed are None;
    a second zone with the same type is named ``<type>@<thermal_zoneN>``.
    """
    temps: dict[str, float | None] = {}
    if not base.is_dir():
        warn.warn("temps", f"{base}: no thermal zones; temperatures are unknown")
        return temps
    zones = sorted((p for p in base.glob("thermal_zone*") if p.is_dir()), key=zone_sort_key)
    for zone in zones:
        raw_type = read_text(zone / "type")
        name = raw_type.strip() if raw_type and raw_type.strip() else zone.name
        if name in temps:
            name = f"{name}@{zone.name}"
        key = f"temp[{name}]"
        raw = read_int(zone / "temp")
        if raw is None:
            warn.warn(key, f"{zone / 'temp'}: missing or not an integer; {name} is unknown")
            temps[name] = None
            continue
        if raw == OFFLINE_MILLIDEG:
            warn.note(key, f"{zone}: {name} reports -256 °C (sensor offline); it is unknown")
            temps[name] = None
            continue
        celsius = raw / 1000.0
        if not _MIN_PLAUSIBLE_C <= celsius <= _MAX_PLAUSIBLE_C:
            warn.warn(key, f"{zone / 'temp'}: {raw} m°C is not a plausible temperature")
            temps[name] = None
            continue
        warn.ok(key)
        temps[name] = celsius
    return temps


# --------------------------------------------------------------------------- RAPL


@dataclass
class _Energy:
    energy_uj: int
    t: float


class RaplPower:
    """Package power from RAPL energy counters (``sys/class/powercap/intel-rapl:<n>``).

    Only top-level zones (``intel-rapl:0``, ``intel-rapl:1``: one per package) are summed into
    the board power; sub-zones (``intel-rapl:0:0`` core, uncore, dram) overlap them. Since Linux
    5.10 ``energy_uj`` is readable by root only (CVE-2020-8694): then power is unknown.
    """

    def __init__(self, base: Path, clock: Callable[[], float]) -> None:
        self._base = base
        self._clock = clock
        self._prev: dict[str, _Energy] = {}

    def read(self, warn: WarnOnce) -> tuple[dict[str, float | None], float | None]:
        rails: dict[str, float | None] = {}
        if not self._base.is_dir():
            return rails, None
        zones = sorted(p for p in self._base.iterdir() if _RAPL_TOP.match(p.name))
        now = self._clock()
        for zone in zones:
            raw_name = read_text(zone / "name")
            name = raw_name.strip() if raw_name and raw_name.strip() else zone.name
            if name in rails:
                name = f"{name}@{zone.name}"
            key = f"power[{name}]"
            energy = read_int(zone / "energy_uj")
            max_range = read_int(zone / "max_energy_range_uj")
            if energy is None or energy < 0:
                warn.warn(
                    key,
                    f"{zone / 'energy_uj'}: missing, unreadable (root only since Linux 5.10) "
                    f"or garbage; {name} power is unknown",
                )
                self._prev.pop(zone.name, None)
                rails[name] = None
                continue
            prev = self._prev.get(zone.name)
            self._prev[zone.name] = _Energy(energy, now)
            if prev is None or now <= prev.t:
                rails[name] = None  # first read: no delta yet
                continue
            delta = energy - prev.energy_uj
            if delta < 0:
                if max_range is None or max_range <= prev.energy_uj:
                    warn.warn(
                        key,
                        f"{zone}: energy counter went backwards and max_energy_range_uj is "
                        "unusable; skipping this interval",
                    )
                    rails[name] = None
                    continue
                delta += max_range  # wrapped past max_energy_range_uj back to 0
            warn.ok(key)
            rails[name] = delta / 1e6 / (now - prev.t)
        values = list(rails.values())
        total = sum(v for v in values if v is not None) if values and None not in values else None
        return rails, total


# --------------------------------------------------------------------------- source


class HostSource:
    """A plain Linux host (x86 workstation, CI runner, non-Jetson ARM board)."""

    name = "host"

    def __init__(
        self,
        root: Path = Path("/"),
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(root)
        self._wall = wall_clock
        self._warn = WarnOnce(log)
        self._cpu = CpuLoad()
        self._rapl = RaplPower(self.root / "sys/class/powercap", clock)

    def read(self) -> Sample:
        rails, board = self._rapl.read(self._warn)
        return Sample(
            ts=self._wall(),
            source=self.name,
            power_w=rails,
            board_power_w=board,
            temps_c=read_thermal_zones(self.root / "sys/class/thermal", self._warn),
            memory=read_memory(self.root / "proc/meminfo", self._warn),
            gpu_load_pct=None,
            cpu_load_pct=self._cpu.update(self.root / "proc/stat", self._warn),
            power_mode=None,
            throttling={},
        )

    def close(self) -> None:
        """Nothing is held open between reads."""
