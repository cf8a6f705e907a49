"""The device profiles of one directory (``device_profiles/<name>.yaml``), validated on load."""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

import agent
from agent.config.device import DeviceProfile
from agent.config.yaml import load_model_file
from agent.core.errors import ProfileNotFound

CPU_PROFILE = "cpu"
"""The profile every host can run, and detection's fallback."""


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
