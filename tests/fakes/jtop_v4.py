"""jetson-stats 4.3.x (4.3.1, the last 4.x; JetPack 5/6) as its service reports a board.

Dict shapes, from the 4.3.1 sources:

* power (``jtop/core/power.py``): each INA3221 channel ``{'type': 'INA3221', 'volt': mV,
  'curr': mA, 'warn'/'crit': mA where the driver has them, 'power': int(volt * curr / 1000) mW,
  'online': True, 'avg': mW}`` (``PowerService.get_status``); ``total_power`` moves ``VDD_IN`` /
  ``POM_5V_IN`` to ``'tot'`` with a ``'name'``, else ``'tot'`` = ``{'power': sum, 'avg': sum}``.
* temperature (``jtop/core/temperature.py``): thermal zone ``type`` up to its first ``-``
  (``cpu-thermal`` -> ``cpu``) ``{'temp': °C, 'online': bool}``, -256 when unreadable; hwmon
  sensors by their bare label (``Composite`` for an NVMe drive) with ``'max'`` and ``'crit'``.
* memory (``jtop/core/memory.py``): ``RAM`` ``tot/used/free/buffers/cached/shared/lfb`` and
  ``SWAP`` ``tot/used/cached/table``, kB.
* gpu (``jtop/core/gpu.py``): ``{name: {'type': 'integrated', 'status': {'railgate',
  'tpc_pg_mask', '3d_scaling', 'load': %}, 'freq': {'governor', 'cur', 'max', 'min', 'GPC'}
  (kHz), 'power_control': 'auto'|'on'}}``, name = the devfreq device's ``of_node/name``.
* cpu (``jtop/core/cpu.py``): ``{'total': {'user', 'nice', 'system', 'idle'} %, 'cpu': [...]}``.

``ORIN_NX_JP6`` is an Orin NX 16GB on JetPack 6 (L4T 36.4.4) with an NVMe drive; its figures go
with ``tests/fixtures/sysfs/orin-nx`` (same rails; estimated values, see that README).
"""

from __future__ import annotations

from typing import Any

from tests.fakes.jtop_client import JtopBoard

VERSION = "4.3.1"


def ina3221(volt_mv: int, curr_ma: int) -> dict[str, Any]:
    """One channel as ``PowerService.get_status`` builds it on its first read (avg = power)."""
    power = int(volt_mv * (float(curr_ma) / 1000))
    return {
        "type": "INA3221",
        "volt": volt_mv,
        "curr": curr_ma,
        "power": power,
        "online": True,
        "avg": power,
    }


def _total(volt_mv: int, curr_ma: int, name: str) -> dict[str, Any]:
    return {**ina3221(volt_mv, curr_ma), "name": name}


ORIN_NX_JP6 = JtopBoard(
    version=VERSION,
    power={
        "rail": {"VDD_CPU_GPU_CV": ina3221(5016, 740), "VDD_SOC": ina3221(5016, 520)},
        "tot": _total(5016, 2100, "VDD_IN"),
    },
    temperature={
        "Composite": {"temp": 41.85, "max": 84.85, "crit": 84.85, "online": True},
        "cpu": {"temp": 45.5, "online": True},
        "cv0": {"temp": -256, "online": False},
        "cv1": {"temp": -256, "online": False},
        "cv2": {"temp": -256, "online": False},
        "gpu": {"temp": 44.75, "online": True},
        "soc0": {"temp": 44.0, "online": True},
        "soc1": {"temp": 44.5, "online": True},
        "soc2": {"temp": 43.75, "online": True},
        "tj": {"temp": 46.25, "online": True},
    },
    memory={
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
    },
    gpu={
        "gpu": {
            "type": "integrated",
            "status": {"railgate": True, "tpc_pg_mask": False, "3d_scaling": True, "load": 81.5},
            "freq": {
                "governor": "nvhost_podgov",
                "cur": 918000,
                "max": 918000,
                "min": 306000,
                "GPC": [918000, 918000],
            },
            "power_control": "auto",
        }
    },
    cpu={"total": {"user": 20.0, "nice": 0.0, "system": 5.0, "idle": 75.0}, "cpu": []},
    nvpmodel=("25W", 3),
    notes=["tot is VDD_IN (moved out of 'rail')", "NVMe 'Composite' carries max/crit"],
)
