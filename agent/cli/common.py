"""Helpers shared by the command modules."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from agent.config.schema import DeviceProfile

__all__ = ["format_table", "resolve_profile"]


def resolve_profile(
    name: str, profiles_dir: str | None, root: Path = Path("/")
) -> tuple[DeviceProfile, str | None, str]:
    """(profile, L4T release of the board under ``root``, how the profile was chosen).

    ``auto`` detects the board; any other name is loaded from the profile store.
    """
    from agent.config.profiles import ProfileStore, detect, read_board

    store = ProfileStore(Path(profiles_dir) if profiles_dir else None)
    if name == "auto":
        found = detect(root, store)
        return store.load(found.profile), found.board.l4t_release, found.reason
    return store.load(name), read_board(root).l4t_release, f"--profile {name}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain left-aligned text table."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
    return "\n".join(line.rstrip() for line in lines)
