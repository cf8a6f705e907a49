"""Idempotent replay: the last responses by request id, kept across restarts.

A repeated request ``id`` is answered with the stored response and never executed twice. The
last ``history`` responses live in ``<state>/commands.json`` (written atomically after each
response); an unreadable file starts an empty history.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from pathlib import Path

from agent.core.fsutil import atomic_write_bytes
from agent.core.logs import log_fields

log = logging.getLogger(__name__)


class ReplayStore:
    """Responses by request id, oldest dropped first; thread-safe."""

    def __init__(self, path: Path | None, history: int) -> None:
        self.path = path
        self.history = history
        self._done: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, rid: str | None) -> bytes | None:
        """The stored response of ``rid`` (marking it recently used), or None."""
        if rid is None:
            return None
        with self._lock:
            stored = self._done.get(rid)
            if stored is not None:
                self._done.move_to_end(rid)
        return stored

    def remember(self, rid: str, out: bytes) -> bytes:
        """Store ``out`` as the answer to ``rid``, persist the history, return ``out``."""
        with self._lock:
            self._done[rid] = out
            while len(self._done) > self.history:
                self._done.popitem(last=False)
            pairs = [[k, v.decode()] for k, v in self._done.items()]
        if self.path is not None:
            try:
                atomic_write_bytes(self.path, json.dumps(pairs).encode())
            except OSError as err:
                log.warning("cannot persist command history", extra=log_fields(error=str(err)))
        return out

    def load(self) -> None:
        """Read the persisted history (a missing or unreadable file leaves it empty)."""
        if self.path is None or not self.path.is_file():
            return
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as err:
            log.warning(
                "command history unreadable; starting empty", extra=log_fields(error=str(err))
            )
            return
        if isinstance(data, list):
            for pair in data[-self.history :]:
                if isinstance(pair, list) and len(pair) == 2:
                    key, value = pair
                    if isinstance(key, str) and isinstance(value, str):
                        self._done[key] = value.encode()
