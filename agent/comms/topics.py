"""Every MQTT topic string of the agent (see ``docs/telemetry.md``): ``edge/<fleet>/<device>/...``
for one device and ``edge/<fleet>/group/<group>/ota`` for a group's OTA pushes.

Who may write what (the broker ACL of ``docs/broker-acl.md``, rendered by
:mod:`agent.fleet.acl`, is built from the functions here):

* a device writes only :func:`device_publishes` (its own state, metrics, events, detections,
  model record and command responses) and reads only :func:`device_subscriptions` (its own OTA
  and command topics) plus group OTA topics;
* the operator writes :func:`operator_publishes` (OTA pushes and commands) and reads the fleet.

No device id may be one of :data:`LAYOUT_WORDS` (``agent.config.broker.RESERVED_NAMES``
refuses them): a device called ``group`` would share its tree with the group topics.

The message bodies on these topics are built in :mod:`agent.comms.payloads`.
"""

from __future__ import annotations

from dataclasses import dataclass

ROOT = "edge"
GROUP = "group"
"""The level that replaces the device id in group topics (hence a reserved device id)."""
STATE = "state"
METRICS = "metrics"
EVENTS = "events"
DETECTIONS = "detections"
MODEL = "model"
OTA = "ota"
CMD = "cmd"
RESPONSE = "response"
"""The command-topic leaf that carries responses (never a command name)."""

LAYOUT_WORDS = frozenset(
    {ROOT, GROUP, STATE, METRICS, EVENTS, DETECTIONS, MODEL, OTA, CMD, RESPONSE}
)
"""Every fixed level of the layout; none may be a device id."""

ANY = "+"
"""The single-level MQTT wildcard (filters and ACL rules only)."""


def device_base(fleet: str, device: str) -> str:
    """``edge/<fleet>/<device>``: the prefix of every topic of one device."""
    return f"{ROOT}/{fleet}/{device}"


def device_ota_topic(fleet: str, device: str) -> str:
    """``edge/<fleet>/<device>/ota``: OTA pushes to one device."""
    return f"{device_base(fleet, device)}/{OTA}"


def group_ota_topic(fleet: str, group: str) -> str:
    """``edge/<fleet>/group/<group>/ota``: OTA pushes to every device of a group."""
    return f"{ROOT}/{fleet}/{GROUP}/{group}/{OTA}"


def fleet_filter(fleet: str) -> str:
    """``edge/<fleet>/#``: everything of one fleet (the operator's read scope)."""
    return f"{ROOT}/{fleet}/#"


def device_publishes(fleet: str, device: str) -> tuple[str, ...]:
    """The topics a device writes: all its own, none of a group or another device."""
    t = Topics(fleet, device)
    return (t.state, t.metrics, t.events, t.detections, t.model, t.cmd_response)


def device_subscriptions(fleet: str, device: str) -> tuple[str, ...]:
    """The filters a device reads of its own tree (its group's OTA topic comes on top)."""
    t = Topics(fleet, device)
    return (t.ota, t.cmd_filter)


def operator_publishes(fleet: str) -> tuple[str, ...]:
    """The filters the operator writes: OTA pushes to devices and groups, commands."""
    return (
        device_ota_topic(fleet, ANY),
        Topics(fleet, ANY).cmd_filter,
        group_ota_topic(fleet, ANY),
    )


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
        return f"{self.base}/{STATE}"

    @property
    def metrics(self) -> str:
        return f"{self.base}/{METRICS}"

    @property
    def events(self) -> str:
        return f"{self.base}/{EVENTS}"

    @property
    def detections(self) -> str:
        return f"{self.base}/{DETECTIONS}"

    @property
    def model(self) -> str:
        return f"{self.base}/{MODEL}"

    @property
    def ota(self) -> str:
        return device_ota_topic(self.fleet, self.device)

    @property
    def group_ota(self) -> str | None:
        return None if self.group is None else group_ota_topic(self.fleet, self.group)

    @property
    def cmd_filter(self) -> str:
        return self.cmd(ANY)

    @property
    def cmd_response(self) -> str:
        return self.cmd(RESPONSE)

    def cmd(self, name: str) -> str:
        return f"{self.base}/{CMD}/{name}"

    def command_name(self, topic: str) -> str | None:
        """The command name of a ``.../cmd/<name>`` topic of this device, else None."""
        prefix = self.cmd("")
        if not topic.startswith(prefix):
            return None
        name = topic[len(prefix) :]
        return name if name and "/" not in name and name != RESPONSE else None

    def is_ota(self, topic: str) -> bool:
        return topic == self.ota or (self.group_ota is not None and topic == self.group_ota)
