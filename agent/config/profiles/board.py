"""Reading the board's identity from the files under a ``root`` (``/`` on a device, a fixture
tree in tests), so that reading is a pure function of those files:

* ``<root>/proc/device-tree/model``      NUL-terminated board model string,
* ``<root>/proc/device-tree/compatible`` NUL-separated list (``nvidia,p3768-0000+p3767-0005``...),
* ``<root>/etc/nv_tegra_release``        L4T release line (``# R36 (release), REVISION: 4.3, ...``),
* ``<root>/proc/meminfo``                ``MemTotal`` to tell memory variants apart.

Also the L4T release → JetPack table and the SoC (Jetson generation) of a board.
"""

from __future__ import annotations

import logging
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

MODEL_FILE = Path("proc/device-tree/model")
_COMPATIBLE = Path("proc/device-tree/compatible")
_TEGRA_RELEASE = Path("etc/nv_tegra_release")
_MEMINFO = Path("proc/meminfo")

_RELEASE = re.compile(r"^#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)(?:\.(\d+))?")
_MEMTOTAL = re.compile(r"^MemTotal:\s+(\d+)\s*kB\s*$", re.M)
_PART = re.compile(r"^p\d{4}-\d{4}$")
# Longest text we accept from a device-tree string file; real ones are < 200 bytes.
_MAX_DT_BYTES = 4096


@dataclass(frozen=True)
class BoardInfo:
    """What the filesystem says about the board; ``None`` where a file is absent or garbled."""

    model: str | None = None
    compatible: tuple[str, ...] = ()
    l4t_release: str | None = None
    memory_mib: int | None = None
    module_part_number: str | None = None
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def is_tegra(self) -> bool:
        return any(c.startswith("nvidia,tegra") for c in self.compatible)

    @property
    def soc(self) -> str | None:
        """The SoC named in ``compatible`` (``tegra264`` on Thor, ``tegra234`` on Orin)."""
        for entry in self.compatible:
            if entry.startswith("nvidia,tegra"):
                return entry.split(",", 1)[1]
        return None

    @property
    def jetpack(self) -> str | None:
        """The JetPack release of :attr:`l4t_release` (``"6.2"``); ``None`` when unknown."""
        return jetpack_for_l4t(self.l4t_release)


def _read_bytes(path: Path, notes: list[str]) -> bytes | None:
    try:
        with path.open("rb") as fh:
            return fh.read(_MAX_DT_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read %s: %s", path, exc)
        notes.append(f"cannot read {path} ({exc.__class__.__name__})")
        return None


def _dt_strings(raw: bytes, path: Path, notes: list[str]) -> list[str] | None:
    """Split a device-tree string property (NUL-separated, NUL-terminated) into its strings."""
    if len(raw) > _MAX_DT_BYTES:
        log.warning("%s is larger than %d bytes; ignoring it", path, _MAX_DT_BYTES)
        notes.append(f"{path} is too large to be a device-tree string")
        return None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        log.warning("%s is not ASCII text; ignoring it", path)
        notes.append(f"{path} is not ASCII text")
        return None
    parts = [p.strip() for p in text.split("\0")]
    parts = [p for p in parts if p]
    if any(not p.isprintable() for p in parts):
        log.warning("%s holds control characters; ignoring it", path)
        notes.append(f"{path} holds control characters")
        return None
    return parts


def parse_l4t_release(text: str) -> str | None:
    """``# R36 (release), REVISION: 4.3, ...`` → ``"36.4.3"``; ``None`` if it does not parse."""
    first = text.splitlines()[0] if text else ""
    m = _RELEASE.match(first.strip())
    if not m:
        return None
    return f"{m.group(1)}.{m.group(2)}.{m.group(3) or '0'}"


#: L4T release → JetPack, from NVIDIA's JetPack release archive
#: (developer.nvidia.com/embedded/jetpack-archive) as jetson-stats 7.x transcribes it
#: (``NVIDIA_JETPACK`` in jtop/core/jetson_variables.py; its "7.2 GA" is 7.2 here, "6.1 (rev1)"
#: 6.1). R38: "JetPack 7.0 with Jetson Linux 38.2/38.2.1" (.../jetpack/downloads/archive-7.0.md)
#: and "JetPack 7.1 with Jetson Linux 38.4" (.../archive-7.1.md). 39.2.1 → 7.2.1: JetPack 7.2.1
#: boards print ``# R39 (release), REVISION: 2.1`` (public setup guides and board dumps, e.g. a
#: JetPack 7.2.1 Orin Nano dump with GCID 46758480). The L4T release of JetPack 7.2.2 was not found;
#: a later R39.2 revision maps to the newest entry at or below it (7.2.1).
_JETPACK_FOR_L4T: dict[tuple[int, int, int], str] = {
    (32, 6, 1): "4.6",
    (32, 7, 1): "4.6.1",
    (32, 7, 2): "4.6.2",
    (32, 7, 3): "4.6.3",
    (32, 7, 4): "4.6.4",
    (32, 7, 5): "4.6.5",
    (32, 7, 6): "4.6.6",
    (34, 1, 0): "5.0",
    (34, 1, 1): "5.0.1",
    (35, 1, 0): "5.0.2",
    (35, 2, 1): "5.1",
    (35, 3, 1): "5.1.1",
    (35, 4, 1): "5.1.2",
    (35, 5, 0): "5.1.3",
    (35, 6, 0): "5.1.4",
    (35, 6, 1): "5.1.5",
    (35, 6, 2): "5.1.5",
    (35, 6, 3): "5.1.5",
    (35, 6, 4): "5.1.6",
    (36, 2, 0): "6.0",
    (36, 3, 0): "6.0",
    (36, 4, 0): "6.1",
    (36, 4, 2): "6.1",
    (36, 4, 3): "6.2",
    (36, 4, 4): "6.2.1",
    (36, 4, 7): "6.2.1",
    (36, 5, 0): "6.2.2",
    (38, 2, 0): "7.0",
    (38, 2, 1): "7.0",
    (38, 2, 2): "7.0",
    (38, 4, 0): "7.1",
    (39, 2, 0): "7.2",
    (39, 2, 1): "7.2.1",
}


def jetpack_for_l4t(l4t: str | None) -> str | None:
    """The JetPack version of an L4T release (``"36.4.3"`` → ``"6.2"``): the exact entry, else
    the newest known release of the same major at or below it; ``None`` when unknown."""
    if not l4t:
        return None
    try:
        key = tuple(int(x) for x in l4t.split(".")[:3])
    except ValueError:
        return None
    if len(key) != 3:
        return None
    below = [k for k in _JETPACK_FOR_L4T if k[0] == key[0] and k <= key]
    return _JETPACK_FOR_L4T[max(below)] if below else None


def parse_memtotal_mib(text: str) -> int | None:
    """``MemTotal:  7802880 kB`` → MiB (rounded down); ``None`` if absent or zero."""
    m = _MEMTOTAL.search(text)
    if not m:
        return None
    mib = int(m.group(1)) // 1024
    return mib or None


def module_part_number(compatible: tuple[str, ...] | list[str]) -> str | None:
    """The module part number (``p3767-0005``) from device-tree ``compatible`` strings.

    Board entries read ``nvidia,<carrier>+<module>[-variant]`` (e.g.
    ``nvidia,p3768-0000+p3767-0005-super``); module entries read ``nvidia,<module>``.
    """
    for entry in compatible:
        value = entry.split(",", 1)[-1]
        if "+" in value:
            value = value.rsplit("+", 1)[-1]
        value = value[:10]  # drop a variant suffix such as "-super"
        if _PART.match(value):
            return value
    return None


def _read_text(path: Path, notes: list[str]) -> str | None:
    raw = _read_bytes(path, notes)
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        log.warning("%s is not UTF-8 text; ignoring it", path)
        notes.append(f"{path} is not UTF-8 text")
        return None


def read_board(root: Path = Path("/")) -> BoardInfo:
    """Read the board identity under ``root``; never raises for missing or garbled files."""
    notes: list[str] = []

    model: str | None = None
    raw = _read_bytes(root / MODEL_FILE, notes)
    if raw is not None:
        parts = _dt_strings(raw, root / MODEL_FILE, notes)
        if parts is not None and len(parts) == 1:
            model = parts[0]
        elif parts:
            log.warning("%s holds %d strings, expected one", root / MODEL_FILE, len(parts))
            notes.append(f"{root / MODEL_FILE} holds several strings")
        elif parts is not None:
            notes.append(f"{root / MODEL_FILE} is empty")

    compatible: tuple[str, ...] = ()
    raw = _read_bytes(root / _COMPATIBLE, notes)
    if raw is not None:
        parts = _dt_strings(raw, root / _COMPATIBLE, notes)
        if parts:
            compatible = tuple(parts)

    l4t: str | None = None
    text = _read_text(root / _TEGRA_RELEASE, notes)
    if text is not None:
        l4t = parse_l4t_release(text)
        if l4t is None:
            log.warning("cannot parse the L4T release in %s", root / _TEGRA_RELEASE)
            notes.append(f"{root / _TEGRA_RELEASE} does not parse")

    memory: int | None = None
    text = _read_text(root / _MEMINFO, notes)
    if text is not None:
        memory = parse_memtotal_mib(text)
        if memory is None:
            log.warning("no MemTotal in %s", root / _MEMINFO)
            notes.append(f"{root / _MEMINFO} has no MemTotal")

    return BoardInfo(
        model=model,
        compatible=compatible,
        l4t_release=l4t,
        memory_mib=memory,
        module_part_number=module_part_number(compatible),
        notes=tuple(notes),
    )


def board_label(root: Path) -> str:
    """What a fleet view calls this board: the device-tree model (``NVIDIA Jetson Orin Nano
    Developer Kit``), else the host's OS and machine (``Linux x86_64``)."""
    model = read_board(root).model
    return model[:128] if model else f"{platform.system()} {platform.machine()}".strip()
