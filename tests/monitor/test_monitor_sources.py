"""Monitor sources: Jetson sysfs, plain host, jtop (against a fake of jetson-stats' client).

Board trees live in tests/fixtures/sysfs/<board>/ (README there says where each layout and value
comes from). Tests that change files copy the tree to tmp_path first.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import multiprocessing
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from agent.config.profiles.store import ProfileStore
from agent.monitor.host import HostSource
from agent.monitor.jtop import JtopSource, JtopUnavailable, import_jtop
from agent.monitor.select import open_source
from agent.monitor.sysfs import SysfsSource
from tests.assets import SYSFS as FIXTURES
from tests.fakes.jtop_client import NVPModel

STAT_2 = "cpu  1450 0 650 8850 550 0 0 0 0 0\n"  # vs fixtures: 1500 jiffies, 900 idle → 40 %


def warnings_about(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and text in r.getMessage()
    ]


class Clock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# --------------------------------------------------------------------------- sysfs boards


def test_orin_nano_parsed(sysfs_root: Callable[[str], Path]) -> None:
    root = sysfs_root("orin-nano")
    source = SysfsSource(root)
    s = source.read()
    assert s.source == "sysfs"
    assert s.power_w == pytest.approx(
        {"VDD_IN": 6.3, "VDD_CPU_GPU_CV": 1.9152, "VDD_SOC": 1.512}
    )  # 5040 mV x 1250/380/300 mA
    assert s.board_power_w == pytest.approx(6.3)
    assert s.temps_c == {
        "cpu-thermal": 48.093,
        "gpu-thermal": 46.75,
        "cv0-thermal": None,  # -256000: offline
        "cv1-thermal": None,
        "cv2-thermal": None,
        "soc0-thermal": 46.312,
        "soc1-thermal": 47.062,
        "soc2-thermal": 45.781,
        "tj-thermal": 48.093,
    }
    assert s.max_temp_c == 48.093
    assert s.memory.total_mib == 7620.0
    assert s.memory.available_mib == 4687.5
    assert s.memory.used_mib == 2932.5
    assert s.memory.swap_total_mib == 3810.0
    assert s.memory.swap_used_mib == 0.0
    assert s.gpu_load_pct == pytest.approx(32.7)
    assert s.power_mode == "MAXN_SUPER"
    assert s.cpu_load_pct is None  # first read: no delta
    # INA alarms read 0; OC counters need a second read; pwm-fan is not throttling.
    assert s.throttling == {"oc_alarm": False}

    (root / "proc/stat").write_text(STAT_2)
    (root / "sys/class/hwmon/hwmon2/oc3_event_cnt").write_text("15\n")
    s2 = source.read()
    assert s2.cpu_load_pct == pytest.approx(40.0)
    assert s2.throttling == {"oc1": False, "oc2": False, "oc3": True, "oc_alarm": True}
    s3 = source.read()
    assert s3.throttling["oc3"] is False  # no new event since the previous read


def test_orin_nx_parsed_default_power_mode() -> None:
    s = SysfsSource(FIXTURES / "orin-nx").read()
    assert s.power_w == pytest.approx(
        {"VDD_IN": 10.5336, "VDD_CPU_GPU_CV": 3.71184, "VDD_SOC": 2.60832}
    )
    assert s.board_power_w == pytest.approx(10.5336)
    assert s.temps_c["tj-thermal"] == 45.5
    assert s.temps_c["cv0-thermal"] is None
    assert s.gpu_load_pct == pytest.approx(81.5)
    # No /var/lib/nvpmodel/status: nvpmodel runs the conf's PM_CONFIG DEFAULT=4.
    assert s.power_mode == "40W"
    assert s.memory.total_mib == pytest.approx(16031334 / 1024)


def test_agx_orin_two_monitors_nc_skipped_and_summed() -> None:
    s = SysfsSource(FIXTURES / "agx-orin").read()
    assert s.power_w == pytest.approx(
        {
            "VDD_GPU_SOC": 2.394,
            "VDD_CPU_CV": 0.402192,
            "VIN_SYS_5V0": 4.03056,
            "VDDQ_VDD2_1V8AO": 0.29856,
        }
    )
    # No VDD_IN on AGX Orin: the module rails' sum (agent.monitor.jetson_rules).
    assert s.board_power_w == pytest.approx(7.125312 - 4.03056)  # carrier VIN_SYS_5V0 out
    assert s.temps_c["gpu-thermal"] is None  # GPU rail-gated: zone offline
    assert s.temps_c["cpu-thermal"] == 42.593
    assert s.max_temp_c == 42.593
    assert s.gpu_load_pct == 0.0
    assert s.power_mode == "MAXN"
    assert s.memory.total_mib == 62841.0


def test_xavier_nx_iio_layout() -> None:
    s = SysfsSource(FIXTURES / "xavier-nx").read()
    assert s.power_w == pytest.approx({"VDD_IN": 5.336, "VDD_CPU_GPU_CV": 2.617, "VDD_SOC": 1.478})
    assert s.board_power_w == pytest.approx(5.336)
    assert s.temps_c["CPU-therm"] == 40.0
    assert "PMIC-Die" not in s.temps_c  # fixed dummy 100 °C: not a zone
    assert "thermal-fan-est" not in s.temps_c
    assert s.max_temp_c == 40.0
    assert s.gpu_load_pct == 0.0
    assert s.power_mode == "MODE_20W_6CORE"
    assert "oc_alarm" not in s.throttling  # no soctherm_oc on Xavier, no hwmon alarms in iio


def test_gpu_load_found_through_devfreq(tmp_path: Path) -> None:
    root = tmp_path / "board"
    dev = root / "sys/devices/platform/bus@0/17000000.gpu"
    (dev / "of_node").mkdir(parents=True)
    (dev / "of_node/name").write_text("gpu\x00")
    (dev / "load").write_text("450\n")
    devfreq = root / "sys/class/devfreq"
    devfreq.mkdir(parents=True)
    (devfreq / "17000000.gpu").mkdir()
    (devfreq / "17000000.gpu/device").symlink_to(dev)
    assert SysfsSource(root).read().gpu_load_pct == pytest.approx(45.0)


# --------------------------------------------------------------------------- bad input


def test_garbage_and_missing_files_unknown_and_warned_once(
    caplog: pytest.LogCaptureFixture, sysfs_root: Callable[[str], Path]
) -> None:
    root = sysfs_root("orin-nano")
    hw = root / "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1"
    (hw / "in2_input").write_text("garbage\n")
    (hw / "curr3_input").unlink()
    # An unreadable file: a directory where the value should be (EISDIR; we run as root here).
    (hw / "in1_input").unlink()
    (hw / "in1_input").mkdir()
    zone0 = root / "sys/devices/virtual/thermal/thermal_zone0/temp"
    zone0.write_text("\x00\xff not a number")
    (root / "sys/devices/virtual/thermal/thermal_zone1/temp").write_text("9999999\n")
    (root / "proc/meminfo").write_text("nothing useful\n")
    (root / "sys/devices/platform/bus@0/17000000.gpu/load").write_text("2000\n")
    (root / "var/lib/nvpmodel/status").write_text("pmode:garbage\n")
    (root / "proc/stat").write_text("cpu  x y z\n")

    source = SysfsSource(root)
    caplog.set_level(logging.INFO)
    for _ in range(3):
        s = source.read()
        assert s.power_w == {"VDD_IN": None, "VDD_CPU_GPU_CV": None, "VDD_SOC": None}
        assert s.board_power_w is None
        assert s.temps_c["cpu-thermal"] is None
        assert s.temps_c["gpu-thermal"] is None
        assert s.temps_c["tj-thermal"] == 48.093
        assert s.memory.total_mib is None
        assert s.memory.used_pct is None
        assert s.gpu_load_pct is None
        assert s.power_mode is None
        assert s.cpu_load_pct is None
    for field in (
        "power[VDD_IN]",
        "power[VDD_CPU_GPU_CV]",
        "power[VDD_SOC]",
        "temp[cpu-thermal]",
        "temp[gpu-thermal]",
        "memory",
        "gpu_load",
        "power_mode",
        "cpu_load",
    ):
        assert len(warnings_about(caplog, f"with {field} ")) == 1, field
    # Offline zones are expected on Orin: logged once at info, never as a warning.
    assert not warnings_about(caplog, "cv0-thermal")


def test_empty_root_is_all_unknown(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    s = SysfsSource(tmp_path).read()
    assert s.power_w == {}
    assert s.board_power_w is None
    assert s.temps_c == {}
    assert s.memory.total_mib is None
    assert s.gpu_load_pct is None
    assert s.power_mode is None
    assert s.throttling == {}
    h = HostSource(tmp_path).read()
    assert (h.power_w, h.temps_c, h.memory.total_mib) == ({}, {}, None)


def test_rail_recovers_after_garbage(
    caplog: pytest.LogCaptureFixture, sysfs_root: Callable[[str], Path]
) -> None:
    root = sysfs_root("orin-nx")
    target = root / "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1/curr1_input"
    source = SysfsSource(root)
    target.write_text("-\n")
    assert source.read().board_power_w is None
    target.write_text("2100\n")
    assert source.read().board_power_w == pytest.approx(10.5336)


def test_cpu_counters_going_backwards_give_unknown(sysfs_root: Callable[[str], Path]) -> None:
    root = sysfs_root("orin-nano")
    source = SysfsSource(root)
    source.read()
    (root / "proc/stat").write_text("cpu  10 0 5 80 5 0 0 0 0 0\n")  # counters reset
    assert source.read().cpu_load_pct is None


# --------------------------------------------------------------------------- host


def test_x86_host_rapl_thermal_memory(sysfs_root: Callable[[str], Path]) -> None:
    root = sysfs_root("x86-host")
    clock = Clock()
    source = HostSource(root, clock=clock)
    s = source.read()
    assert s.source == "host"
    assert s.temps_c == {"acpitz": 27.8, "x86_pkg_temp": 45.0, "INT3400 Thermal": 20.0}
    assert s.memory.total_mib == pytest.approx(16318248 / 1024)
    assert s.memory.available_mib == pytest.approx(12100000 / 1024)
    assert s.power_w == {"package-0": None}  # first read: no energy delta yet
    assert s.board_power_w is None
    assert s.gpu_load_pct is None
    assert s.power_mode is None
    assert s.cpu_load_pct is None

    (root / "sys/class/powercap/intel-rapl:0/energy_uj").write_text("262030000000\n")
    (root / "sys/class/powercap/intel-rapl:0:0/energy_uj").write_text("93029000000\n")
    (root / "proc/stat").write_text(STAT_2)
    clock.t += 2.0
    s2 = source.read()
    assert s2.power_w == {"package-0": pytest.approx(15.0)}  # 30 J in 2 s; core sub-zone ignored
    assert s2.board_power_w == pytest.approx(15.0)
    assert s2.cpu_load_pct == pytest.approx(40.0)


def test_rapl_wraparound(sysfs_root: Callable[[str], Path]) -> None:
    root = sysfs_root("x86-host")
    energy = root / "sys/class/powercap/intel-rapl:0/energy_uj"
    energy.write_text("262143000000\n")  # 328850 µJ below max_energy_range_uj
    clock = Clock()
    source = HostSource(root, clock=clock)
    source.read()
    energy.write_text("1000000\n")
    clock.t += 1.0
    assert source.read().board_power_w == pytest.approx(1.32885)  # (328850 + 1000000) µJ / 1 s


def test_rapl_unreadable_energy_warns_once(
    caplog: pytest.LogCaptureFixture, sysfs_root: Callable[[str], Path]
) -> None:
    root = sysfs_root("x86-host")
    energy = root / "sys/class/powercap/intel-rapl:0/energy_uj"
    energy.unlink()
    energy.mkdir()  # unreadable, like a root-only file for a normal user
    source = HostSource(root)
    for _ in range(3):
        assert source.read().board_power_w is None
    assert len(warnings_about(caplog, "power[package-0]")) == 1


# --------------------------------------------------------------------------- fake jtop
#
# Mirrors jetson-stats' client API exactly as used by agent/monitor/jtop.py, with the names of
# its source (tags 4.2.x / 4.3.1): jtop/__init__.py exports `jtop` and `JtopException`;
# jtop/jtop.py `class jtop(Thread)` with `__init__(self, interval=1.0)`, `start()` raising
# JtopException("The jtop.service is not active. Please run:\nsudo systemctl restart
# jtop.service"), `ok(self, spin=False)` re-raising the reader thread's error
# ("Lost connection with jtop server", from `_get_data`), `close()`, and the properties
# `power`, `temperature`, `memory`, `gpu`, `cpu`, `nvpmodel`. Value shapes: jtop/core/power.py
# (`{'rail': {...}, 'tot': {..., 'name': 'VDD_IN'}}`, mW), jtop/core/temperature.py
# (`{'temp': °C, 'online': bool}`, -256 offline), jtop/core/memory.py (kB),
# jtop/core/gpu.py (`['status']['load']` in %), jtop/core/nvpmodel.py (`.name`, `.id`).
# jetson-stats 7.x's jtop/service.py calls multiprocessing.set_start_method("fork",
# force=True) at import; the fake's import does the same.


class FakeService:
    def __init__(self) -> None:
        self.running = True
        self.generation = 0
        self.clients = 0


SERVICE = FakeService()


class JtopException(Exception):
    pass


class FakeJtop:
    def __init__(self, interval: float = 1.0) -> None:
        self._interval = interval
        self._running = False
        self._generation = -1
        SERVICE.clients += 1

    def start(self) -> None:
        if not SERVICE.running:
            raise JtopException(
                "The jtop.service is not active. Please run:\nsudo systemctl restart jtop.service"
            )
        self._generation = SERVICE.generation
        self._running = True

    def ok(self, spin: bool = False) -> bool:
        if not SERVICE.running or self._generation != SERVICE.generation:
            self._running = False
            raise JtopException("Lost connection with jtop server")
        return self._running

    def close(self) -> None:
        self._running = False

    @property
    def power(self) -> dict[str, Any]:
        return {
            "rail": {
                "VDD_CPU_GPU_CV": {
                    "online": True,
                    "type": "INA3221",
                    "volt": 5016,
                    "curr": 740,
                    "power": 3711,
                    "avg": 3700,
                },
                "VDD_SOC": {
                    "online": True,
                    "type": "INA3221",
                    "volt": 5016,
                    "curr": 520,
                    "power": 2608,
                    "avg": 2600,
                },
            },
            "tot": {
                "online": True,
                "type": "INA3221",
                "volt": 5016,
                "curr": 2100,
                "power": 10533,
                "avg": 10500,
                "name": "VDD_IN",
            },
        }

    @property
    def temperature(self) -> dict[str, Any]:
        return {
            "cpu": {"online": True, "temp": 45.5},
            "cv0": {"online": False, "temp": -256.0},
            "tj": {"online": True, "temp": 46.25},
        }

    @property
    def memory(self) -> dict[str, Any]:
        return {
            "RAM": {
                "tot": 16031334,
                "used": 2039808,
                "free": 6995558,
                "buffers": 40960,
                "cached": 4663705,
                "shared": 120000,
                "lfb": 1200,
            },
            "SWAP": {"tot": 8015667, "used": 102400, "cached": 0, "table": {}},
        }

    @property
    def gpu(self) -> dict[str, Any]:
        return {
            "gpu": {
                "type": "integrated",
                "status": {
                    "railgate": False,
                    "tpc_pg_mask": False,
                    "3d_scaling": True,
                    "load": 81.5,
                },
                "freq": {
                    "governor": "nvhost_podgov",
                    "cur": 918000,
                    "max": 918000,
                    "min": 306000,
                    "GPC": [918000],
                },
            }
        }

    @property
    def cpu(self) -> dict[str, Any]:
        return {"total": {"user": 20.0, "nice": 0.0, "system": 5.0, "idle": 75.0}, "cpu": []}

    @property
    def nvpmodel(self) -> NVPModel:
        return NVPModel("25W", 3)


class _FakeJtopLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        multiprocessing.set_start_method("fork", force=True)  # as jtop/service.py (7.x) does
        module.jtop = FakeJtop  # type: ignore[attr-defined]
        module.JtopException = JtopException  # type: ignore[attr-defined]
        module.__version__ = "4.3.1"  # type: ignore[attr-defined]


class _FakeJtopFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "jtop":
            return None
        return importlib.machinery.ModuleSpec("jtop", _FakeJtopLoader())


@pytest.fixture
def fake_jtop(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeService]:
    saved = multiprocessing.get_start_method(allow_none=True)
    monkeypatch.delitem(sys.modules, "jtop", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_FakeJtopFinder(), *sys.meta_path])
    SERVICE.__init__()
    try:
        yield SERVICE
    finally:
        sys.modules.pop("jtop", None)
        # Safety net in case the code under test did not restore it.
        multiprocessing.set_start_method(saved, force=True)


def test_import_jtop_keeps_the_start_method(fake_jtop: FakeService) -> None:
    multiprocessing.set_start_method("spawn", force=True)
    module = import_jtop()
    assert module.jtop is FakeJtop
    assert multiprocessing.get_start_method(allow_none=True) == "spawn"


def test_import_jtop_keeps_an_unset_start_method(fake_jtop: FakeService) -> None:
    multiprocessing.set_start_method(None, force=True)
    import_jtop()
    assert multiprocessing.get_start_method(allow_none=True) is None


def test_jtop_not_installed_is_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "jtop", None)  # import raises ImportError
    with pytest.raises(JtopUnavailable, match="cannot import jtop"):
        JtopSource()


def test_jtop_reading_uses_real_attribute_names(fake_jtop: FakeService) -> None:
    # default factory: the (fake) jtop package's jtop(interval=1.0); RAM from meminfo
    source = JtopSource(meminfo=FIXTURES / "orin-nx/proc/meminfo")
    s = source.read()
    assert s.source == "jtop"
    assert s.power_w == pytest.approx({"VDD_CPU_GPU_CV": 3.711, "VDD_SOC": 2.608, "VDD_IN": 10.533})
    assert s.board_power_w == pytest.approx(10.533)
    assert s.temps_c == {"cpu": 45.5, "cv0": None, "tj": 46.25}
    assert s.memory.total_mib == pytest.approx(16031334 / 1024)
    # MemAvailable, as the sysfs source reads it (not jtop's total - used).
    assert s.memory.available_mib == pytest.approx(13991117 / 1024)
    assert s.memory.used_pct == SysfsSource(FIXTURES / "orin-nx").read().memory.used_pct
    assert s.memory.swap_used_mib == 0.0  # from meminfo too
    assert s.gpu_load_pct == 81.5
    assert s.cpu_load_pct == 25.0
    assert s.power_mode == "25W"
    source.close()


def test_jtop_service_not_running_typed_error_and_fallback(
    fake_jtop: FakeService, caplog: pytest.LogCaptureFixture
) -> None:
    fake_jtop.running = False
    with pytest.raises(JtopUnavailable, match=r"jtop\.service is not active"):
        JtopSource(FakeJtop)
    assert len(warnings_about(caplog, "jtop service is not running")) == 1

    profile = ProfileStore().load("orin-nano-8gb")
    caplog.set_level(logging.INFO)
    source = open_source(profile, FIXTURES / "orin-nano", prefer="jtop", jtop_factory=FakeJtop)
    assert isinstance(source, SysfsSource)
    assert any("falling back to sysfs" in r.getMessage() for r in caplog.records)


def test_open_source_choices(fake_jtop: FakeService) -> None:
    store = ProfileStore()
    nano, cpu = store.load("orin-nano-8gb"), store.load("cpu")
    assert isinstance(open_source(nano, FIXTURES / "orin-nano", jtop_factory=FakeJtop), JtopSource)
    # auto with a fixture root: jtop reads only the live system, so it is not tried.
    assert isinstance(open_source(nano, FIXTURES / "orin-nano"), SysfsSource)
    assert isinstance(open_source(cpu, FIXTURES / "x86-host"), HostSource)
    # A cpu profile on a tree that is plainly a Jetson still reads it as one.
    assert isinstance(open_source(cpu, FIXTURES / "agx-orin"), SysfsSource)
    assert isinstance(open_source(nano, FIXTURES / "orin-nano", prefer="host"), HostSource)
    assert isinstance(open_source(cpu, FIXTURES / "x86-host", prefer="sysfs"), SysfsSource)


def test_jtop_service_vanishes_and_comes_back(
    fake_jtop: FakeService, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    source = JtopSource(FakeJtop, clock=clock, reconnect_interval_s=5.0)
    assert source.read().board_power_w == pytest.approx(10.533)

    fake_jtop.running = False
    for _ in range(3):
        s = source.read()
        assert (s.power_w, s.board_power_w, s.temps_c, s.power_mode) == ({}, None, {}, None)
        assert (s.gpu_load_pct, s.cpu_load_pct, s.memory.total_mib) == (None, None, None)
    assert len(warnings_about(caplog, "lost the jtop service")) == 1
    clients = fake_jtop.clients
    clock.t += 5.0
    assert source.read().board_power_w is None  # still down: one bounded retry
    assert fake_jtop.clients == clients + 1
    assert source.read().board_power_w is None
    assert fake_jtop.clients == clients + 1  # no retry before another 5 s

    fake_jtop.running = True
    fake_jtop.generation += 1
    clock.t += 5.0
    caplog.set_level(logging.INFO)
    s = source.read()
    assert s.board_power_w == pytest.approx(10.533)
    assert s.power_mode == "25W"
    assert any("jtop service is back" in r.getMessage() for r in caplog.records)
    source.close()
