"""Device profiles: find them, load them, and pick the one that fits the board we run on.

Nothing here touches the filesystem at import. Hardware is read from a ``root`` passed in (``/``
on a device, a fixture tree in tests), so detection is a pure function of the files under it.

Detection reads:

* ``<root>/proc/device-tree/model``      NUL-terminated board model string,
* ``<root>/proc/device-tree/compatible`` NUL-separated list (``nvidia,p3768-0000+p3767-0005``...),
* ``<root>/etc/nv_tegra_release``        L4T release line (``# R36 (release), REVISION: 4.3, ...``),
* ``<root>/proc/meminfo``                ``MemTotal`` to tell memory variants apart.

The model string picks the family; when several profiles share it (Orin Nano 4 GB / 8 GB, Orin NX
8 GB / 16 GB), the module part number in ``compatible`` decides, then ``MemTotal``.
"""

from __future__ import annotations

import difflib
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import agent
from agent.config.schema import DeviceProfile
from agent.config.yaml import load_model_file
from agent.core.errors import DetectionError, ProfileNotFound

log = logging.getLogger(__name__)

CPU_PROFILE = "cpu"

_MODEL = Path("proc/device-tree/model")
_COMPATIBLE = Path("proc/device-tree/compatible")
_TEGRA_RELEASE = Path("etc/nv_tegra_release")
_MEMINFO = Path("proc/meminfo")

_RELEASE = re.compile(r"^#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)(?:\.(\d+))?")
_MEMTOTAL = re.compile(r"^MemTotal:\s+(\d+)\s*kB\s*$", re.M)
_PART = re.compile(r"^p\d{4}-\d{4}$")
# Longest text we accept from a device-tree string file; real ones are < 200 bytes.
_MAX_DT_BYTES = 4096


# --------------------------------------------------------------------------- profile store


def default_profiles_dir() -> Path:
    """The ``device_profiles`` directory: inside the installed package first, then the repo."""
    package = Path(agent.__file__).parent
    candidates = [
        package / "device_profiles",
        package.resolve().parent / "device_profiles",  # source checkout / editable install
        Path(sys.prefix) / "share" / "edge-agent" / "device_profiles",  # wheel data-files
    ]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise ProfileNotFound(
        "no device_profiles directory found (looked in "
        + " and ".join(str(c) for c in candidates)
        + ")",
        fix="reinstall edge-agent so it ships its device_profiles, or pass --profiles-dir",
    )


class ProfileStore:
    """The device profiles of one directory (``<name>.yaml``), validated on load."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory if directory is not None else default_profiles_dir()
        self._cache: dict[str, DeviceProfile] = {}

    def names(self) -> list[str]:
        """Profile names (file stems), sorted; an absent directory has none."""
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.yaml") if p.is_file())

    def path_of(self, name: str) -> Path:
        """The YAML file of profile ``name``; an unknown name raises :class:`ProfileNotFound`."""
        path = self.directory / f"{name}.yaml"
        if "/" in name or "\\" in name or not path.is_file():
            raise self._not_found(name)
        return path

    def load(self, name: str) -> DeviceProfile:
        """Read and validate profile ``name`` (cached); invalid YAML raises ``ConfigError``."""
        if name in self._cache:
            return self._cache[name]
        path = self.path_of(name)
        profile = load_model_file(path, DeviceProfile)
        if profile.name != name:
            raise ProfileNotFound(
                f"profile file {path.name} declares name '{profile.name}'",
                fix=f"set 'name: {name}' in the file or rename it to {profile.name}.yaml",
                path=path,
            )
        self._cache[name] = profile
        return profile

    def all(self) -> list[DeviceProfile]:
        """Every profile in the directory, validated, in name order."""
        return [self.load(name) for name in self.names()]

    def _not_found(self, name: str) -> ProfileNotFound:
        names = self.names()
        if not names:
            return ProfileNotFound(
                f"device profile '{name}' not found: {self.directory} holds no profiles",
                fix="point the agent at the device_profiles directory",
            )
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        if not close:
            # A prefix like "orin-nano" names a family: suggest its members.
            close = [n for n in names if n.startswith(name) or name.startswith(n)][:3]
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        return ProfileNotFound(
            f"device profile '{name}' not found in {self.directory}",
            fix=f"{hint}use one of: {', '.join(names)}",
        )


# --------------------------------------------------------------------------- board reading


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
#: (developer.nvidia.com/embedded/jetpack-archive): the BSP each JetPack ships.
_JETPACK_FOR_L4T: dict[tuple[int, int, int], str] = {
    (32, 6, 1): "4.6",
    (32, 7, 1): "4.6.1",
    (32, 7, 2): "4.6.2",
    (32, 7, 3): "4.6.3",
    (32, 7, 4): "4.6.4",
    (32, 7, 5): "4.6.5",
    (32, 7, 6): "4.6.6",
    (35, 1, 0): "5.0.2",
    (35, 2, 1): "5.1",
    (35, 3, 1): "5.1.1",
    (35, 4, 1): "5.1.2",
    (35, 5, 0): "5.1.3",
    (35, 6, 0): "5.1.4",
    (35, 6, 1): "5.1.5",
    (36, 2, 0): "6.0",
    (36, 3, 0): "6.0",
    (36, 4, 0): "6.1",
    (36, 4, 3): "6.2",
    (36, 4, 4): "6.2.1",
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
    raw = _read_bytes(root / _MODEL, notes)
    if raw is not None:
        parts = _dt_strings(raw, root / _MODEL, notes)
        if parts is not None and len(parts) == 1:
            model = parts[0]
        elif parts:
            log.warning("%s holds %d strings, expected one", root / _MODEL, len(parts))
            notes.append(f"{root / _MODEL} holds several strings")
        elif parts is not None:
            notes.append(f"{root / _MODEL} is empty")

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


# --------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class Detection:
    """The profile chosen for a board, and a sentence saying why."""

    profile: str
    reason: str
    board: BoardInfo


def _closest_memory(
    candidates: list[DeviceProfile], memory_mib: int
) -> tuple[DeviceProfile, str] | None:
    ranked = sorted(candidates, key=lambda p: abs(p.identity.memory_mib - memory_mib))
    best = ranked[0]
    if len(ranked) > 1 and abs(ranked[1].identity.memory_mib - memory_mib) == abs(
        best.identity.memory_mib - memory_mib
    ):
        return None
    return best, f"MemTotal {memory_mib} MiB is closest to {best.identity.memory_mib} MiB"


def _narrow(candidates: list[DeviceProfile], board: BoardInfo) -> tuple[DeviceProfile, str] | None:
    """Pick one of several profiles: module part number first, then MemTotal."""
    part = board.module_part_number
    if part is not None:
        by_part = [p for p in candidates if part in p.identity.module_part_numbers]
        if len(by_part) == 1:
            return by_part[0], f"module part number {part} (from device-tree compatible)"
        if by_part:
            candidates = by_part
    if board.memory_mib is not None:
        return _closest_memory(candidates, board.memory_mib)
    return None


def detect(root: Path = Path("/"), store: ProfileStore | None = None) -> Detection:
    """Choose the device profile for the board under ``root``; falls back to ``cpu``."""
    if not root.is_dir():
        raise DetectionError(
            f"cannot detect the board: {root} is not a directory",
            fix="pass the filesystem root of the device (normally /)",
        )
    store = store if store is not None else ProfileStore()
    if CPU_PROFILE not in store.names():
        raise DetectionError(
            f"no '{CPU_PROFILE}' profile in {store.directory} to fall back to",
            fix=f"restore {CPU_PROFILE}.yaml in the device_profiles directory",
        )
    board = read_board(root)
    where = root / _MODEL
    profiles = [p for p in store.all() if p.identity.family != "cpu"]

    def fallback(why: str) -> Detection:
        return Detection(CPU_PROFILE, f"{why}: falling back to {CPU_PROFILE}", board)

    if board.model is None:
        if board.is_tegra and board.module_part_number is not None:
            by_part = [
                p for p in profiles if board.module_part_number in p.identity.module_part_numbers
            ]
            if len(by_part) == 1:
                return Detection(
                    by_part[0].name,
                    f"no usable {where}, but device-tree compatible names module "
                    f"{board.module_part_number}",
                    board,
                )
        trouble = next((n for n in board.notes if str(where) in n), None)
        if trouble is not None:
            return fallback(f"{trouble}; cannot identify the board")
        return fallback(f"no {where} under {root}; not a Jetson")

    matched = [p for p in profiles if board.model in p.identity.device_tree_models]
    how = f"model '{board.model}'"
    if not matched and board.module_part_number is not None:
        # A custom carrier board renames the model but keeps NVIDIA's module compatible string.
        matched = [
            p for p in profiles if board.module_part_number in p.identity.module_part_numbers
        ]
        how = f"module part number {board.module_part_number} (model '{board.model}' is unknown)"
    if not matched:
        kind = "a Jetson board" if board.is_tegra else "board"
        return fallback(f"{kind} model '{board.model}' matches no device profile")
    if len(matched) == 1:
        return Detection(matched[0].name, f"{how} matches profile {matched[0].name}", board)

    names = ", ".join(p.name for p in matched)
    narrowed = _narrow(matched, board)
    if narrowed is None:
        return fallback(
            f"{how} fits {names} and neither the module part number nor MemTotal tells them "
            "apart; set 'profile:' in agent.yaml"
        )
    profile, why = narrowed
    return Detection(profile.name, f"{how} fits {names}; {why} selects {profile.name}", board)
