"""jetson-stats 7.x (7.0.0-7.2.0, and master after PR #900) as its service reports a board.

Same dict shapes as 4.3.x (:mod:`tests.fakes.jtop_v4`) with these differences, from the 7.x
sources:

* power (``jtop/core/power.py``): /sys/class/power_supply entries are listed under the folder
  name less ``ucsi-source-psy-``, with ``type`` = that supply's ``type`` file (``USB`` for the
  UCSI port) and µV/µA read as mV/mA (``// 1000``); ``total_power`` sums them in. 7.2.0 does not
  read an INA238, so on Thor ``'tot'`` is the sum of every entry and has no ``'name'``. After PR
  #900 ("fix(power): add INA238 VIN support and skip UCSI supplies", merged after 7.2.0) the
  INA238 is the ``VIN`` rail (``{'type': 'INA238', 'volt', 'curr', 'power': power1_input //
  1000}``), ``total_power`` prefers it, and UCSI entries are gone.
* temperature (``jtop/core/temperature.py``): hwmon labels are prefixed with the hwmon ``name``
  (``nvme`` + ``Composite`` -> ``nvmeComposite``). Thor's zones are ``cpu``, ``gpu``, ``soc012``,
  ``soc345``, ``tj`` (``*-thermal``; ``tegrastats`` on Thor prints ``cpu@ tj@ soc012@ gpu@
  soc345@``); ``gpu-thermal`` cannot be read while the GPU is power-gated (ThorFAN README,
  "gpu-thermal is unreadable while the GPU is power-gated"), which jtop reports as -256 offline.
* memory: ``RAM`` gains ``shared_label``.
* gpu (``jtop/core/gpu.py``, ``GPUService._initialize_gpu_method`` / ``nvml_read_gpu_status``):
  on Thor (``/sys/class/devfreq/gpu-gpc-0`` exists) the GPU comes from NVML: name
  ``nvmlDeviceGetName`` less ``NVIDIA `` (``Thor``), ``status`` ``{'load':
  float(utilization.gpu) or DEFAULT_LOAD 0.0, '3d_scaling': None, 'railgate': None,
  'tpc_pg_mask': None}`` plus ``temperature`` / ``power_draw`` (W) where NVML answers,
  ``'power_control': 'nvml'``, ``freq`` from NVML or the gpu-gpc-0 devfreq node (MHz).
  Elsewhere (JetPack 7.2 Orin included) it is the classic sysfs entry, ``'3d_scaling'`` from the
  devfreq governor where ``enable_3d_scaling`` is gone. 7.2.0 latches NVML on an Orin whose
  devfreq node is not there yet at service start; NVML on Orin answers NotSupported
  (``nvmlDeviceGetName`` = ``Orin (nvgpu)``, HazyResearch/intelligence-per-watt issue #40), so
  the load stays jtop's ``DEFAULT_LOAD`` 0.0 (jetson-stats PR #889, after 7.2.0).

Figures: Thor's come from one public ``tegrastats`` line of an AGX Thor on JetPack 7.2 (L4T
39.2.0) under load (``VDD_GPU 37528mW VDD_CPU_SOC_MSS 18961mW VIN_SYS_5V0 18331mW VIN
87426mW``, ``cpu@60.406C tj@63.281C soc012@58.468C gpu@62.906C soc345@63.281C``, nvidia-smi 85 %);
JetPack 7.2 AGX Orin's from jetson-stats' own real JetPack 7.2 line
(``jtop/tests/test_06_tegra_parse.py``: ``GR3D_FREQ 12%@[1300,1300]``, ``VDD_GPU_SOC 5139mW
VDD_CPU_CV 3268mW VIN_SYS_5V0 5500mW``, ``cpu@52.968C soc2@48.406C soc0@49.531C gpu@47.625C``).
They match ``tests/fixtures/sysfs/agx-thor`` and ``agx-orin-jp72`` (see the README there).
"""

from __future__ import annotations

from typing import Any

from tests.fakes.jtop_client import JtopBoard
from tests.fakes.jtop_v4 import ina3221

VERSION = "7.2.0"
MASTER = "7.2.0+pr900"

_THOR_RAILS = {
    "VDD_CPU_SOC_MSS": ina3221(19200, 988),
    "VDD_GPU": ina3221(19200, 1955),
    "VIN_SYS_5V0": ina3221(19200, 955),
}
_THOR_VIN = {
    "type": "INA238",
    "volt": 19968,
    "curr": 4378,
    "power": 87426000 // 1000,  # power1_input (µW) // 1000
    "online": True,
    "avg": 87426,
    "name": "VIN",
}
_THOR_TEMPS: dict[str, Any] = {
    "cpu": {"temp": 60.406, "online": True},
    "gpu": {"temp": 62.906, "online": True},
    "nvmeComposite": {"temp": 38.85, "max": 84.85, "crit": 84.85, "online": True},
    "soc012": {"temp": 58.468, "online": True},
    "soc345": {"temp": 63.281, "online": True},
    "tj": {"temp": 63.281, "online": True},
}
_THOR_MEMORY = {
    "RAM": {
        "tot": 128766976,
        "used": 37405696,
        "free": 80000000,
        "buffers": 40960,
        "cached": 12000000,
        "shared": 0,
        "lfb": 12,
        "shared_label": "GPU",
    },
    "SWAP": {"tot": 4194304, "used": 11264, "cached": 9216, "table": {}},
}
_THOR_GPU = {
    "Thor": {
        "type": "integrated",
        "status": {
            "load": 85.0,
            "3d_scaling": None,
            "railgate": None,
            "tpc_pg_mask": None,
            "temperature": 62,
            "power_draw": 37.528,
        },
        # MHz; gpu-gpc-0 at 1575 MHz (a public `jetson_clocks --show` of an AGX Thor), min
        # from NVML: none (jetson-stats sets 0 when NVML gives no min clock)
        "freq": {"governor": "nvhost_podgov", "cur": 1575, "max": 1575, "min": 0, "GPC": [1575]},
        "power_control": "nvml",
    }
}
_CPU = {"total": {"user": 20.0, "nice": 0.0, "system": 5.0, "idle": 75.0}, "cpu": []}


def _sum(rails: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {
        "power": sum(r["power"] for r in rails.values()),
        "avg": sum(r["avg"] for r in rails.values()),
    }


THOR_720 = JtopBoard(
    version=VERSION,
    power={"rail": dict(_THOR_RAILS), "tot": _sum(_THOR_RAILS)},
    temperature=_THOR_TEMPS,
    memory=_THOR_MEMORY,
    gpu=_THOR_GPU,
    cpu=_CPU,
    nvpmodel=("120W", 1),
    notes=["no INA238: 'tot' sums the INA3221 rails, no 'name'"],
)

THOR_MASTER = JtopBoard(
    version=MASTER,
    power={"rail": dict(_THOR_RAILS), "tot": dict(_THOR_VIN)},
    temperature=_THOR_TEMPS,
    memory=_THOR_MEMORY,
    gpu=_THOR_GPU,
    cpu=_CPU,
    nvpmodel=("120W", 1),
    notes=["INA238 VIN is 'tot' (PR #900)"],
)

_ORIN_RAILS = {
    "VDD_CPU_CV": ina3221(19152, 171),
    "VDD_GPU_SOC": ina3221(19152, 268),
    "VDDQ_VDD2_1V8AO": ina3221(4976, 60),
    "VIN_SYS_5V0": ina3221(4976, 1105),
}
_UCSI = {
    "1-00081": {
        "type": "USB",
        "online": True,
        "status": "Not charging",
        "volt": 5000,
        "curr": 3000,
        "power": 15000,
        "avg": 15000,
    }
}
_ORIN_GPU_SYSFS = {
    "gpu": {
        "type": "integrated",
        # no enable_3d_scaling on JetPack 7: 3D scaling = the governor is not 'performance'
        "status": {"railgate": True, "3d_scaling": True, "load": 12.0},
        "freq": {
            "governor": "nvhost_podgov",
            "cur": 1300000,
            "max": 1300500,
            "min": 306000,
            "GPC": [1300000, 1300000],
        },
        "power_control": "auto",
    }
}
_ORIN_GPU_NVML = {
    "Orin (nvgpu)": {
        "type": "integrated",
        "status": {"load": 0.0, "3d_scaling": None, "railgate": None, "tpc_pg_mask": None},
        "freq": {"governor": "nvml", "cur": 0, "max": 0, "min": 0},
        "power_control": "nvml",
    }
}
_ORIN_TEMPS: dict[str, Any] = {
    "cpu": {"temp": 52.968, "online": True},
    "cv0": {"temp": -256, "online": False},
    "cv1": {"temp": -256, "online": False},
    "cv2": {"temp": -256, "online": False},
    "gpu": {"temp": 47.625, "online": True},
    "nvmeComposite": {"temp": 36.85, "max": 84.85, "crit": 84.85, "online": True},
    "soc0": {"temp": 49.531, "online": True},
    "soc1": {"temp": 48.875, "online": True},
    "soc2": {"temp": 48.406, "online": True},
    "tj": {"temp": 52.968, "online": True},
}
_ORIN_MEMORY = {
    "RAM": {
        "tot": 64324608,
        "used": 21137408,
        "free": 30000000,
        "buffers": 40960,
        "cached": 12000000,
        "shared": 0,
        "lfb": 1,
        "shared_label": "GPU",
    },
    "SWAP": {"tot": 32174592, "used": 0, "cached": 0, "table": {}},
}
_ORIN_POWER = {"rail": {**_ORIN_RAILS, **_UCSI}, "tot": _sum({**_ORIN_RAILS, **_UCSI})}

AGX_ORIN_JP72 = JtopBoard(
    version=VERSION,
    power=_ORIN_POWER,
    temperature=_ORIN_TEMPS,
    memory=_ORIN_MEMORY,
    gpu=_ORIN_GPU_SYSFS,
    cpu=_CPU,
    nvpmodel=("MAXN", 0),
    notes=["sysfs GPU entry; 'tot' sums every entry, USB-PD included"],
)

AGX_ORIN_JP72_NVML_LATCHED = JtopBoard(
    version=VERSION,
    power=_ORIN_POWER,
    temperature=_ORIN_TEMPS,
    memory=_ORIN_MEMORY,
    gpu=_ORIN_GPU_NVML,
    cpu=_CPU,
    nvpmodel=("MAXN", 0),
    notes=["service started before the nvgpu devfreq node: NVML latched, load 0.0 by default"],
)
