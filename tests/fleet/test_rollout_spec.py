"""Rollout requests and wave planning: validation errors, target parsing, canary and wave math."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config.fleet import RolloutDefaults
from agent.core.errors import EdgeAgentError
from agent.fleet.registry.records import DeviceRecord
from agent.fleet.rollout import RolloutSpec, parse_spec, parse_target, plan_waves, select_targets

BUNDLE = Path("/srv/bundles/shapes-cls").resolve()


def _spec(**fields: object) -> RolloutSpec:
    return parse_spec({"bundle": str(BUNDLE), "version": 2, **fields})


def _ids(n: int) -> list[str]:
    return [f"cam-{i:04d}" for i in range(n)]


def _record(device: str, group: str | None = None, fleet: str = "prod") -> DeviceRecord:
    return DeviceRecord(fleet=fleet, device=device, first_seen=0.0, last_seen=0.0, group=group)


def test_defaults_come_from_the_fleet_config() -> None:
    spec = _spec()
    assert spec.target == "all" and spec.canary == "1" and spec.waves == ["25%", "100%"]
    assert spec.rate_per_min == 60 and spec.soak_s == 60 and spec.max_failed_pct == 10
    assert spec.expires == RolloutDefaults().expires
    custom = RolloutDefaults(offline_after_s=5, probation_timeout_s=50, expires="2h")
    spec = parse_spec({"bundle": str(BUNDLE), "version": 2}, custom)
    assert (spec.offline_after_s, spec.probation_timeout_s, spec.expires) == (5, 50, "2h")
    explicit = parse_spec({"bundle": str(BUNDLE), "version": 2, "expires": "1d"}, custom)
    assert explicit.expires == "1d"


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"bundle": "relative/dir"}, "bundle", "absolute"),
        ({"version": 0}, "version", "greater than or equal to 1"),
        ({"target": "everything"}, "target", "all, group:NAME"),
        ({"target": "group:Bad Group"}, "target", "group name"),
        ({"target": "devices:"}, "target", "no device id"),
        ({"target": "devices:ok,edge"}, "target", "reserved"),
        ({"target": "devices:a/b"}, "target", "not a device id"),
        ({"canary": "0"}, "canary", "canary size"),
        ({"canary": "x"}, "canary", "canary size"),
        ({"canary": "0%"}, "canary", "above 0%"),
        ({"canary": "150%"}, "canary", "at most 100%"),
        ({"waves": ["50%", "25%", "100%"]}, "waves", "must increase"),
        ({"waves": ["50%", "50%", "100%"]}, "waves", "must increase"),
        ({"waves": ["25%", "90%"]}, "waves", "last wave must be 100%"),
        ({"waves": []}, "waves", "at least 1"),
        ({"waves": ["half"]}, "waves", "not a percentage"),
        ({"rate_per_min": 0}, "rate_per_min", "greater than 0"),
        ({"soak_s": -1}, "soak_s", "greater than or equal to 0"),
        ({"max_failed_pct": 101}, "max_failed_pct", "less than or equal to 100"),
        ({"min_fps_ratio": 1.5}, "min_fps_ratio", "less than or equal to 1"),
        ({"max_nan": -1}, "max_nan", "greater than or equal to 0"),
        ({"expires": "soon"}, "expires", "pattern"),
        ({"offline_after_s": 100, "probation_timeout_s": 50}, "offline_after_s", "must not exceed"),
        ({"surprise": 1}, "surprise", "Extra inputs"),
    ],
)
def test_bad_fields_are_named_with_a_fix(fields: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(EdgeAgentError) as info:
        _spec(**fields)
    text = str(info.value)
    assert f"rollout {field}" in text and words in text and "fix:" in text


def test_parse_target() -> None:
    assert parse_target("all").kind == "all"
    group = parse_target("group:lobby")
    assert group.kind == "group" and group.group == "lobby"
    devices = parse_target("devices: cam-2, cam-1,cam-2")
    assert devices.kind == "devices" and devices.devices == ("cam-1", "cam-2")


@pytest.mark.parametrize(
    ("canary", "waves", "total", "sizes"),
    [
        ("1", ["25%", "100%"], 1, [1]),
        ("1", ["25%", "100%"], 2, [1, 1]),
        ("1", ["25%", "100%"], 4, [1, 3]),
        ("1", ["25%", "100%"], 10, [1, 2, 7]),
        ("3", ["100%"], 2, [2]),
        ("5%", ["100%"], 10, [1, 9]),
        ("10%", ["50%", "100%"], 1000, [100, 400, 500]),
        ("1%", ["10%", "25%", "100%"], 1000, [10, 90, 150, 750]),
        ("2", ["33.3333%", "66.6667%", "100%"], 3, [2, 1]),
        ("100%", ["100%"], 7, [7]),
        ("12.5%", ["12.5%", "100%"], 8, [1, 7]),
    ],
)
def test_wave_sizes(canary: str, waves: list[str], total: int, sizes: list[int]) -> None:
    plan = plan_waves(_spec(canary=canary, waves=waves), _ids(total))
    assert [len(w) for w in plan] == sizes
    flat = [d for w in plan for d in w]
    assert flat == _ids(total)  # every device once, in order, no empty wave


def test_plan_dedupes_and_keeps_order() -> None:
    plan = plan_waves(_spec(canary="1", waves=["100%"]), ["b", "a", "b", "c"])
    assert plan == [("b",), ("a", "c")]
    with pytest.raises(EdgeAgentError, match="at least one device"):
        plan_waves(_spec(), [])


def test_select_targets() -> None:
    records = [
        _record("cam-3", "lobby"),
        _record("cam-1", "yard"),
        _record("cam-2", "lobby"),
        _record("cam-9", "lobby", fleet="other"),
    ]
    assert select_targets(_spec(), records, "prod") == ["cam-1", "cam-2", "cam-3"]
    assert select_targets(_spec(target="group:lobby"), records, "prod") == ["cam-2", "cam-3"]
    chosen = select_targets(_spec(target="devices:cam-3,cam-1"), records, "prod")
    assert chosen == ["cam-1", "cam-3"]
    with pytest.raises(EdgeAgentError, match="cam-7, cam-9") as info:
        select_targets(_spec(target="devices:cam-1,cam-9,cam-7"), records, "prod")
    assert info.value.fix
    with pytest.raises(EdgeAgentError, match="selects no device"):
        select_targets(_spec(target="group:roof"), records, "prod")
    with pytest.raises(EdgeAgentError, match="selects no device"):
        select_targets(_spec(), [], "prod")
