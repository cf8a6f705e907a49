"""The engine cache directory, resolved in one place for every command.

``edge-agent build`` ahead of time and ``edge-agent run`` (or the service) must find the same
engines, so every command that touches the engine cache asks :func:`resolve_cache_dir`. The
first rule that applies wins:

1. ``--cache-dir`` on the command line;
2. ``cache_dir`` of the agent config, for a command that reads one (``run``);
3. ``$EDGE_AGENT_CACHE_DIR`` (containers, CI, a shared cache for several users);
4. ``$CACHE_DIRECTORY``: systemd sets it from the unit's ``CacheDirectory=edge-agent`` (systemd
   240+, systemd.exec(5) "Environment variables in spawned processes"; several directories are
   separated by ``:``, the first is taken), so the service always uses its own cache;
5. ``$XDG_CACHE_HOME/edge-agent`` when ``XDG_CACHE_HOME`` is set to an absolute path (the XDG
   Base Directory spec says to ignore a relative one);
6. ``/var/cache/edge-agent`` when running as root or as the service account ``edge-agent``, so
   that ``sudo edge-agent build ...`` and ``sudo -u edge-agent edge-agent build ...`` warm the
   cache of the installed service (scripts/install.sh, systemd/edge-agent.service);
7. ``~/.cache/edge-agent`` (the XDG default for a user).

Nothing here creates the directory: the engine cache does that when it first writes.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CACHE_ENV",
    "SERVICE_USER",
    "SYSTEM_CACHE_DIR",
    "CacheDirChoice",
    "cache_dir_help",
    "resolve_cache_dir",
]

#: the environment variable that sets the cache for every command (rule 3)
CACHE_ENV = "EDGE_AGENT_CACHE_DIR"
#: the service's cache (``CacheDirectory=edge-agent`` in systemd/edge-agent.service)
SYSTEM_CACHE_DIR = Path("/var/cache/edge-agent")
#: the account the service runs as (``User=edge-agent``; created by scripts/install.sh)
SERVICE_USER = "edge-agent"
_APP = "edge-agent"


@dataclass(frozen=True)
class CacheDirChoice:
    """The cache directory and the rule that chose it (``source``, for logs and ``--help``)."""

    path: Path
    source: str

    def __str__(self) -> str:
        return f"{self.path} (chosen by {self.source})"


def _user_name(euid: int) -> str | None:
    try:
        return pwd.getpwuid(euid).pw_name
    except KeyError:  # a uid without a passwd entry (containers): no name, no service account
        return None


def _env_path(environ: Mapping[str, str], name: str) -> Path | None:
    value = environ.get(name, "")
    return Path(value).expanduser() if value.strip() else None


def _defaults(environ: Mapping[str, str], euid: int, home: Path | None) -> CacheDirChoice:
    """Rules 3-7: what a command uses when neither ``--cache-dir`` nor a config says."""
    env_dir = _env_path(environ, CACHE_ENV)
    if env_dir is not None:
        return CacheDirChoice(env_dir, f"${CACHE_ENV}")
    systemd = environ.get("CACHE_DIRECTORY", "").split(":")[0]
    if systemd:
        return CacheDirChoice(Path(systemd), "$CACHE_DIRECTORY (systemd)")
    xdg = environ.get("XDG_CACHE_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return CacheDirChoice(Path(xdg) / _APP, "$XDG_CACHE_HOME")
    if euid == 0:
        return CacheDirChoice(SYSTEM_CACHE_DIR, "running as root")
    if _user_name(euid) == SERVICE_USER:
        return CacheDirChoice(SYSTEM_CACHE_DIR, f"running as user {SERVICE_USER}")
    base = home if home is not None else Path(environ.get("HOME") or Path.home())
    return CacheDirChoice(base / ".cache" / _APP, "the XDG default ~/.cache")


def resolve_cache_dir(
    explicit: Path | str | None = None,
    config: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    euid: int | None = None,
    home: Path | None = None,
) -> CacheDirChoice:
    """The engine cache directory: ``explicit`` (``--cache-dir``), else ``config`` (the
    config's ``cache_dir``, already resolved against the config file), else the defaults in
    the module docstring. ``environ``, ``euid`` and ``home`` are the process's own unless
    given (tests)."""
    if explicit is not None and str(explicit):
        return CacheDirChoice(Path(explicit).expanduser(), "--cache-dir")
    if config is not None:
        return CacheDirChoice(Path(config).expanduser(), "the config's cache_dir")
    env = os.environ if environ is None else environ
    return _defaults(env, os.geteuid() if euid is None else euid, home)


def cache_dir_help(*, config: bool = False) -> str:
    """``--help`` text of a ``--cache-dir`` option, with the default this process would use."""
    order = ["--cache-dir", *(["the config's cache_dir"] if config else []), f"${CACHE_ENV}"]
    order += ["$CACHE_DIRECTORY (systemd)", "$XDG_CACHE_HOME/edge-agent"]
    order += [f"{SYSTEM_CACHE_DIR} for root and user {SERVICE_USER}", "~/.cache/edge-agent"]
    default = resolve_cache_dir()
    lead = "the config's cache_dir, else " if config else ""
    return (
        f"engine cache (default: {lead}{default.path}, chosen by {default.source}; "
        f"first of: {', '.join(order)})"
    )
