"""Board input power (``VIN``) from an INA238 power monitor, read straight from sysfs.

Jetson AGX Thor's carrier measures its whole input with a TI INA238 (module rails stay on
INA3221s); the board throttles when VIN passes its limit ("if Block2 also goes through the INA238
shunt, its ~300 W will be added to VIN power and can easily hit the VIN limit (e.g. 168 W),
causing unexpected CPU/GPU throttling", NVIDIA on the developer forum, "Question about power
monitor with additional load on Jetson Thor"). jetson-stats reports it as the ``VIN`` rail and
the board total (``jtop/core/power.py``, ``list_all_ina238_ports`` / ``total_power``, PR #900);
``tegrastats`` on Thor prints it as ``VIN``.

Files (Linux ``Documentation/hwmon/ina238.rst``), under
``sys/bus/i2c/drivers/ina238/<bus>-<addr>/hwmon/hwmon*/`` or any ``sys/class/hwmon/hwmon*`` whose
``name`` is ``ina238``:

``power1_input``  power, **µW** (preferred, as jetson-stats does)
``in1_input`` / ``curr1_input``  bus voltage, mV / current, mA (used without ``power1_input``)
``power1_max`` (``power1_crit`` where a driver has it)  the power alert threshold, µW: the limit
``power1_max_alarm`` / ``power1_crit_alarm``  set while the power is over it
``in1_label`` / ``label``  rail name where the driver exposes one; else ``VIN``

``in1_max`` is the bus *over-voltage* threshold (mV), not a power limit, so it is not read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from agent.monitor.host import WarnOnce, read_int, read_text, zone_sort_key

__all__ = ["BoardInput", "read_board_input"]

#: The rail name jetson-stats and tegrastats give the INA238 board input.
VIN = "VIN"
_DRIVER = "sys/bus/i2c/drivers/ina238"
_HWMON_CLASS = "sys/class/hwmon"
_DEVICE = re.compile(r"^\d+-[0-9a-fA-F]{4}$")


@dataclass(frozen=True)
class BoardInput:
    """One reading of the board input monitor; a field it could not read is None."""

    name: str
    power_w: float | None
    limit_w: float | None
    alarm: bool | None


def _hwmon_dirs(root: Path) -> list[Path]:
    """INA238 hwmon directories under ``root``, each once (a board links one device from both
    the driver and the hwmon class)."""
    found: list[Path] = []
    seen: set[Path] = set()
    driver = root / _DRIVER
    candidates: list[Path] = []
    if driver.is_dir():
        for dev in sorted(driver.iterdir()):
            if dev.is_dir() and _DEVICE.match(dev.name):
                candidates.extend(sorted(dev.glob("hwmon/hwmon*"), key=zone_sort_key))
    hwmon_class = root / _HWMON_CLASS
    if hwmon_class.is_dir():
        candidates.extend(sorted(hwmon_class.iterdir(), key=zone_sort_key))
    for hwmon in candidates:
        if (read_text(hwmon / "name") or "").strip() != "ina238":
            continue
        real = hwmon.resolve()
        if real not in seen:
            seen.add(real)
            found.append(hwmon)
    return found


def _rail_name(hwmon: Path) -> str:
    for label in ("in1_label", "label"):
        text = (read_text(hwmon / label) or "").strip()
        if text:
            return text
    return VIN


def _power_w(hwmon: Path) -> float | None:
    micro = read_int(hwmon / "power1_input")
    if micro is not None and micro >= 0:
        return micro / 1e6
    millivolt = read_int(hwmon / "in1_input")
    milliamp = read_int(hwmon / "curr1_input")
    if millivolt is None or milliamp is None or millivolt < 0:
        return None
    return millivolt * milliamp / 1e6


def _limit_w(hwmon: Path) -> float | None:
    for name in ("power1_max", "power1_crit"):
        micro = read_int(hwmon / name)
        if micro is not None and micro > 0:
            return micro / 1e6
    return None


def _alarm(hwmon: Path) -> bool | None:
    flags = [read_int(hwmon / f"power1_{kind}_alarm") for kind in ("max", "crit")]
    known = [f != 0 for f in flags if f is not None]
    return any(known) if known else None


def read_board_input(root: Path, warn: WarnOnce) -> BoardInput | None:
    """The INA238 board input under ``root``; None when the board has no INA238 (most Jetsons:
    their input is an INA3221 ``VDD_IN`` rail, or not measured). A second INA238 is ignored with
    one warning: which of two would be the input is not known."""
    dirs = _hwmon_dirs(Path(root))
    if not dirs:
        return None
    if len(dirs) > 1:
        warn.warn(
            "ina238.count",
            f"{root}: {len(dirs)} INA238 monitors ({', '.join(str(d) for d in dirs)}); reading "
            f"the first as the board input",
        )
    hwmon = dirs[0]
    name = _rail_name(hwmon)
    power = _power_w(hwmon)
    key = f"power[{name}]"
    if power is None:
        warn.warn(
            key,
            f"{hwmon}: power1_input (or in1_input and curr1_input) missing or not integers; "
            f"board input {name} is unknown",
        )
    else:
        warn.ok(key)
    return BoardInput(name=name, power_w=power, limit_w=_limit_w(hwmon), alarm=_alarm(hwmon))
