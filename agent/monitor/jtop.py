"""Readings from jtop (jetson-stats): the only module that imports ``jtop``, lazily.

jtop's client talks to the ``jtop.service`` daemon over ``/run/jtop.sock``; the service reads the
board. Names below are jetson-stats' own (checked against its source, tags 4.2.x/4.3.1 and
7.0.0-7.2.0, and master after PR #900); both generations give the same dict shapes:

* ``jtop.jtop(interval=1.0)``: a ``threading.Thread``; ``start()`` connects and raises
  ``JtopException`` ("The jtop.service is not active..." when the socket is missing or refuses)
  (``jtop/jtop.py``, ``jtop.start``); a Thread starts once, so reconnecting needs a new client;
  ``ok(spin=True)`` returns whether the reader thread still runs without blocking, and re-raises
  the error that stopped it ("Lost connection with jtop server", ``jtop._get_data``);
  ``close()`` stops it.
* ``.power``: ``{'rail': {name: {'type', 'volt', 'curr', 'power', 'avg', 'online', ...}}, 'tot':
  {...}}`` in mV/mA/**mW**; ``tot`` is the ``VDD_IN``/``POM_5V_IN`` rail (after PR #900 also
  Thor's INA238 ``VIN``, preferred), moved out of ``rail`` and given a ``'name'``, or else the
  sum of every entry (``jtop/core/power.py``, ``total_power``). ``type`` is ``INA3221`` /
  ``INA238`` for the monitors; ``/sys/class/power_supply`` entries (AGX Orin's USB-PD
  ``ucsi-source-psy-*``) carry that supply's ``type`` file (``USB``...) or ``SYSTEM``
  (``find_all_system_monitor``): supply status, not board rails, so they are skipped. 7.2.0 and
  older do not read the INA238: Thor's ``VIN`` then comes from sysfs (:mod:`agent.monitor.ina238`),
  as do its limit and alarm in every version.
* ``.temperature``: ``{name: {'temp': °C, 'online': bool}}``; offline = -256
  (``jtop/core/temperature.py``, ``TEMPERATURE_OFFLINE``). Names are jtop's: ``cpu``, ``tj``...
* ``.memory``: ``['RAM']['tot'|'used'|'free'|...]`` and ``['SWAP']['tot'|'used']`` in **kB**
  (``jtop/jtop.py``, ``memory`` docstring; ``jtop/core/memory.py``). Used only when
  ``/proc/meminfo`` cannot be read: RAM pressure is MemAvailable, as in the sysfs source.
  Temperatures, power and CPU follow :mod:`agent.monitor.jetson_rules` and the sysfs source.
* ``.gpu``: dict-like of GPUs, each ``['status']['load']`` in % (``jtop/core/gpu.py``:
  ``float(load) / 10.0`` from sysfs). 7.x: on Thor the entry comes from NVML (name ``Thor``,
  ``'power_control': 'nvml'``, load = ``nvmlDeviceGetUtilizationRates().gpu``;
  ``nvml_read_gpu_status``). On a JetPack 7 Orin whose nvgpu devfreq node was not there yet when
  the service started, 7.2.0 latches NVML too, where load is NotSupported and jtop reports its
  ``DEFAULT_LOAD`` 0.0 (fixed after 7.2.0, "GPU usage stuck at 0 on JetPack 7.x Orin"): an NVML
  entry named ``... (nvgpu)`` is not believed, and the load is read from sysfs instead
  (:mod:`agent.monitor.gpu_load`), as it is when jtop has no GPU or no load.
* ``.cpu``: ``{'total': {'user', 'nice', 'system', 'idle'}, 'cpu': [...]}`` in %.
* ``.nvpmodel``: ``None`` or an ``NVPModel`` with ``.name`` / ``.id`` (``jtop/core/nvpmodel.py``).

**The fork side effect.** jetson-stats 7.x's ``jtop/service.py`` (imported by ``jtop/jtop.py``,
hence by ``import jtop``) calls ``multiprocessing.set_start_method("fork", force=True)`` at import
(added in 2026 for Python 3.14). That would change the start method of this whole process.
:func:`import_jtop` saves the start method before the import and restores it after. Our own
children never rely on the global method anyway: they use
``multiprocessing.get_context("spawn")`` explicitly. jtop's client needs no forked children (it
connects to the service's manager over a socket), so restoring the method is safe for it.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from agent.core.errors import JtopUnavailable
from agent.monitor.gpu_load import GpuLoadReader
from agent.monitor.host import WarnOnce, read_memory
from agent.monitor.ina238 import read_board_input
from agent.monitor.jetson_rules import EXCLUDED_JTOP_ZONES, board_input_power, soc_zones
from agent.monitor.sample import MemorySample, Sample
from agent.monitor.throttle import ThrottleReader

log = logging.getLogger(__name__)

_FIX_SERVICE = "start it with `sudo systemctl restart jtop.service`, or let the agent use sysfs"
_FIX_INSTALL = "install jetson-stats (`sudo pip3 install -U jetson-stats`) or let it use sysfs"


def import_jtop() -> ModuleType:
    """``import jtop`` with its import-time side effect on multiprocessing undone.

    Raises :class:`JtopUnavailable` when jetson-stats is not installed or fails to import.
    """
    saved = multiprocessing.get_start_method(allow_none=True)
    try:
        module = importlib.import_module("jtop")
    except Exception as exc:  # ImportError, or anything its import-time code raises
        raise JtopUnavailable(f"cannot import jtop: {exc}", fix=_FIX_INSTALL) from exc
    finally:
        after = multiprocessing.get_start_method(allow_none=True)
        if after != saved:
            multiprocessing.set_start_method(saved, force=True)
            log.debug("importing jtop set the start method to %r; restored %r", after, saved)
    return module


def _default_factory(interval: float) -> Callable[[], Any]:
    module = import_jtop()

    def make() -> Any:
        return module.jtop(interval=interval)

    return make


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _is_monitor(rail: Mapping[str, Any]) -> bool:
    """An INA power monitor channel (``INA3221``, ``INA238``), not a power-supply entry."""
    return str(rail.get("type", "INA")).upper().startswith("INA")


class JtopSource:
    """Readings from the jtop service.

    ``factory`` builds a jtop client (default: ``jtop.jtop(interval=...)`` from the real package);
    tests pass a fake. Construction connects and raises :class:`JtopUnavailable` when that fails
    (one warning logged). When the service disappears later, ``read()`` returns a sample with
    every board field unknown, warns once, and tries a new client at most every
    ``reconnect_interval_s`` seconds; it logs when the service is back.
    """

    name = "jtop"

    def __init__(
        self,
        factory: Callable[[], Any] | None = None,
        *,
        interval: float = 1.0,
        reconnect_interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        meminfo: Path = Path("/proc/meminfo"),
        root: Path = Path("/"),
    ) -> None:
        self._clock = clock
        self._meminfo = meminfo
        self._wall = wall_clock
        self._reconnect_s = reconnect_interval_s
        self._warn = WarnOnce(log)
        # jtop reports no over-current counters: read them (and the cooling devices) from sysfs
        self._throttle = ThrottleReader(root, self._warn)
        self._root = Path(root)
        # GPU load when jtop's own cannot be believed (NVML on JetPack 7 Orin) or is missing
        self._gpu_sysfs = GpuLoadReader(root, self._warn)
        try:
            self._factory = factory if factory is not None else _default_factory(interval)
        except JtopUnavailable as exc:
            log.warning("jtop is not available: %s", exc)
            raise
        self._client: Any = None
        self._last_attempt = clock()
        try:
            self._client = self._connect()
        except JtopUnavailable as exc:
            log.warning("jtop service is not running or not reachable: %s", exc)
            raise

    # ------------------------------------------------------------------ connection

    def _connect(self) -> Any:
        try:
            client = self._factory()
            client.start()
        except Exception as exc:  # JtopException, socket errors, version mismatch
            raise JtopUnavailable(f"jtop.service did not answer: {exc}", fix=_FIX_SERVICE) from exc
        return client

    def _drop(self, reason: str) -> None:
        self._warn.warn(
            "jtop.service",
            f"lost the jtop service ({reason}); fields are unknown until it comes back, "
            f"retrying every {self._reconnect_s:g} s",
        )
        client, self._client = self._client, None
        self._last_attempt = self._clock()
        try:
            client.close()
        except Exception as exc:  # a half-dead client may fail to close; it is gone anyway
            log.debug("closing the lost jtop client failed: %s", exc)

    def _alive(self) -> bool:
        if self._client is None:
            now = self._clock()
            if now - self._last_attempt < self._reconnect_s:
                return False
            self._last_attempt = now
            try:
                self._client = self._connect()
            except JtopUnavailable as exc:
                log.debug("jtop reconnect failed: %s", exc)
                return False
            self._warn.ok("jtop.service")
            log.info("jtop service is back")
        try:
            running = bool(self._client.ok(spin=True))
        except Exception as exc:  # ok() re-raises the error that stopped jtop's reader thread
            self._drop(str(exc) or type(exc).__name__)
            return False
        if not running:
            self._drop("its reader thread stopped")
            return False
        return True

    # ------------------------------------------------------------------ reading

    def read(self) -> Sample:
        throttling = self._throttle.read([])
        if not self._alive():
            return Sample(ts=self._wall(), source=self.name, throttling=throttling)
        client = self._client
        rails: dict[str, float | None] = self._field("power", client, self._power, {})
        vin = read_board_input(self._root, self._warn)
        if vin is not None:
            # Thor: jetson-stats <= 7.2.0 does not read the INA238; master names it "VIN" too
            rails.setdefault(vin.name, vin.power_w)
            if vin.alarm is not None:
                throttling["vin_alarm"] = vin.alarm
        return Sample(
            ts=self._wall(),
            source=self.name,
            power_w=rails,
            board_power_w=board_input_power(rails),
            board_power_limit_w=None if vin is None else vin.limit_w,
            temps_c=self._field("temperature", client, self._temps, {}),
            memory=self._read_memory(client),
            gpu_load_pct=self._gpu_load(client),
            cpu_load_pct=self._field("cpu", client, self._cpu, None),
            power_mode=self._field("nvpmodel", client, self._mode, None),
            throttling=throttling,
        )

    def _field(self, key: str, client: Any, getter: Callable[[Any], Any], empty: Any) -> Any:
        try:
            value = getter(client)
        except Exception as exc:  # a shape jtop did not promise: this field is unknown
            self._warn.warn(f"jtop.{key}", f"jtop's .{key} has an unexpected shape ({exc!r})")
            return empty
        self._warn.ok(f"jtop.{key}")
        return value

    @staticmethod
    def _power(client: Any) -> dict[str, float | None]:
        """Rails in W, the board input rail included when jtop found one. Without one (AGX
        Orin; Thor on jetson-stats <= 7.2.0) jtop's 'tot' sums every entry, USB-PD and the
        carrier's VIN_SYS_5V0 included: it is not used; the caller applies the sysfs source's
        rules (:func:`agent.monitor.jetson_rules.board_input_power`)."""
        power: Mapping[str, Any] = client.power or {}
        rails: dict[str, float | None] = {}
        for name, rail in (power.get("rail") or {}).items():
            if not _is_monitor(rail):
                continue  # a /sys/class/power_supply entry (see the module docstring)
            mw = _num(rail.get("power"))
            rails[str(name)] = mw / 1000.0 if mw is not None and rail.get("online", True) else None
        tot = power.get("tot") or {}
        if "name" in tot:
            # total_power() moved VDD_IN / POM_5V_IN / VIN out of 'rail'
            tot_mw = _num(tot.get("power"))
            rails[str(tot["name"])] = tot_mw / 1000.0 if tot_mw is not None else None
        return rails

    @staticmethod
    def _temps(client: Any) -> dict[str, float | None]:
        temps: dict[str, float | None] = {}
        for name, zone in (client.temperature or {}).items():
            if "max" in zone or "crit" in zone or name in EXCLUDED_JTOP_ZONES:
                # jtop/core/temperature.py: hwmon sensors (an NVMe drive's "Composite"...) come
                # from get_hwmon_thermal_system() with 'max'/'crit' entries; thermal zones carry
                # only 'temp' (+ 'online'). Only the SoC's zones count.
                continue
            value = _num(zone.get("temp"))
            online = zone.get("online", True) and value is not None and value != -256
            temps[str(name)] = value if online else None
        return soc_zones(temps)

    def _read_memory(self, client: Any) -> MemorySample:
        """RAM from ``/proc/meminfo`` as the sysfs source reads it (MemAvailable), so memory
        thresholds fire at the same real pressure with or without jtop. jtop's RAM 'used' is
        ``MemTotal - MemFree - Buffers - Cached`` (``jtop/core/memory.py``, get_status; its
        MemAvailable line is commented out), which counts unreclaimable cache (Shmem, tmpfs)
        as free. jtop's own fields are the fallback when meminfo cannot be read."""
        sample = read_memory(self._meminfo, self._warn)
        if sample.total_mib is not None:
            return sample
        return self._field("memory", client, self._memory, MemorySample())

    @staticmethod
    def _memory(client: Any) -> MemorySample:
        memory = client.memory
        ram, swap = memory["RAM"], memory.get("SWAP") or {}

        def mib(value: Any) -> float | None:
            kib = _num(value)
            return None if kib is None else kib / 1024.0

        total, used = mib(ram.get("tot")), mib(ram.get("used"))
        return MemorySample(
            total_mib=total,
            used_mib=used,
            available_mib=None,  # not MemAvailable: used_pct falls back to used / total
            swap_total_mib=mib(swap.get("tot")),
            swap_used_mib=mib(swap.get("used")),
        )

    @staticmethod
    def _jtop_gpu(client: Any) -> float | None:
        """The first integrated GPU's load as jtop reports it; None when jtop has none or when
        it is NVML's answer on an nvgpu (Orin) GPU, which NVML does not measure."""
        gpus = [(str(k), v) for k, v in client.gpu.items()]
        gpus.sort(key=lambda item: item[1].get("type") != "integrated")
        for name, gpu in gpus:
            if gpu.get("power_control") == "nvml" and "nvgpu" in name.lower():
                return None  # jetson-stats' DEFAULT_LOAD (0.0) after NVMLError_NotSupported
            return _num(gpu["status"].get("load"))
        return None

    def _gpu_load(self, client: Any) -> float | None:
        load = self._field("gpu", client, self._jtop_gpu, None)
        return load if load is not None else self._gpu_sysfs.read()

    @staticmethod
    def _cpu(client: Any) -> float | None:
        # jtop/core/cpu.py get_utilization(): shares of user, nice, system, idle over
        # user..softirq; iowait is neither. The sysfs source counts busy = user + nice + system
        # (agent.monitor.host.CpuLoad), so both give the same figure.
        total = client.cpu["total"]
        busy = [_num(total.get(k)) for k in ("user", "nice", "system")]
        if any(v is None for v in busy):
            return None
        return max(0.0, min(100.0, sum(v for v in busy if v is not None)))

    @staticmethod
    def _mode(client: Any) -> str | None:
        nvp = client.nvpmodel
        return None if nvp is None else str(nvp.name)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception as exc:  # closing must not fail the shutdown
                log.debug("closing the jtop client failed: %s", exc)
