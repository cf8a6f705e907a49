"""The download server of rollout bundles: ``GET|HEAD /r/<rollout id>/<path>``.

Each rollout's bundle is copied at start to ``<state_dir>/rollouts/<id>/bundle/``; the signed
manifests point devices at ``http://<advertise_host or host>:<port>/r/<id>``
(:meth:`RolloutFileServer.base_url`). Only rollouts the store knows are served, and of those only
the regular files found inside the bundle directory (the listing is made by walking it, and a
request is looked up in that listing, so ``..``, absolute paths and links out of the directory
serve nothing). Anything else is a 404.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from agent.config.fleet import BundleServerConfig
from agent.core.logs import log_fields
from agent.fleet.controller.httpcap import Background, CappedHTTPServer

__all__ = ["ROLLOUT_ID", "RolloutFileServer", "bundle_dir", "rollout_dir"]

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 128
"""The most bundle downloads served at once; more get 503 (devices retry their download)."""

ROLLOUT_ID = re.compile(r"^[0-9a-f]{12}$")
_CHUNK = 256 * 1024
_MAX_LISTINGS = 64


def rollout_dir(state_dir: Path, rollout_id: str) -> Path:
    """``<state_dir>/rollouts/<id>``: what ``prepare_rollout`` fills."""
    return state_dir / "rollouts" / rollout_id


def bundle_dir(state_dir: Path, rollout_id: str) -> Path:
    return rollout_dir(state_dir, rollout_id) / "bundle"


def _listing(root: Path) -> dict[str, Path]:
    """Relative POSIX path → file, for the regular files that really lie under ``root``."""
    base = root.resolve()
    files: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        try:
            path.resolve().relative_to(base)
        except ValueError:
            continue
        files[path.relative_to(root).as_posix()] = path
    return files


class _Handler(BaseHTTPRequestHandler):
    server: _Server  # pyright: ignore[reportIncompatibleVariableOverride]
    timeout = 30

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, *, body: bool) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        parts = path.split("/", 3)
        source = None
        if len(parts) == 4 and parts[0] == "" and parts[1] == "r":
            source = self.server.lookup(parts[2], parts[3])
        if source is None:
            self.send_error(404, "not part of a rollout")
            return
        try:
            size = source.stat().st_size
            f = source.open("rb")
        except OSError:
            self.send_error(404, "not part of a rollout")
            return
        with f:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if body:
                shutil.copyfileobj(f, self.wfile, _CHUNK)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("bundle server: " + format % args)


class _Server(CappedHTTPServer):
    def __init__(
        self, address: tuple[str, int], state_dir: Path, known: Callable[[str], bool]
    ) -> None:
        self.state_dir = state_dir
        self.known = known
        self._listings: dict[str, dict[str, Path]] = {}
        self._lock = threading.Lock()
        super().__init__(address, _Handler, max_connections=MAX_CONNECTIONS)

    def lookup(self, rollout_id: str, rel: str) -> Path | None:
        if not ROLLOUT_ID.fullmatch(rollout_id):
            return None
        with self._lock:
            listing = self._listings.get(rollout_id)
        if listing is None:
            if not self.known(rollout_id):
                return None
            listing = _listing(bundle_dir(self.state_dir, rollout_id))
            with self._lock:
                if len(self._listings) >= _MAX_LISTINGS:
                    self._listings.pop(next(iter(self._listings)))
                self._listings[rollout_id] = listing
        return listing.get(rel)


class RolloutFileServer:
    """Serves every known rollout's bundle from one background HTTP server.

    ``known(rollout_id)`` says whether the store holds that rollout (asked once per rollout).
    """

    def __init__(
        self, cfg: BundleServerConfig, state_dir: Path, known: Callable[[str], bool]
    ) -> None:
        self.cfg = cfg
        self.state_dir = state_dir
        self.known = known
        self.port = cfg.port
        self._bg = Background("bundle server", "bundle_server")

    def start(self) -> None:
        cfg = self.cfg
        self.port = self._bg.start(
            lambda: _Server((cfg.host, cfg.port), self.state_dir, self.known), cfg.host, cfg.port
        )
        log.info("bundle server started", extra=log_fields(url=self.root_url))

    @property
    def root_url(self) -> str:
        host = self.cfg.advertise_host or self.cfg.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def base_url(self, rollout_id: str) -> str:
        """The manifest ``base_url`` of a rollout's files."""
        return f"{self.root_url}/r/{rollout_id}"

    def stop(self) -> None:
        self._bg.stop()
