"""What a rollout tick asks the controller's I/O shell to do (the engine itself does no I/O).

The executor publishes the device's stored manifest text retained on
``edge/<fleet>/<device>/ota`` (QoS 1), clears it with an empty retained payload, or sends the
``rollback-model`` command.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Action", "ClearManifest", "PublishManifest", "SendRollback"]


@dataclass(frozen=True)
class PublishManifest:
    """Publish the device's signed manifest (``RolloutStore.manifest``), retained."""

    device: str


@dataclass(frozen=True)
class ClearManifest:
    """Publish an empty retained payload on the device's OTA topic."""

    device: str


@dataclass(frozen=True)
class SendRollback:
    """Send ``rollback-model`` with ``{"model": model}`` to the device."""

    device: str
    model: str


Action = PublishManifest | ClearManifest | SendRollback
