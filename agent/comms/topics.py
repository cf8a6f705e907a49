"""Every MQTT topic string of the agent (see ``docs/telemetry.md``): ``edge/<fleet>/<device>/...``
for one device and ``edge/<fleet>/group/<group>/ota`` for a group's OTA pushes.

The message bodies on these topics are built in :mod:`agent.comms.payloads`.
"""

from __future__ import annotations

from dataclasses import dataclass

RESPONSE = "response"
"""The command-topic leaf that carries responses (never a command name)."""


def device_base(fleet: str, device: str) -> str:
    """``edge/<fleet>/<device>``: the prefix of every topic of one device."""
    return f"edge/{fleet}/{device}"


def device_ota_topic(fleet: str, device: str) -> str:
    """``edge/<fleet>/<device>/ota``: OTA pushes to one device."""
    return f"{device_base(fleet, device)}/ota"


def group_ota_topic(fleet: str, group: str) -> str:
    """``edge/<fleet>/group/<group>/ota``: OTA pushes to every device of a group."""
    return f"edge/{fleet}/group/{group}/ota"


@dataclass(frozen=True)
class Topics:
    """All topics of one device: ``edge/<fleet>/<device>/...``."""

    fleet: str
    device: str
    group: str | None = None

    @property
    def base(self) -> str:
        return device_base(self.fleet, self.device)

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def metrics(self) -> str:
        return f"{self.base}/metrics"

    @property
    def events(self) -> str:
        return f"{self.base}/events"

    @property
    def detections(self) -> str:
        return f"{self.base}/detections"

    @property
    def model(self) -> str:
        return f"{self.base}/model"

    @property
    def ota(self) -> str:
        return device_ota_topic(self.fleet, self.device)

    @property
    def group_ota(self) -> str | None:
        return None if self.group is None else group_ota_topic(self.fleet, self.group)

    @property
    def cmd_filter(self) -> str:
        return f"{self.base}/cmd/+"

    @property
    def cmd_response(self) -> str:
        return f"{self.base}/cmd/{RESPONSE}"

    def cmd(self, name: str) -> str:
        return f"{self.base}/cmd/{name}"

    def command_name(self, topic: str) -> str | None:
        """The command name of a ``.../cmd/<name>`` topic of this device, else None."""
        prefix = f"{self.base}/cmd/"
        if not topic.startswith(prefix):
            return None
        name = topic[len(prefix) :]
        return name if name and "/" not in name and name != RESPONSE else None

    def is_ota(self, topic: str) -> bool:
        return topic == self.ota or (self.group_ota is not None and topic == self.group_ota)
