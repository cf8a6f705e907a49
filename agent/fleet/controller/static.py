"""The dashboard's files: ``GET /`` (``index.html``) and ``GET /static/<name>``.

Only the plain files found by listing ``agent/fleet/web/static/`` (the package's own folder) are
served, by exact name — a name with a path separator, ``..`` or an unlisted name is a 404 — with a
``Content-Type`` by extension (files of other extensions are not served) and ``Cache-Control:
no-cache`` (the browser revalidates, so an upgraded controller serves the new page).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from agent.fleet.web import static_dir

__all__ = ["CONTENT_TYPES", "STATIC_DIR", "StaticFile", "StaticFiles"]

STATIC_DIR = static_dir()

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
    ".woff2": "font/woff2",
}
MAX_FILE_BYTES = 4 * 1024 * 1024
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class StaticFile:
    data: bytes
    content_type: str


class StaticFiles:
    """The files of ``root`` (listed on each request, so the folder's content is the list)."""

    def __init__(self, root: Path = STATIC_DIR) -> None:
        self.root = root

    def names(self) -> list[str]:
        """The servable names: plain files (no links) of a known type, within the size cap."""
        try:
            entries = list(self.root.iterdir())
        except OSError:
            return []
        return sorted(
            p.name
            for p in entries
            if _NAME.fullmatch(p.name)
            and p.suffix.lower() in CONTENT_TYPES
            and not p.is_symlink()
            and p.is_file()
            and p.stat().st_size <= MAX_FILE_BYTES
        )

    def get(self, name: str) -> StaticFile | None:
        """The file ``name`` when it is listed, else None."""
        if not _NAME.fullmatch(name) or name not in self.names():
            return None
        try:
            data = (self.root / name).read_bytes()
        except OSError:
            return None
        return StaticFile(data[:MAX_FILE_BYTES], CONTENT_TYPES[Path(name).suffix.lower()])
