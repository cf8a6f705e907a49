"""The sysfs source on JetPack 7 boards: AGX Thor (INA238 board input, renamed INA3221 rails,
GPU load from its devfreq node) and AGX Orin on JetPack 7.2 (no NVML load; nvgpu sysfs).

Trees: tests/fixtures/sysfs/agx-thor and agx-orin-jp72 (README there: sources, estimates).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.config.profiles.store import ProfileStore
from agent.monitor.governor.machine import Governor
from agent.monitor.governor.reading import read_sample
from agent.monitor.governor.states import GovernorState
from agent.monitor.select import open_source
from agent.monitor.sysfs import SysfsSource
from tests.assets import SYSFS as FIXTURES

THOR = FIXTURES / "agx-thor"
ORIN_JP72 = FIXTURES / "agx-orin-jp72"
INA238 = "sys/bus/i2c/drivers/ina238/2-0044/hwmon/hwmon3"
SAMPLES = FIXTURES / "tegrastats-samples.txt"
CopyRoot = Callable[[str], Path]
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (-?\d+)mW")
_ZONE = re.compile(r"\b([a-z][a-z0-9]*)@(-?[\d.]+)C")


def warnings_about(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and text in r.getMessage()
    ]


def samples(board: str) -> list[str]:
    prefix = f"{board}: "
    lines = SAMPLES.read_text(encoding="utf-8").splitlines()
    return [line[len(prefix) :] for line in lines if line.startswith(prefix)]


# --------------------------------------------------------------------------- AGX Thor


def test_thor_board_input_renamed_rails_and_gpu_load() -> None:
    s = SysfsSource(THOR).read()
    assert s.power_w == pytest.approx(
        {
            "VDD_GPU": 37.536,  # 19200 mV x 1955 mA
            "VDD_CPU_SOC_MSS": 18.9696,
            "VIN_SYS_5V0": 18.336,
            "VIN": 87.426,  # INA238 power1_input, µW
        }
    )
    assert s.board_power_w == pytest.approx(87.426)  # the INA238, not a sum of rails
    assert s.board_power_limit_w == pytest.approx(168.0)  # power1_max
    assert s.temps_c == {
        "cpu-thermal": 60.406,
        "gpu-thermal": 62.906,
        "soc012-thermal": 58.468,
        "soc345-thermal": 63.281,
        "tj-thermal": 63.281,
    }
    assert s.gpu_load_pct == pytest.approx(85.0)  # gpu-gpc-0/load, per mille
    assert s.power_mode == "120W"
    # INA3221 alarms 0, INA238 power alarm 0, GPU devfreq cooling device not capping.
    assert s.throttling == {"oc_alarm": False, "thermal": False, "vin_alarm": False}
    assert s.memory.total_mib == 125749.0


def test_thor_vin_alarm_and_limit_files(sysfs_root: CopyRoot) -> None:
    root = sysfs_root("agx-thor")
    ina = root / INA238
    (ina / "power1_max_alarm").write_text("1\n")
    s = SysfsSource(root).read()
    assert s.throttling["vin_alarm"] is True
    assert s.throttling["oc_alarm"] is False  # the INA3221 alarms are separate
    (ina / "power1_max").unlink()
    (ina / "power1_max_alarm").unlink()
    assert SysfsSource(root).read().board_power_limit_w is None  # no limit file: unknown
    assert "vin_alarm" not in SysfsSource(root).read().throttling
    (ina / "power1_crit").write_text("150000000\n")
    (ina / "power1_crit_alarm").write_text("0\n")
    s = SysfsSource(root).read()
    assert s.board_power_limit_w == pytest.approx(150.0)
    assert s.throttling["vin_alarm"] is False


def test_thor_vin_from_bus_voltage_and_current(sysfs_root: CopyRoot) -> None:
    root = sysfs_root("agx-thor")
    (root / INA238 / "power1_input").unlink()
    s = SysfsSource(root).read()
    assert s.board_power_w == pytest.approx(19968 * 4378 / 1e6)  # in1_input mV x curr1_input mA
    assert s.power_w["VIN"] == s.board_power_w


def test_thor_vin_garbage_is_unknown_warned_once_and_recovers(
    sysfs_root: CopyRoot, caplog: pytest.LogCaptureFixture
) -> None:
    root = sysfs_root("agx-thor")
    ina = root / INA238
    (ina / "power1_input").write_text("garbage\n")
    (ina / "curr1_input").unlink()
    source = SysfsSource(root)
    for _ in range(3):
        s = source.read()
        assert s.board_power_w is None  # unknown: not the module rails' sum
        assert s.power_w["VIN"] is None
        assert s.power_w["VDD_GPU"] == pytest.approx(37.536)
    assert len(warnings_about(caplog, "board input VIN is unknown")) == 1
    (ina / "power1_input").write_text("90000000\n")
    assert source.read().board_power_w == pytest.approx(90.0)


def test_thor_without_ina238_sums_the_module_rails(sysfs_root: CopyRoot) -> None:
    root = sysfs_root("agx-thor")
    for path in sorted((root / "sys/bus/i2c/drivers/ina238").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    s = SysfsSource(root).read()
    assert "VIN" not in s.power_w
    # VIN_SYS_5V0 feeds the carrier (agent.monitor.jetson_rules): left out, as on AGX Orin.
    assert s.board_power_w == pytest.approx(37.536 + 18.9696)
    assert s.board_power_limit_w is None
    assert "vin_alarm" not in s.throttling


def test_ina238_seen_through_hwmon_class_once(
    sysfs_root: CopyRoot, caplog: pytest.LogCaptureFixture
) -> None:
    root = sysfs_root("agx-thor")
    link = root / "sys/class/hwmon/hwmon3"
    link.parent.mkdir(parents=True)
    link.symlink_to(root / INA238)  # on a board: the same device, twice
    s = SysfsSource(root).read()
    assert s.board_power_w == pytest.approx(87.426)
    assert warnings_about(caplog, "INA238 monitors") == []
    other = root / "sys/class/hwmon/hwmon7"
    other.mkdir()
    (other / "name").write_text("ina238\n")
    (other / "power1_input").write_text("1000000\n")
    source = SysfsSource(root)
    source.read()
    assert source.read().board_power_w == pytest.approx(87.426)  # the driver's one comes first
    assert len(warnings_about(caplog, "2 INA238 monitors")) == 1


def test_thor_gpu_load_nodes(sysfs_root: CopyRoot, caplog: pytest.LogCaptureFixture) -> None:
    root = sysfs_root("agx-thor")
    gpc, nvd = root / "sys/class/devfreq/gpu-gpc-0", root / "sys/class/devfreq/gpu-nvd-0"
    (gpc / "load").unlink()
    (nvd / "load").write_text("120\n")  # the video codecs' clock domain: not the GPU's load
    source = SysfsSource(root)
    assert [source.read().gpu_load_pct for _ in range(3)] == [None, None, None]
    (message,) = warnings_about(caplog, "GPU load is unknown")
    assert "gpu-gpc-0" in message and "NVML" in message
    (gpc / "load").write_text("1001\n")  # over 1000 per mille: garbage, not 100.1 %
    assert SysfsSource(root).read().gpu_load_pct is None


def test_thor_governor_uses_board_input_and_its_limit(sysfs_root: CopyRoot) -> None:
    profile = ProfileStore().load("agx-thor-t5000")
    sample = SysfsSource(THOR).read()
    reading = read_sample(sample, profile)
    assert reading.power_w == pytest.approx(87.426)  # VIN, not the rails' sum
    assert reading.budget_w == 120.0  # mode 120W; the 168 W VIN limit is higher
    governor = Governor(profile, max_fps=30.0)
    assert governor.update(sample) == []
    assert governor.state == GovernorState.NORMAL

    root = sysfs_root("agx-thor")
    (root / INA238 / "power1_max").write_text("80000000\n")  # a carrier with an 80 W VIN limit
    (event,) = Governor(profile, max_fps=30.0).update(SysfsSource(root).read())
    assert event.reading["power_budget_w"] == 80.0
    assert "board power 87.43 W >= budget 80 W (120W)" in event.reason


def test_thor_fixture_names_match_public_tegrastats() -> None:
    s = SysfsSource(THOR).read()
    for line in samples("agx-thor"):
        assert {name for name, _ in _RAIL.findall(line)} == set(s.power_w)
        zones = {f"{zone}-thermal" for zone, _ in _ZONE.findall(line)}
        assert zones <= set(s.temps_c)
        assert "GR3D_FREQ" not in line or "GR3D_FREQ @[" in line  # no utilization on Thor
    # The loaded line's figures are the fixture's (INA3221 values within the estimate's 0.1 %).
    (loaded, *_) = samples("agx-thor")
    for name, mw in _RAIL.findall(loaded):
        assert s.power_w[name] == pytest.approx(int(mw) / 1000, rel=1e-3)


# --------------------------------------------------------------------------- AGX Orin, JetPack 7.2


def test_jp72_agx_orin_gpu_load_without_nvml_and_rails() -> None:
    s = SysfsSource(ORIN_JP72).read()
    assert s.power_w == pytest.approx(
        {
            "VDD_GPU_SOC": 5.132736,
            "VDD_CPU_CV": 3.274992,
            "VIN_SYS_5V0": 5.49848,
            "VDDQ_VDD2_1V8AO": 0.29856,
        }
    )
    assert s.board_power_w == pytest.approx(5.132736 + 3.274992 + 0.29856)  # no VDD_IN, no VIN
    assert s.board_power_limit_w is None
    # sys/class/devfreq/17000000.gpu/device/load (no enable_3d_scaling, no NVML): 120 per mille
    assert s.gpu_load_pct == pytest.approx(12.0)
    assert s.temps_c["gpu-thermal"] == 47.625
    assert s.max_temp_c == 52.968
    assert s.power_mode == "MAXN"
    line = samples("agx-orin-jp72")[0]
    for name, mw in _RAIL.findall(line):
        assert s.power_w[name] == pytest.approx(int(mw) / 1000, rel=3e-3)  # estimated mA
    for zone, celsius in _ZONE.findall(line):  # lowercase names; "/max" after each value
        assert s.temps_c[f"{zone}-thermal"] == float(celsius)


def test_thor_tree_is_read_as_a_jetson_by_any_profile() -> None:
    cpu = ProfileStore().load("cpu")
    assert isinstance(open_source(cpu, THOR), SysfsSource)
