"""GPU load read from sysfs, without NVML: Tegra iGPUs (Xavier … Orin, JetPack 4-7) and Thor.

Where the ``load`` file is (paths relative to ``root``), first match wins:

1. Thor (JetPack 7): the GPU is a PCI device driven by ``nvidia.ko``; its frequency domains are
   the devfreq nodes ``sys/class/devfreq/gpu-gpc-0`` (graphics/compute) and ``gpu-nvd-0``
   (jetson-stats ``jtop/core/hw_detect.py`` ``devfreq_nodes``, ``jtop/core/thor_power.py``).
   jetson-stats reads ``<node>/load`` from them, GPC first (``jtop/core/thor_gpu.py``,
   ``_read_utilization``, "best-effort"); its main Thor path is NVML. Only ``gpu-gpc-0`` is read
   here: ``gpu-nvd-0`` is the clock domain the video codecs share (NVDEC/NVENC/NVJPG; public Thor
   tools label it so, and ``jetson_clocks --show`` lists it apart at 1692 MHz against the GPC's
   1575 MHz), so its load is not the GPU's. Read as per mille, the Tegra convention of the
   nvhost ``load`` files (below); jetson-stats instead guesses (``/10`` only above 100). To
   confirm on a board: a Thor whose node carries no ``load`` gives an unknown GPU load (one
   warning), never a guess.
2. Any ``sys/class/devfreq/*`` whose ``device/of_node/name`` is a Tegra iGPU name (``gpu``,
   ``ga10b``, ``gb10b``, ``gv11b``, ``gp10b``, ``gm20b``): ``device/load``. This is also the
   JetPack 7.2 Orin path: there NVML answers NotSupported for load/clocks/memory and the classic
   nvgpu sysfs stays (``/sys/class/devfreq/17000000.gpu``; only ``enable_3d_scaling`` is gone)
   (jetson-stats ``jtop/core/gpu.py`` ``find_igpu``, ``KNOWN_GPU_DEVICE_NAMES``,
   ``_initialize_gpu_method``; ``hw_detect.is_jetpack7``).
3. Known device directories: ``bus@0/17000000.gpu`` (L4T R36+), ``17000000.ga10b`` (R35 Orin),
   ``17000000.gv11b`` (Xavier), ``gpu.0`` (Nano/TX).

``load`` is per mille (0-1000): jetson-stats ``igpu_read_status`` (``float(load) / 10.0``).
"""

from __future__ import annotations

from pathlib import Path

from agent.monitor.host import WarnOnce, read_int, read_text

__all__ = ["GpuLoadReader"]

#: Thor's GPU graphics/compute devfreq node (jetson-stats hw_detect.THOR_GPC).
THOR_GPC = "gpu-gpc-0"
# Device-tree names of Tegra integrated GPUs (jetson-stats 7.x KNOWN_GPU_DEVICE_NAMES + gm20b).
_GPU_OF_NAMES = ("gpu", "ga10b", "gb10b", "gv11b", "gp10b", "gm20b")
# Known GPU device directories, newest layout first.
_GPU_DEVICE_DIRS = (
    "sys/devices/platform/bus@0/17000000.gpu",  # Orin, L4T R36+ (JetPack 6, 7.2)
    "sys/devices/platform/17000000.gpu",
    "sys/devices/platform/17000000.ga10b",  # Orin, L4T R35 (JetPack 5)
    "sys/devices/17000000.ga10b",
    "sys/devices/platform/17000000.gv11b",  # Xavier, L4T R35
    "sys/devices/17000000.gv11b",  # Xavier, L4T R32
    "sys/devices/gpu.0",  # Nano / TX1 / TX2
    "sys/devices/platform/gpu.0",
)
_KEY = "gpu_load"


class GpuLoadReader:
    """Finds the GPU ``load`` file under ``root`` on each read (devfreq nodes can appear late
    in boot) and returns the load in percent, or None (warned once)."""

    def __init__(self, root: Path, warn: WarnOnce) -> None:
        self.root = Path(root)
        self._warn = warn

    def _load_file(self) -> Path | None:
        devfreq = self.root / "sys/class/devfreq"
        if (devfreq / THOR_GPC).is_dir():
            load = devfreq / THOR_GPC / "load"
            return load if load.is_file() else None  # Thor: no iGPU devfreq to fall back to
        if devfreq.is_dir():
            for entry in sorted(devfreq.iterdir()):
                of_name = read_text(entry / "device/of_node/name")
                if of_name is not None and of_name.strip("\x00\n ") in _GPU_OF_NAMES:
                    load = entry / "device/load"
                    if load.is_file():
                        return load
        for rel in _GPU_DEVICE_DIRS:
            load = self.root / rel / "load"
            if load.is_file():
                return load
        return None

    def read(self) -> float | None:
        path = self._load_file()
        if path is None:
            thor = self.root / "sys/class/devfreq" / THOR_GPC
            why = (
                f"{thor} has no 'load' file (Thor reports GPU load through NVML)"
                if thor.is_dir()
                else "no GPU load file found"
            )
            self._warn.warn(_KEY, f"{self.root}: {why}; GPU load is unknown")
            return None
        per_mille = read_int(path)
        if per_mille is None or not 0 <= per_mille <= 1000:
            self._warn.warn(_KEY, f"{path}: expected 0-1000 (per mille); GPU load unknown")
            return None
        self._warn.ok(_KEY)
        return per_mille / 10.0
