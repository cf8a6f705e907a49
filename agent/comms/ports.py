"""What comms needs from outside, as protocols the composition root (``agent.app``) implements.

* :class:`Control`: the actions remote commands may take on the daemon.
* :data:`OtaMessageHandler`: where OTA messages (device and group topics) are delivered.

Both are called on the command worker thread, never on paho's network thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

OtaMessageHandler = Callable[[str, bytes], None]
"""``handler(topic, payload)``: one OTA message. Retained messages arrive again after every
reconnect, so it must be idempotent."""


class Control(Protocol):
    """What the daemon lets remote commands do. Methods run on the command worker thread and
    may raise :class:`agent.core.errors.EdgeAgentError` (its message becomes the error response)."""

    def config_json(self) -> dict[str, Any]:
        """The effective configuration as JSON-able data (secrets are redacted again here)."""
        ...

    def reload(self) -> str:
        """Re-read the configuration (like SIGHUP); returns a short summary."""
        ...

    def set_profile(self, name: str) -> str:
        """Switch the device profile; returns a summary."""
        ...

    def latest_frame(self, source: str | None) -> Any:
        """The latest BGR frame (numpy HxWx3 uint8) of ``source`` (None = first), or None."""
        ...

    def collect_calib(self, model: str, count: int, source: str | None) -> dict[str, Any]:
        """Save ``count`` frames into ``calib/<model>/``; returns e.g. {"saved": n, "dir": ...}."""
        ...

    def rollback_model(self, model: str | None) -> dict[str, Any]:
        """Roll ``model`` (None = the serving one) back to its previous engine."""
        ...
