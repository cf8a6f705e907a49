"""Which Jetson readings count toward the governor's hottest zone and board power.

Shared by the sysfs and jtop sources so both apply the same rules.

Temperatures
    ``PMIC-Die`` is not a sensor: the PMIC's die zone reports a fixed dummy value (100 °C on
    Xavier, 50 °C later); jetson-stats drops it (``jtop/core/temperature.py``,
    ``get_virtual_thermal_temperature``: "Remove PMIC temperature"). ``thermal-fan-est`` is the
    fan driver's estimate (the Xavier/L4T device-tree node of that name), a weighted mix of
    the real zones rather than a sensor; counting it would only repeat (and lag) the zones it
    is made from. Issue 19 item 8; to confirm on a board.
Board input rail
    ``VIN`` (the INA238 on AGX Thor's carrier, jetson-stats PR #900 prefers it to every other
    rail), else ``VDD_IN`` / ``POM_5V_IN`` (jetson-stats ``jtop/core/power.py``, ``total_power``).
Board power on boards without an input rail (AGX Orin; a Thor carrier without the INA238)
    jetson-stats sums every rail (``jtop/core/power.py``, ``total_power``). On AGX Orin that sum
    includes ``VIN_SYS_5V0``, the 5 V system supply the module hands to the carrier's
    peripherals (USB, fan, NVMe, camera; the "System 5V Supply Monitor" of the AGX design guide,
    DG-09840-001 "Power Monitor"), so it is load the nvpmodel *module* budget does not cover.
    The module sum is ``VDD_GPU_SOC + VDD_CPU_CV + VDDQ_VDD2_1V8AO``; ``VIN_SYS_5V0`` stays
    in the per-rail telemetry. Thor's INA3221 has the same ``VIN_SYS_5V0`` channel (next to
    ``VDD_GPU`` and ``VDD_CPU_SOC_MSS``, as ``tegrastats`` prints them there), so the same rule
    gives ``VDD_GPU + VDD_CPU_SOC_MSS`` on a Thor whose board input is not measured.
"""

from __future__ import annotations

from collections.abc import Mapping

#: Thermal zones that are not SoC temperatures (sysfs ``type`` names).
EXCLUDED_ZONES = frozenset({"PMIC-Die", "thermal-fan-est"})
#: The same zones as jtop names them (the ``type`` up to its first '-').
EXCLUDED_JTOP_ZONES = frozenset({"PMIC", "thermal"})
#: Rails outside the module budget, left out of the summed board power.
CARRIER_RAILS = frozenset({"VIN_SYS_5V0"})
#: Rails that carry the board input, in order of preference.
BOARD_INPUT_RAILS = ("VIN", "VDD_IN", "POM_5V_IN")


def soc_zones(temps: Mapping[str, float | None]) -> dict[str, float | None]:
    """``temps`` without the zones that are not SoC temperatures."""
    return {k: v for k, v in temps.items() if k not in EXCLUDED_ZONES}


def module_power_sum(rails: Mapping[str, float | None]) -> float | None:
    """Sum of the module rails (carrier rails left out); None when any of them is unknown."""
    module = [v for k, v in rails.items() if k not in CARRIER_RAILS]
    if not module or any(v is None for v in module):
        return None
    return sum(v for v in module if v is not None)


def board_input_power(rails: Mapping[str, float | None]) -> float | None:
    """The board input rail's power when the board has one, else the module rails' sum."""
    for name in BOARD_INPUT_RAILS:
        if name in rails:
            return rails[name]
    return module_power_sum(rails)
