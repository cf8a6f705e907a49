"""The update journal: the current/last :class:`UpdateRecord`, written durably on every change
(``<state_dir>/ota/journal.json``: tmp → fsync → rename → fsync(dir))."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from agent.core.fsutil import atomic_write_json
from agent.core.logs import log_fields
from agent.ota.record import UpdateRecord
from agent.ota.states import UpdateState

log = logging.getLogger(__name__)

_STATES = frozenset(s.value for s in UpdateState)


class Journal:
    def __init__(self, path: Path):
        self.path = path

    def write(self, record: UpdateRecord) -> None:
        atomic_write_json(self.path, record.to_json())

    def read(self) -> UpdateRecord | None:
        """The journalled record; None when there is none or it cannot be read (logged)."""
        try:
            data: Any = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error(
                "OTA journal unreadable; ignoring it",
                extra=log_fields(path=str(self.path), error=str(exc)),
            )
            return None
        if not isinstance(data, dict) or data.get("state") not in _STATES:  # pyright: ignore[reportUnknownMemberType]
            return None
        try:
            return UpdateRecord.from_json(data)  # pyright: ignore[reportUnknownArgumentType]
        except (KeyError, TypeError, ValueError) as exc:
            log.error(
                "OTA journal unreadable; ignoring it",
                extra=log_fields(path=str(self.path), error=str(exc)),
            )
            return None
