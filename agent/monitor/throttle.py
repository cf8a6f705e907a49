"""Throttling evidence read straight from sysfs, whichever source reads the rest of the board.

``oc1``/``oc2``/``oc3``: the Orin BPMP over-current event counters (``sys/class/hwmon/hwmon*``
named ``soctherm_oc``: ``oc<N>_event_cnt``) went up since the previous read (OC1 under-voltage,
OC2 average and OC3 instantaneous over-current); ``oc_alarm``: any of those, or an INA3221
crit/max alarm is set; ``thermal``: a non-fan thermal cooling device is active
(``cur_state > 0``). A reason that cannot be judged yet (first read) is absent, not False.

jtop's samples carry none of this (jetson-stats reads no ``soctherm_oc`` counters), so the jtop
source reads it here too: the governor sees the same flags whichever source runs.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from agent.monitor.host import WarnOnce, read_int, read_text, zone_sort_key

__all__ = ["ThrottleReader"]

log = logging.getLogger(__name__)

_OC_COUNT = re.compile(r"^oc(\d+)_event_cnt$")
_FAN_COOLING = re.compile(r"fan", re.IGNORECASE)


class ThrottleReader:
    """Reads the throttling flags under ``root``; keeps the previous over-current counts."""

    def __init__(self, root: Path, warn: WarnOnce) -> None:
        self.root = Path(root)
        self._warn = warn
        self._oc_prev: dict[str, int] = {}

    def read(self, ina_alarms: list[bool]) -> dict[str, bool]:
        """The throttling flags now; ``ina_alarms`` are the INA3221 crit/max alarm bits the
        caller read with the rails (none when it has no rails of its own)."""
        flags: dict[str, bool] = {}
        any_oc_known = False
        hwmon_class = self.root / "sys/class/hwmon"
        oc_dirs = [
            d
            for d in (sorted(hwmon_class.iterdir()) if hwmon_class.is_dir() else [])
            if (read_text(d / "name") or "").strip() == "soctherm_oc"
        ]
        for hwmon in oc_dirs:
            for counter in sorted(hwmon.glob("oc*_event_cnt")):
                match = _OC_COUNT.match(counter.name)
                if not match:
                    continue
                key = f"oc{match.group(1)}"
                count = read_int(counter)
                if count is None or count < 0:
                    self._warn.warn(f"throttling[{key}]", f"{counter}: not a counter; unknown")
                    self._oc_prev.pop(key, None)
                    continue
                prev = self._oc_prev.get(key)
                self._oc_prev[key] = count
                if prev is None or count < prev:
                    continue  # first read (or counter reset): no evidence yet
                flags[key] = count > prev
                any_oc_known = True
        if ina_alarms or any_oc_known:
            flags["oc_alarm"] = any(ina_alarms) or any(
                flags.get(k, False) for k in flags if k.startswith("oc")
            )
        thermal = self._thermal()
        if thermal is not None:
            flags["thermal"] = thermal
        return flags

    def _thermal(self) -> bool | None:
        base = self.root / "sys/devices/virtual/thermal"
        if not base.is_dir():
            base = self.root / "sys/class/thermal"
        if not base.is_dir():
            return None
        states: list[bool] = []
        for dev in sorted(base.glob("cooling_device*"), key=zone_sort_key):
            kind = (read_text(dev / "type") or "").strip()
            if not kind or _FAN_COOLING.search(kind):
                continue  # a fan spinning up is cooling, not throttling
            state = read_int(dev / "cur_state")
            if state is None:
                self._warn.warn(f"throttling[{kind}]", f"{dev / 'cur_state'}: unreadable")
                continue
            states.append(state > 0)
        return any(states) if states else None
