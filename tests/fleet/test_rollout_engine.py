"""The rollout engine driven tick by tick over a synthetic registry (no broker, no database):
happy path, rate limit, offline devices, install timeout, controls, restart from the document."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable

import pytest

from agent.core.errors import EdgeAgentError, InternalError
from agent.fleet.registry.records import DeviceRecord, MetricsSnapshot, ModelSlot, OtaStatus
from agent.fleet.rollout import (
    Action,
    ClearManifest,
    DeviceProgress,
    DeviceState,
    PublishManifest,
    Rollout,
    RolloutState,
    SendRollback,
    Wave,
    check_transition,
    control,
    parse_spec,
    plan_waves,
    tick,
)

FLEET, MODEL = "prod", "shapes-cls"
OLD, NEW = 1, 2


def make_rollout(n: int, **spec_fields: object) -> Rollout:
    """A planned rollout over ``n`` devices (fake manifest hashes: the engine only compares)."""
    fields: dict[str, object] = {"bundle": "/srv/b", "version": NEW, "rate_per_min": 6000}
    fields.update(spec_fields)
    spec = parse_spec(fields)
    waves = plan_waves(spec, [f"cam-{i:04d}" for i in range(n)])
    devices = {d: DeviceProgress(wave=i, sha256=f"sha-{d}") for i, w in enumerate(waves) for d in w}
    return Rollout(
        id="0123456789ab",
        fleet=FLEET,
        model=MODEL,
        version=NEW,
        spec=spec,
        state=RolloutState.PLANNED,
        created_at=0.0,
        updated_at=0.0,
        expires_at=86400.0,
        base_url="http://127.0.0.1:9/b",
        waves=tuple(Wave(i, w) for i, w in enumerate(waves)),
        devices=devices,
    )


def device(
    name: str, *, online: bool = True, version: int = OLD, fps: float = 30.0
) -> DeviceRecord:
    return DeviceRecord(
        fleet=FLEET,
        device=name,
        first_seen=0.0,
        last_seen=0.0,
        online=online,
        model=ModelSlot(MODEL, version),
        metrics=MetricsSnapshot(seq=1, boot=1, ts=0.0, fps=fps),
    )


class Fleet:
    """The registry the engine reads; tests move devices along like the ingest would."""

    def __init__(self, names: Iterable[str], **kw: object) -> None:
        self.records = {n: device(n, **kw) for n in names}  # type: ignore[arg-type]

    def set(self, name: str, **changes: object) -> None:
        self.records[name] = dataclasses.replace(self.records[name], **changes)  # type: ignore[arg-type]

    def ota(self, name: str, state: str, *, reason: str | None = None, **extra: object) -> None:
        status = OtaStatus(
            id="u-" + name,
            op="update",
            state=state,
            updated_at=0,
            model=MODEL,
            version=NEW,
            reason=reason,
            manifest_sha256=f"sha-{name}",
            **extra,  # type: ignore[arg-type]
        )
        self.set(name, ota=status)

    def serve(self, name: str, version: int = NEW, fps: float = 30.0) -> None:
        record = self.records[name]
        assert record.metrics is not None
        metrics = dataclasses.replace(record.metrics, seq=record.metrics.seq + 1, fps=fps)
        self.set(name, model=ModelSlot(MODEL, version), metrics=metrics)

    def activate(self, name: str) -> None:
        self.ota(name, "active")
        self.serve(name)

    def commanded_back(self, name: str) -> None:
        status = OtaStatus(
            id="rb-" + name,
            op="rollback",
            state="rolled_back",
            updated_at=1,
            model=MODEL,
            version=NEW,
            reason="rollback_requested",
        )
        self.set(name, ota=status)
        self.serve(name, OLD)


class Driver:
    """Ticks a rollout, keeping every action; ``restart`` reloads it from its JSON text."""

    def __init__(self, rollout: Rollout, fleet: Fleet, *, restart: bool = False) -> None:
        self.rollout, self.fleet, self.restart = rollout, fleet, restart
        self.actions: list[tuple[float, Action]] = []

    def tick(self, now: float, tick_s: float = 1.0) -> list[Action]:
        if self.restart:
            self.rollout = Rollout.from_json(json.loads(json.dumps(self.rollout.to_json())))
        result = tick(self.rollout, self.fleet.records, now, tick_s=tick_s)
        self.rollout = result.rollout
        self.actions += [(now, a) for a in result.actions]
        return result.actions

    def of(self, kind: type) -> list[str]:
        return [a.device for _, a in self.actions if isinstance(a, kind)]

    def state(self, name: str) -> DeviceState:
        return self.rollout.devices[name].state


def _happy_path(restart: bool) -> Driver:
    rollout = make_rollout(10, canary="1", waves=["50%", "100%"], soak_s=10)
    drv = Driver(rollout, Fleet(rollout.devices), restart=restart)
    assert drv.tick(0) == [PublishManifest("cam-0000")]
    assert drv.rollout.state is RolloutState.RUNNING and drv.rollout.started_at == 0
    drv.fleet.ota("cam-0000", "building")
    assert drv.tick(1) == [] and drv.state("cam-0000") is DeviceState.IN_PROGRESS
    drv.fleet.activate("cam-0000")
    assert drv.tick(2) == [ClearManifest("cam-0000")]
    assert drv.rollout.waves[0].state == "soaking" and drv.rollout.waves[0].final_at == 2
    assert drv.tick(11.9) == []  # soak not over: no publish of wave 1
    wave1 = drv.tick(12)
    assert wave1 == [PublishManifest(f"cam-{i:04d}") for i in range(1, 5)]
    assert drv.rollout.current_wave == 1 and drv.rollout.waves[0].state == "done"
    for i in range(1, 5):
        drv.fleet.activate(f"cam-{i:04d}")
    drv.tick(13)
    drv.tick(23)
    assert drv.rollout.current_wave == 2
    for i in range(5, 10):
        drv.fleet.activate(f"cam-{i:04d}")
    drv.tick(24)
    assert drv.rollout.state is RolloutState.RUNNING
    drv.tick(34)
    return drv


def test_happy_path_publishes_wave_by_wave_and_completes() -> None:
    drv = _happy_path(restart=False)
    rollout = drv.rollout
    assert rollout.state is RolloutState.COMPLETED and rollout.finished_at == 34
    assert rollout.counts()["active"] == 10
    assert sorted(drv.of(PublishManifest)) == sorted(rollout.devices)
    assert sorted(drv.of(ClearManifest)) == sorted(rollout.devices)  # each exactly once
    first = rollout.devices["cam-0005"]
    assert first.published_at == 23 and first.old_version == OLD and first.baseline_fps == 30
    assert all(p.metrics_seen and p.note is None for p in rollout.devices.values())
    status = rollout.status_json()
    assert [w["state"] for w in status["waves"]] == ["done", "done", "done"]
    assert status["counts"]["active"] == 10 and status["devices"]["cam-0000"]["state"] == "active"
    assert not rollout.needs_tick(35)
    assert tick(rollout, drv.fleet.records, 40).changed is False


def test_restart_from_the_document_continues_identically() -> None:
    plain, restarted = _happy_path(restart=False), _happy_path(restart=True)
    assert plain.actions == restarted.actions
    assert plain.rollout.to_json() == restarted.rollout.to_json()


def test_rate_limit_bounds_each_tick() -> None:
    rollout = make_rollout(100, canary="100%", waves=["100%"], rate_per_min=600)
    drv = Driver(rollout, Fleet(rollout.devices))
    counts = [len(drv.tick(float(t))) for t in range(10)]
    assert counts == [10] * 10  # 600/min at a 1 s tick: at most 10 per tick
    assert len(set(drv.of(PublishManifest))) == 100 and drv.tick(10) == []
    slow = Driver(make_rollout(5, canary="100%", waves=["100%"], rate_per_min=30), Fleet([]))
    slow.fleet = Fleet(slow.rollout.devices)
    published = [len(slow.tick(float(t))) for t in range(8)]
    assert published == [1, 0, 1, 0, 1, 0, 1, 0]  # one every 2 s, bursts of at most one


def test_offline_device_does_not_block_and_updates_when_back() -> None:
    rollout = make_rollout(
        3, canary="3", waves=["100%"], soak_s=0, offline_after_s=30, probation_timeout_s=100
    )
    fleet = Fleet(rollout.devices)
    fleet.set("cam-0001", online=False)
    drv = Driver(rollout, fleet)
    drv.tick(0)
    fleet.activate("cam-0000")
    fleet.activate("cam-0002")
    drv.tick(1)
    assert drv.state("cam-0001") is DeviceState.PENDING
    drv.tick(29.9)
    assert drv.rollout.state is RolloutState.RUNNING
    drv.tick(30)
    assert drv.state("cam-0001") is DeviceState.OFFLINE
    assert drv.rollout.state is RolloutState.COMPLETED
    assert "cam-0001" not in drv.of(ClearManifest)  # keeps its manifest for its return
    assert drv.rollout.needs_tick(31)
    fleet.set("cam-0001", online=True)
    fleet.ota("cam-0001", "downloaded")
    drv.tick(500)
    assert drv.state("cam-0001") is DeviceState.IN_PROGRESS  # install clock restarted
    assert drv.rollout.devices["cam-0001"].clock_at == 500
    # back online but still installing: the completed rollout keeps following it
    assert drv.rollout.needs_tick(500.5)
    fleet.activate("cam-0001")
    assert drv.tick(501) == [ClearManifest("cam-0001")]
    assert drv.rollout.counts()["active"] == 3 and not drv.rollout.needs_tick(502)


def test_install_timeout_fails_an_online_device() -> None:
    rollout = make_rollout(
        3,
        canary="3",
        waves=["100%"],
        soak_s=0,
        max_failed_pct=50,
        offline_after_s=10,
        probation_timeout_s=60,
    )
    fleet = Fleet(rollout.devices)
    drv = Driver(rollout, fleet)
    drv.tick(0)
    fleet.activate("cam-0000")
    fleet.activate("cam-0001")
    fleet.ota("cam-0002", "building")
    drv.tick(59)
    assert drv.state("cam-0002") is DeviceState.IN_PROGRESS
    assert drv.tick(60) == [ClearManifest("cam-0002")]
    progress = drv.rollout.devices["cam-0002"]
    assert progress.state is DeviceState.FAILED and progress.reason == "install_timeout"
    assert drv.rollout.state is RolloutState.COMPLETED


def test_failure_reasons_come_from_the_device() -> None:
    rollout = make_rollout(2, canary="2", waves=["100%"], max_failed_pct=100, soak_s=0)
    fleet = Fleet(rollout.devices)
    drv = Driver(rollout, fleet)
    drv.tick(0)
    fleet.ota("cam-0000", "rejected", reason="incompatible")
    fleet.ota("cam-0001", "rolled_back", reason="probation_slow")
    drv.tick(1)
    assert drv.rollout.devices["cam-0000"].reason == "incompatible"
    assert drv.state("cam-0000") is DeviceState.FAILED
    assert drv.rollout.devices["cam-0001"].reason == "probation_slow"
    assert drv.rollout.state is RolloutState.COMPLETED


def test_pause_stops_publishing_but_keeps_watching() -> None:
    rollout = make_rollout(4, canary="1", waves=["100%"], soak_s=0)
    fleet = Fleet(rollout.devices)
    drv = Driver(rollout, fleet)
    drv.tick(0)
    drv.rollout = control(drv.rollout, "pause", 0.5)
    assert drv.rollout.state is RolloutState.PAUSED
    assert control(drv.rollout, "pause", 0.6) is drv.rollout
    fleet.activate("cam-0000")
    assert drv.tick(1) == [ClearManifest("cam-0000")]  # progress still tracked
    assert drv.tick(5) == [] and drv.state("cam-0000") is DeviceState.ACTIVE
    drv.rollout = control(drv.rollout, "resume", 6)
    published = drv.tick(6)
    assert published == [PublishManifest(f"cam-{i:04d}") for i in (1, 2, 3)]


def test_controls_refuse_illegal_steps() -> None:
    rollout = make_rollout(1)
    paused = control(rollout, "pause", 1)
    assert paused.state is RolloutState.PAUSED and paused.updated_at == 1
    aborted = control(paused, "abort", 2)
    assert aborted.abort_reason == "aborted by operator" and aborted.finished_at == 2
    assert control(aborted, "abort", 3) is aborted
    for op in ("pause", "resume"):
        with pytest.raises(EdgeAgentError, match=f"is aborted; it cannot {op}") as info:
            control(aborted, op, 3)  # type: ignore[arg-type]
        assert info.value.fix
    done = dataclasses.replace(rollout, state=RolloutState.COMPLETED)
    with pytest.raises(EdgeAgentError, match="cannot abort"):
        control(done, "abort", 3)
    with pytest.raises(EdgeAgentError, match="unknown rollout control"):
        control(rollout, "explode", 3)  # type: ignore[arg-type]
    with pytest.raises(InternalError, match="'completed' -> 'running'"):
        check_transition(RolloutState.COMPLETED, RolloutState.RUNNING)
    with pytest.raises(InternalError, match="'failed' -> 'active'"):
        check_transition(DeviceState.FAILED, DeviceState.ACTIVE)
    assert check_transition(DeviceState.OFFLINE, DeviceState.ACTIVE) is DeviceState.ACTIVE


def test_manual_abort_clears_and_rolls_back_on_the_next_tick() -> None:
    rollout = make_rollout(3, canary="3", waves=["100%"])
    fleet = Fleet(rollout.devices)
    drv = Driver(rollout, fleet)
    drv.tick(0)
    fleet.activate("cam-0000")
    fleet.ota("cam-0001", "probation")
    drv.tick(1)
    drv.rollout = control(drv.rollout, "abort", 2)
    actions = drv.tick(3)
    assert ClearManifest("cam-0001") in actions and ClearManifest("cam-0002") in actions
    assert ClearManifest("cam-0000") not in actions  # cleared when it became active
    rollbacks = {a.device for a in actions if isinstance(a, SendRollback)}
    assert rollbacks == {"cam-0000", "cam-0001"}
    assert drv.rollout.abort_sent_at == 3 and drv.rollout.tripped == ()
