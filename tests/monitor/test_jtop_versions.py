"""The jtop source against jetson-stats 4.3.x and 7.x service data (tests/fakes/jtop_v4.py and
jtop_v7.py: the real dict shapes of each version), on the boards of the sysfs fixtures."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.core.errors import JtopUnavailable
from agent.monitor.jtop import JtopSource
from agent.monitor.sysfs import SysfsSource
from tests.assets import SYSFS as FIXTURES
from tests.fakes.jtop_client import JtopBoard, JtopService, client_factory
from tests.fakes.jtop_v4 import ORIN_NX_JP6
from tests.fakes.jtop_v7 import (
    AGX_ORIN_JP72,
    AGX_ORIN_JP72_NVML_LATCHED,
    THOR_720,
    THOR_MASTER,
)

THOR_RAILS = {"VDD_GPU": 37.536, "VDD_CPU_SOC_MSS": 18.969, "VIN_SYS_5V0": 18.336}
THOR_ZONES = {"cpu": 60.406, "gpu": 62.906, "soc012": 58.468, "soc345": 63.281, "tj": 63.281}


def source(board: JtopBoard, tree: str | Path, service: JtopService | None = None) -> JtopSource:
    root = tree if isinstance(tree, Path) else FIXTURES / tree
    return JtopSource(
        client_factory(board, service or JtopService()), meminfo=root / "proc/meminfo", root=root
    )


def test_v4_orin_nx_jetpack6() -> None:
    s = source(ORIN_NX_JP6, "orin-nx").read()
    assert s.power_w == pytest.approx({"VDD_CPU_GPU_CV": 3.711, "VDD_SOC": 2.608, "VDD_IN": 10.533})
    assert s.board_power_w == pytest.approx(10.533)  # jtop's 'tot', named VDD_IN
    assert s.board_power_limit_w is None
    assert "Composite" not in s.temps_c  # NVMe drive, with max/crit
    assert s.temps_c["cv0"] is None and s.temps_c["tj"] == 46.25
    assert s.gpu_load_pct == 81.5
    assert (s.cpu_load_pct, s.power_mode) == (25.0, "25W")
    assert "vin_alarm" not in s.throttling


@pytest.mark.parametrize("board", [THOR_MASTER, THOR_720], ids=["pr900", "7.2.0"])
def test_v7_thor_board_input_and_nvml_gpu(board: JtopBoard) -> None:
    s = source(board, "agx-thor").read()
    # 7.2.0 has no VIN: the INA238 is read from sysfs; after PR #900 jtop's 'tot' is VIN.
    assert s.power_w == pytest.approx({**THOR_RAILS, "VIN": 87.426})
    assert s.board_power_w == pytest.approx(87.426)
    assert s.board_power_limit_w == pytest.approx(168.0)  # from sysfs, every version
    assert s.throttling["vin_alarm"] is False
    assert s.temps_c == THOR_ZONES  # nvmeComposite left out
    assert s.gpu_load_pct == 85.0  # NVML utilization, as jtop reports it on Thor
    assert s.power_mode == "120W"
    board_view = SysfsSource(FIXTURES / "agx-thor").read()
    assert s.board_power_w == pytest.approx(board_view.board_power_w)
    assert set(s.power_w) == set(board_view.power_w)


def test_v7_thor_without_ina238_sums_module_rails(sysfs_root: Callable[[str], Path]) -> None:
    root = sysfs_root("agx-thor")
    shutil.rmtree(root / "sys/bus/i2c/drivers/ina238")
    s = source(THOR_720, root).read()
    assert "VIN" not in s.power_w
    # not jtop's 'tot' (74.841 W: VIN_SYS_5V0 summed in), the module rails as sysfs does
    assert s.board_power_w == pytest.approx(37.536 + 18.969)
    assert s.board_power_limit_w is None


def test_v7_jetpack72_orin_skips_usb_pd_and_uses_module_sum() -> None:
    s = source(AGX_ORIN_JP72, "agx-orin-jp72").read()
    assert "1-00081" not in s.power_w  # UCSI power_supply entry, type USB
    assert s.power_w == pytest.approx(
        {"VDD_CPU_CV": 3.274, "VDD_GPU_SOC": 5.132, "VDDQ_VDD2_1V8AO": 0.298, "VIN_SYS_5V0": 5.498}
    )
    assert s.board_power_w == pytest.approx(5.132 + 3.274 + 0.298)
    assert s.gpu_load_pct == 12.0  # jtop's sysfs entry
    assert "nvmeComposite" not in s.temps_c and s.temps_c["cv1"] is None
    assert s.max_temp_c == 52.968
    assert s.power_mode == "MAXN"


def test_v7_nvml_latched_orin_load_comes_from_sysfs(
    sysfs_root: Callable[[str], Path], caplog: pytest.LogCaptureFixture
) -> None:
    # jtop says 0.0 (NVML NotSupported on nvgpu); the nvgpu load file says 12 %.
    assert source(AGX_ORIN_JP72_NVML_LATCHED, "agx-orin-jp72").read().gpu_load_pct == 12.0
    root = sysfs_root("agx-orin-jp72")
    shutil.rmtree(root / "sys/class/devfreq")
    src = source(AGX_ORIN_JP72_NVML_LATCHED, root)
    assert [src.read().gpu_load_pct for _ in range(3)] == [None, None, None]  # unknown, not 0
    assert (
        len(
            [
                r
                for r in caplog.records
                if r.levelno == logging.WARNING and "GPU load is unknown" in r.getMessage()
            ]
        )
        == 1
    )


def test_v7_service_down_then_back() -> None:
    service = JtopService()
    src = source(THOR_MASTER, "agx-thor", service)
    assert src.read().board_power_w == pytest.approx(87.426)
    service.running = False
    down = src.read()
    # jtop is gone: its fields are unknown; the sysfs flags (throttling) are still read
    assert (down.power_w, down.board_power_w, down.gpu_load_pct) == ({}, None, None)
    assert "thermal" in down.throttling
    src.close()
    with pytest.raises(JtopUnavailable):
        source(THOR_MASTER, "agx-thor", service)
