"""Pick the monitor source for this board: jtop, else Jetson sysfs, else a plain Linux host."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from agent.config.device import DeviceProfile
from agent.monitor.host import HostSource
from agent.monitor.jtop import JtopSource, JtopUnavailable
from agent.monitor.sample import MonitorSource
from agent.monitor.sysfs import SysfsSource

log = logging.getLogger(__name__)

Prefer = Literal["auto", "jtop", "sysfs", "host"]

# Any of these under root says "this is a Jetson" even when the profile says cpu.
_JETSON_MARKERS = (
    "sys/bus/i2c/drivers/ina3221",
    "sys/bus/i2c/drivers/ina3221x",
    "sys/bus/i2c/drivers/ina238",  # AGX Thor's board input monitor
    "etc/nvpmodel.conf",
    "etc/nv_tegra_release",
)


def looks_like_jetson(profile: DeviceProfile, root: Path) -> tuple[bool, str]:
    """Whether sysfs should be read as a Jetson's, and why."""
    if profile.identity.family != "cpu":
        return True, f"profile '{profile.name}' is a {profile.identity.family}"
    for marker in _JETSON_MARKERS:
        if (root / marker).exists():
            return True, f"{root / marker} exists"
    return False, f"profile '{profile.name}' is a plain host and no Jetson files are under {root}"


def open_source(
    profile: DeviceProfile,
    root: Path = Path("/"),
    prefer: Prefer = "auto",
    *,
    jtop_factory: Callable[[], Any] | None = None,
) -> MonitorSource:
    """Open the best source for the board and log which one and why.

    ``auto`` / ``jtop``: jtop when it imports and its service answers, else sysfs on a Jetson,
    else host. ``auto`` skips jtop when ``root`` is not ``/`` (jtop reads only the live system)
    unless a ``jtop_factory`` is given. ``sysfs`` and ``host`` open that source directly.
    """
    root = Path(root)
    if prefer == "host":
        log.info("monitor: host source (asked for)")
        return HostSource(root)
    if prefer == "sysfs":
        log.info("monitor: sysfs source under %s (asked for)", root)
        return SysfsSource(root)

    jetson, why = looks_like_jetson(profile, root)
    fallback = "sysfs" if jetson else "host"
    try_jtop = prefer == "jtop" or jtop_factory is not None or root == Path("/")
    if (try_jtop and jetson) or prefer == "jtop":
        try:
            source = JtopSource(jtop_factory, meminfo=root / "proc/meminfo", root=root)
        except JtopUnavailable as exc:
            log.info("monitor: jtop unavailable (%s); falling back to %s", exc.message, fallback)
        else:
            log.info("monitor: jtop source (its service answered)")
            return source
    elif prefer == "auto" and jetson:
        log.info("monitor: not trying jtop: root is %s, jtop reads only the live system", root)

    if jetson:
        log.info("monitor: sysfs source under %s (%s)", root, why)
        return SysfsSource(root)
    log.info("monitor: host source under %s (%s)", root, why)
    return HostSource(root)
