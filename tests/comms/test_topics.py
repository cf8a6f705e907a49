"""The topic layout: every level word reserved, device and operator scopes disjoint."""

from __future__ import annotations

import pytest

from agent.comms.topics import (
    CMD,
    LAYOUT_WORDS,
    OTA,
    RESPONSE,
    Topics,
    device_publishes,
    device_subscriptions,
    group_ota_topic,
    operator_publishes,
)
from agent.config.broker import RESERVED_NAMES


def test_every_layout_word_is_a_reserved_device_id() -> None:
    assert LAYOUT_WORDS == RESERVED_NAMES
    t = Topics("f", "d", "g")
    every = [t.state, t.metrics, t.events, t.detections, t.model, t.ota, t.cmd_response]
    every += [t.cmd_filter, str(t.group_ota)]
    levels = {lvl for topic in every for lvl in topic.split("/")} - {"f", "d", "g", "+"}
    assert levels == LAYOUT_WORDS


def test_layout_strings() -> None:
    t = Topics("f", "d", "g")
    assert t.state == "edge/f/d/state" and t.model == "edge/f/d/model"
    assert t.ota == "edge/f/d/ota" and t.group_ota == "edge/f/group/g/ota"
    assert t.cmd_filter == "edge/f/d/cmd/+" and t.cmd_response == "edge/f/d/cmd/response"
    assert t.command_name("edge/f/d/cmd/ping") == "ping"
    assert t.command_name("edge/f/d/cmd/response") is None
    assert t.command_name("edge/f/d2/cmd/ping") is None
    assert t.is_ota("edge/f/group/g/ota") and not t.is_ota("edge/f/group/g2/ota")


@pytest.mark.parametrize("device", ["d", "%u"])
def test_no_device_write_can_be_an_ota_or_command_topic(device: str) -> None:
    """Whatever the username, a device write rule never ends like a push or a command."""
    for topic in device_publishes("f", device):
        levels = topic.split("/")
        assert levels[-1] != OTA and levels[:3] == ["edge", "f", device]
        assert levels[-2] != CMD or levels[-1] == RESPONSE
    assert set(device_publishes("f", device)).isdisjoint(device_subscriptions("f", device))


def test_operator_writes_pushes_and_commands_only() -> None:
    assert operator_publishes("f") == ("edge/f/+/ota", "edge/f/+/cmd/+", group_ota_topic("f", "+"))
