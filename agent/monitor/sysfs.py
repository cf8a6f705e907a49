"""Readings from a Jetson's sysfs/procfs, read directly (no jtop, no tegrastats, no root).

Every path is relative to ``root`` (``/`` on the board, a fixture tree in tests). What is read,
and where the layout comes from (see ``tests/fixtures/sysfs/README.md`` for the citations):

Power (INA3221; kernel ``Documentation/hwmon/ina3221.rst``, jetson-stats ``jtop/core/power.py``)
    JetPack 5/6 (hwmon): ``sys/bus/i2c/drivers/ina3221/<bus>-<addr>/hwmon/hwmon*/`` with
    ``in<N>_label`` (rail name), ``in<N>_input`` (bus voltage, mV), ``curr<N>_input`` (mA);
    W = mV·mA/1e6. Channels labelled ``NC`` (not connected, AGX Orin) and channel 7 (the sum
    of shunt voltages) are skipped. ``curr<N>_crit_alarm`` / ``curr<N>_max_alarm`` are the
    INA3221 critical/warning alerts.
    L4T ≤ 32 (iio): ``sys/bus/i2c/drivers/ina3221x/<bus>-<addr>/iio:device*/`` with
    ``rail_name_<N>`` and ``in_power<N>_input`` (mW), or ``in_voltage<N>_input`` (mV) ×
    ``in_current<N>_input`` (mA).
    Jetson AGX Thor (JetPack 7) labels its INA3221 channels ``VDD_GPU``, ``VDD_CPU_SOC_MSS``
    and ``VIN_SYS_5V0`` (the rails ``tegrastats`` prints there); they are read like any other.
Board input power
    The ``VIN`` rail of an INA238 where the board has one (AGX Thor's carrier; its limit and
    alarm come along, see :mod:`agent.monitor.ina238`), else the ``VDD_IN`` or ``POM_5V_IN``
    rail; boards with none of them (AGX Orin) get the sum of the module rails (jetson-stats'
    ``total_power`` sums all of them; the carrier's ``VIN_SYS_5V0`` is left out, see
    :mod:`agent.monitor.jetson_rules`).
Temperatures
    ``sys/devices/virtual/thermal/thermal_zone*/{type,temp}`` (m°C); ``-256000`` = offline.
    ``PMIC-Die`` and ``thermal-fan-est`` are dropped (:mod:`agent.monitor.jetson_rules`).
GPU load
    ``load`` (per mille) of Thor's ``gpu-gpc-0`` devfreq node or of the Tegra iGPU device, no
    NVML (JetPack 7.2 Orin's NVML answers NotSupported): see :mod:`agent.monitor.gpu_load`.
Power mode
    ``var/lib/nvpmodel/status`` (``pmode:0002``: what ``nvpmodel`` stores as the active mode)
    mapped to a name by ``etc/nvpmodel.conf``'s ``< POWER_MODEL ID=2 NAME=MAXN_SUPER >``
    lines; without a status file, the conf's ``< PM_CONFIG DEFAULT=n >`` is the active mode
    (nvpmodel applies the default when its user data file is absent).
Throttling
    over-current counters, INA3221 alarms and thermal cooling devices: see
    :mod:`agent.monitor.throttle`; ``vin_alarm``: the INA238 board input is over its limit.
Memory and CPU
    ``proc/meminfo`` and two reads of ``proc/stat`` (shared with :mod:`agent.monitor.host`).

A missing or garbage file makes that field None and logs one warning per field; ``read()``
never raises for bad data.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from agent.monitor.gpu_load import GpuLoadReader
from agent.monitor.host import (
    CpuLoad,
    WarnOnce,
    read_int,
    read_memory,
    read_text,
    read_thermal_zones,
    zone_sort_key,
)
from agent.monitor.ina238 import BoardInput, read_board_input
from agent.monitor.jetson_rules import board_input_power, soc_zones
from agent.monitor.sample import Sample
from agent.monitor.throttle import ThrottleReader

log = logging.getLogger(__name__)

_INA_DRIVERS = ("sys/bus/i2c/drivers/ina3221", "sys/bus/i2c/drivers/ina3221x")
_HWMON_LABEL = re.compile(r"^in(\d+)_label$")
_IIO_RAIL = re.compile(r"^rail_name_(\d+)$")
_PMODE = re.compile(r"pmode:\s*(\d+)")
_POWER_MODEL = re.compile(r"<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=([^\s>]+)\s*>")
_PM_DEFAULT = re.compile(r"<\s*PM_CONFIG\s+DEFAULT=(\d+)\s*>")
_SUM_OF_SHUNTS = 7


class SysfsSource:
    """A Jetson read through its sysfs/procfs files under ``root``.

    ``cpu_interval_state`` is the previous ``/proc/stat`` reading that CPU load is the delta
    from; pass one to carry it over from an earlier source (a re-opened monitor keeps giving a
    load on its first read), or leave it None to start fresh (first read: CPU load None).
    """

    name = "sysfs"

    def __init__(
        self,
        root: Path = Path("/"),
        *,
        cpu_interval_state: CpuLoad | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(root)
        self._wall = wall_clock
        self._warn = WarnOnce(log)
        self._cpu = cpu_interval_state if cpu_interval_state is not None else CpuLoad()
        self._throttle = ThrottleReader(self.root, self._warn)
        self._gpu = GpuLoadReader(self.root, self._warn)

    # ------------------------------------------------------------------ public

    def read(self) -> Sample:
        vin = read_board_input(self.root, self._warn)
        rails, alarms = self._read_power(vin is not None)
        if vin is not None:
            rails[vin.name] = vin.power_w
        throttling = self._throttle.read(alarms)
        if vin is not None and vin.alarm is not None:
            throttling["vin_alarm"] = vin.alarm
        thermal = self.root / "sys/devices/virtual/thermal"
        if not thermal.is_dir():
            thermal = self.root / "sys/class/thermal"
        return Sample(
            ts=self._wall(),
            source=self.name,
            power_w=rails,
            board_power_w=board_input_power(rails),
            board_power_limit_w=_limit(vin),
            temps_c=soc_zones(read_thermal_zones(thermal, self._warn)),
            memory=read_memory(self.root / "proc/meminfo", self._warn),
            gpu_load_pct=self._gpu.read(),
            cpu_load_pct=self._cpu.update(self.root / "proc/stat", self._warn),
            power_mode=self._read_power_mode(),
            throttling=throttling,
        )

    def close(self) -> None:
        """Nothing is held open between reads."""

    # ------------------------------------------------------------------ power

    def _ina_devices(self) -> Iterator[Path]:
        """INA3221 device directories, each once (drivers/ina3221*/<bus>-<addr>)."""
        seen: set[Path] = set()
        for driver in _INA_DRIVERS:
            base = self.root / driver
            if not base.is_dir():
                continue
            for dev in sorted(base.iterdir()):
                if not dev.is_dir() or not re.match(r"^\d+-[0-9a-fA-F]{4}$", dev.name):
                    continue
                real = dev.resolve()
                if real not in seen:
                    seen.add(real)
                    yield dev

    def _read_power(self, has_vin: bool) -> tuple[dict[str, float | None], list[bool]]:
        rails: dict[str, float | None] = {}
        alarms: list[bool] = []
        found = False
        for dev in self._ina_devices():
            for hwmon in sorted(dev.glob("hwmon/hwmon*"), key=zone_sort_key):
                found = True
                self._read_hwmon_rails(hwmon, rails, alarms)
            for iio in sorted(dev.glob("iio:device*"), key=zone_sort_key):
                found = True
                self._read_iio_rails(iio, rails)
        if not found and not has_vin:
            self._warn.warn(
                "power",
                f"{self.root}: no INA3221 power monitor under {' or '.join(_INA_DRIVERS)}; "
                "power is unknown",
            )
        else:
            self._warn.ok("power")
        return rails, alarms

    def _rail_name(self, label_path: Path, rails: dict[str, float | None]) -> str | None:
        raw = read_text(label_path)
        if raw is None or not raw.strip():
            self._warn.warn(f"label[{label_path}]", f"{label_path}: unreadable rail label")
            return None
        name = raw.strip()
        if name == "NC":  # channel not connected (AGX Orin's second monitor)
            return None
        return name if name not in rails else f"{name}@{label_path.parent.name}"

    def _read_hwmon_rails(
        self, hwmon: Path, rails: dict[str, float | None], alarms: list[bool]
    ) -> None:
        for label in sorted(hwmon.glob("in*_label")):
            match = _HWMON_LABEL.match(label.name)
            if not match or int(match.group(1)) == _SUM_OF_SHUNTS:
                continue
            num = match.group(1)
            name = self._rail_name(label, rails)
            if name is None:
                continue
            millivolt = read_int(hwmon / f"in{num}_input")
            milliamp = read_int(hwmon / f"curr{num}_input")
            key = f"power[{name}]"
            if millivolt is None or milliamp is None or millivolt < 0:
                self._warn.warn(
                    key,
                    f"{hwmon}: in{num}_input/curr{num}_input missing or not integers; "
                    f"{name} power is unknown",
                )
                rails[name] = None
            else:
                self._warn.ok(key)
                rails[name] = millivolt * milliamp / 1e6
            for kind in ("crit", "max"):
                flag = read_int(hwmon / f"curr{num}_{kind}_alarm")
                if flag is not None:
                    alarms.append(flag != 0)

    def _read_iio_rails(self, iio: Path, rails: dict[str, float | None]) -> None:
        for label in sorted(iio.glob("rail_name_*")):
            match = _IIO_RAIL.match(label.name)
            if not match:
                continue
            num = match.group(1)
            name = self._rail_name(label, rails)
            if name is None:
                continue
            key = f"power[{name}]"
            milliwatt = read_int(iio / f"in_power{num}_input")
            if milliwatt is None:
                millivolt = read_int(iio / f"in_voltage{num}_input")
                milliamp = read_int(iio / f"in_current{num}_input")
                if millivolt is not None and milliamp is not None:
                    milliwatt = millivolt * milliamp // 1000
            if milliwatt is None or milliwatt < 0:
                self._warn.warn(
                    key, f"{iio}: in_power{num}_input missing or garbage; {name} is unknown"
                )
                rails[name] = None
            else:
                self._warn.ok(key)
                rails[name] = milliwatt / 1000.0

    # ------------------------------------------------------------------ power mode

    def _read_power_mode(self) -> str | None:
        conf_path = self.root / "etc/nvpmodel.conf"
        conf = read_text(conf_path)
        if conf is None:
            self._warn.warn("power_mode", f"{conf_path}: cannot read it; power mode is unknown")
            return None
        names = {int(i): n for i, n in _POWER_MODEL.findall(conf)}
        status_path = self.root / "var/lib/nvpmodel/status"
        status = read_text(status_path)
        mode_id: int | None = None
        if status is not None:
            match = _PMODE.search(status)
            if match is None:
                self._warn.warn(
                    "power_mode", f"{status_path}: no 'pmode:NNNN' in it; power mode is unknown"
                )
                return None
            mode_id = int(match.group(1))
        else:
            default = _PM_DEFAULT.search(conf)
            if default is not None:
                mode_id = int(default.group(1))
        if mode_id is None or mode_id not in names:
            self._warn.warn(
                "power_mode",
                f"{conf_path}: no POWER_MODEL with ID={mode_id} (active per {status_path} or "
                "PM_CONFIG DEFAULT); power mode is unknown",
            )
            return None
        self._warn.ok("power_mode")
        return names[mode_id]


def _limit(vin: BoardInput | None) -> float | None:
    return None if vin is None else vin.limit_w
