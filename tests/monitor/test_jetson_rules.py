"""Issue 19 items 8 and 10: readings that must not steer the governor (PMIC-Die, fan estimate,
hwmon drives, USB-PD supplies, the carrier's VIN_SYS_5V0) and memory/CPU figures that agree
between the jtop and sysfs sources."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import pytest

from agent.config.profiles.store import ProfileStore
from agent.monitor.governor.machine import Governor
from agent.monitor.governor.reading import read_sample
from agent.monitor.governor.states import GovernorState
from agent.monitor.jtop import JtopSource
from agent.monitor.sample import Sample
from agent.monitor.sysfs import SysfsSource
from tests.assets import SYSFS as FIXTURES


def test_xavier_pmic_fixture_keeps_the_governor_normal() -> None:
    sample = SysfsSource(FIXTURES / "xavier-nx").read()
    # No Xavier profile ships any more (JetPack 5 is not supported); the rule is about the
    # zone, so any Jetson profile's thresholds show it (PMIC-Die's 100 °C is over all of them).
    governor = Governor(ProfileStore().load("orin-nx-8gb"), max_fps=30.0)
    for i in range(30):
        events = governor.update(dataclasses.replace(sample, ts=sample.ts + i))
        assert events == []
    assert governor.state == GovernorState.NORMAL


class AgxJtop:
    """jtop on an AGX Orin with an NVMe drive and a USB-PD port (shapes from jetson-stats'
    jtop/core/power.py and temperature.py: INA channels are type 'INA3221'; a power_supply
    entry carries its sysfs ``type`` file, 'USB' for the UCSI port)."""

    def start(self) -> None: ...

    def ok(self, spin: bool = False) -> bool:
        return True

    def close(self) -> None: ...

    power: ClassVar[dict[str, Any]] = {
        "rail": {
            "VDD_GPU_SOC": {"type": "INA3221", "online": True, "power": 2394},
            "VDD_CPU_CV": {"type": "INA3221", "online": True, "power": 402},
            "VIN_SYS_5V0": {"type": "INA3221", "online": True, "power": 4030},
            "VDDQ_VDD2_1V8AO": {"type": "INA3221", "online": True, "power": 298},
            "ucsi-source-psy-1-00081": {"type": "USB", "online": True, "power": 15000},
        },
        "tot": {"power": 22124, "avg": 22124},  # jtop summed all of them
    }
    temperature: ClassVar[dict[str, Any]] = {
        "cpu": {"online": True, "temp": 52.0},
        "PMIC": {"online": True, "temp": 50.0},
        "thermal": {"online": True, "temp": 51.0},
        "Composite": {"online": True, "temp": 71.0, "max": 84.0, "crit": 85.0},
    }
    memory: ClassVar[dict[str, Any]] = {"RAM": {"tot": 1000, "used": 10}}
    gpu: ClassVar[dict[str, Any]] = {}
    cpu: ClassVar[dict[str, Any]] = {
        "total": {"user": 20.0, "nice": 0.0, "system": 5.0, "idle": 60.0}
    }
    nvpmodel = None


def test_jtop_agx_power_temps_and_cpu(tmp_path: Path) -> None:
    s = JtopSource(
        AgxJtop, meminfo=FIXTURES / "agx-orin/proc/meminfo", root=FIXTURES / "agx-orin"
    ).read()
    assert "ucsi-source-psy-1-00081" not in s.power_w
    assert s.board_power_w == pytest.approx(2.394 + 0.402 + 0.298)  # no USB-PD, no VIN_SYS_5V0
    assert s.temps_c == {"cpu": 52.0}  # no PMIC dummy, no fan estimate, no NVMe drive
    # 15 % iowait/irq is neither busy nor idle in jtop's shares: busy = user + nice + system.
    assert s.cpu_load_pct == 25.0


def test_jtop_memory_falls_back_to_jtop_fields(tmp_path: Path) -> None:
    s = JtopSource(AgxJtop, meminfo=tmp_path / "missing", root=tmp_path).read()
    assert s.memory.total_mib == pytest.approx(1000 / 1024)
    assert s.memory.available_mib is None
    assert s.memory.used_pct == pytest.approx(1.0)


# --------------------------------------------------------------------------- item 9: power modes


@pytest.mark.parametrize(
    ("profile", "mode", "budget"),
    [
        ("agx-orin-32gb", "MODE_50W", 50.0),  # p3701-0000 (developer kit) id 3
        ("agx-orin-32gb", "MODE_40W", 40.0),  # p3701-0004 id 3
        ("orin-nano-4gb", "10W", 10.0),
        ("orin-nano-4gb", "7W_AI", 7.0),  # before JetPack 6.2
        ("orin-nano-4gb", "7W_CPU", 7.0),
        ("orin-nano-4gb", "25W", 25.0),  # JetPack 6.2 reuses id 1
        ("orin-nx-16gb", "MAXN", 25.0),
        ("orin-nx-8gb", "MAXN", 20.0),
    ],
)
def test_power_mode_names_give_their_budget(profile: str, mode: str, budget: float) -> None:
    sample = Sample(ts=0.0, source="sysfs", power_mode=mode)
    reading = read_sample(sample, ProfileStore().load(profile))
    assert reading.budget_w == budget


def test_agx_orin_32gb_in_mode_50w_is_not_over_budget_at_35w() -> None:
    governor = Governor(ProfileStore().load("agx-orin-32gb"), max_fps=30.0)
    for i in range(30):
        sample = Sample(ts=float(i), source="sysfs", board_power_w=35.0, power_mode="MODE_50W")
        assert governor.update(sample) == []
    assert governor.last_reading is not None
    assert governor.last_reading["power_budget_w"] == 50.0
    assert governor.state == GovernorState.NORMAL


def test_jtop_samples_carry_the_over_current_flags(sysfs_root: Any) -> None:
    """jtop reports no over-current counters; the jtop source reads them from sysfs like the
    sysfs source, so the governor sees an OC3 event whichever source runs."""
    root = sysfs_root("agx-orin")
    jtop, sysfs = JtopSource(AgxJtop, root=root), SysfsSource(root)
    assert "oc3" not in jtop.read().throttling  # first read: no evidence yet
    sysfs.read()
    counter = root / "sys/class/hwmon/hwmon2/oc3_event_cnt"
    counter.write_text(f"{int(counter.read_text()) + 2}\n")
    flags, board = jtop.read().throttling, sysfs.read().throttling
    assert flags["oc3"] is True and flags["oc1"] is False and flags["oc_alarm"] is True
    assert {k: v for k, v in flags.items() if k != "oc_alarm"} == {
        k: v for k, v in board.items() if k != "oc_alarm"
    }
