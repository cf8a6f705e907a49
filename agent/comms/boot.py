"""The boot counter: ``<comms dir>/boot.json``, one more on every start of the comms service."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from agent.core.fsutil import atomic_write_json
from agent.core.logs import log_fields

log = logging.getLogger(__name__)


def next_boot(directory: Path) -> int:
    """Read, increment and durably store the boot counter (an unreadable file counts from 1)."""
    path = directory / "boot.json"
    boot = 0
    if path.exists():
        try:
            boot = int(json.loads(path.read_text())["boot"])
        except (OSError, ValueError, TypeError, KeyError) as err:
            log.warning(
                "boot counter %s unreadable (%s); counting again from 1",
                path, err, extra=log_fields(path=str(path), error=str(err)),
            )  # fmt: skip
    boot += 1
    atomic_write_json(path, {"boot": boot})
    return boot
