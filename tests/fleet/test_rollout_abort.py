"""Abort criteria and the aborted rollout's cleanup (rollback commands, resend rule, end)."""

from __future__ import annotations

from agent.fleet.rollout import (
    ClearManifest,
    DeviceState,
    PublishManifest,
    RolloutState,
    SendRollback,
    evaluate,
)
from tests.fleet.test_rollout_engine import Driver, Fleet, make_rollout


def _canary(n: int, **spec: object) -> Driver:
    rollout = make_rollout(n, **spec)
    drv = Driver(rollout, Fleet(rollout.devices))
    drv.tick(0)
    return drv


def test_rollbacks_in_the_canary_abort_before_the_next_wave() -> None:
    drv = _canary(20, canary="10", waves=["100%"], max_failed_pct=10)
    assert len(drv.of(PublishManifest)) == 10
    for i in range(10):
        if i < 3:
            drv.fleet.ota(f"cam-{i:04d}", "rolled_back", reason="probation_slow")
        else:
            drv.fleet.activate(f"cam-{i:04d}")
    actions = drv.tick(1)
    rollout = drv.rollout
    assert rollout.state is RolloutState.ABORTED and rollout.finished_at == 1
    assert rollout.tripped == ("cam-0000", "cam-0001", "cam-0002")
    assert rollout.abort_reason is not None and "3 of 10" in rollout.abort_reason
    rollbacks = sorted(a.device for a in actions if isinstance(a, SendRollback))
    assert rollbacks == [f"cam-{i:04d}" for i in range(3, 10)]
    assert sorted(a.device for a in actions if isinstance(a, ClearManifest)) == [
        f"cam-{i:04d}" for i in range(10)
    ]
    assert len(drv.of(PublishManifest)) == 10  # wave 1 never published
    assert drv.rollout.waves[1].state == "pending"
    # the operator's view: the canary the abort cut short, and the wave that never started
    assert [w["state"] for w in drv.rollout.status_json()["waves"]] == ["aborted", "pending"]
    assert drv.tick(30) == []  # rollbacks sent once


def test_failures_below_the_share_do_not_abort() -> None:
    drv = _canary(10, canary="10", waves=["100%"], max_failed_pct=10)
    drv.fleet.ota("cam-0000", "failed", reason="build_failed")
    drv.tick(1)
    assert drv.rollout.state is RolloutState.RUNNING  # 1 of 10 = 10%, not above
    drv.fleet.ota("cam-0001", "failed", reason="build_failed")
    drv.tick(2)
    assert drv.rollout.state is RolloutState.ABORTED


def test_slow_device_trips_min_fps_ratio() -> None:
    drv = _canary(3, canary="3", waves=["100%"], min_fps_ratio=0.8)
    drv.fleet.activate("cam-0000")
    drv.fleet.ota("cam-0001", "active")
    drv.fleet.serve("cam-0001", fps=25.0)  # 25 >= 0.8 * 30
    drv.fleet.ota("cam-0002", "probation")
    drv.fleet.serve("cam-0002", fps=20.0)
    assert evaluate(drv.rollout, drv.fleet.records) is not None
    actions = drv.tick(1)
    assert drv.rollout.tripped == ("cam-0002",)
    assert "min_fps_ratio 0.8" in (drv.rollout.abort_reason or "")
    rollbacks = {a.device for a in actions if isinstance(a, SendRollback)}
    assert rollbacks == {"cam-0000", "cam-0001", "cam-0002"}  # probation counts as taken


def test_nan_rollbacks_trip_max_nan() -> None:
    drv = _canary(4, canary="4", waves=["100%"], max_failed_pct=100, max_nan=1)
    drv.fleet.ota("cam-0000", "rolled_back", reason="probation_nan")
    drv.tick(1)
    assert drv.rollout.state is RolloutState.RUNNING
    drv.fleet.ota("cam-0001", "rolled_back", reason="probation_nan")
    drv.tick(2)
    assert drv.rollout.state is RolloutState.ABORTED
    assert drv.rollout.tripped == ("cam-0000", "cam-0001")
    assert "NaN" in (drv.rollout.abort_reason or "")


def test_gate_and_task_drop_trip() -> None:
    drv = _canary(3, canary="3", waves=["100%"], max_failed_pct=100)
    drv.fleet.ota("cam-0000", "failed", reason="build_failed", gate_passed=False)
    drv.tick(1)
    assert drv.rollout.state is RolloutState.ABORTED and drv.rollout.tripped == ("cam-0000",)
    drop = _canary(3, canary="3", waves=["100%"], max_metric_drop=0.05)
    drop.fleet.ota("cam-0001", "active", gate_passed=True, task_drop=0.04)
    drop.tick(1)
    assert drop.rollout.state is RolloutState.RUNNING
    drop.fleet.ota("cam-0002", "active", gate_passed=True, task_drop=0.2)
    drop.tick(2)
    assert drop.rollout.tripped == ("cam-0002",) and "task_drop" in (
        drop.rollout.abort_reason or ""
    )


def test_several_criteria_are_all_reported() -> None:
    drv = _canary(2, canary="2", waves=["100%"], max_failed_pct=0, max_nan=0)
    drv.fleet.ota("cam-0000", "rolled_back", reason="probation_nan")
    drv.tick(1)
    reason = drv.rollout.abort_reason or ""
    assert "max_failed_pct" in reason and "NaN" in reason and "; " in reason


def test_cleanup_follows_rollbacks_resends_and_ends() -> None:
    drv = _canary(3, canary="3", waves=["100%"], max_failed_pct=10, probation_timeout_s=600)
    drv.fleet.activate("cam-0000")
    drv.fleet.ota("cam-0001", "rolled_back", reason="probation_slow")
    drv.fleet.ota("cam-0002", "building")  # got the manifest before the abort
    drv.tick(10)
    assert drv.of(SendRollback) == ["cam-0000"] and not drv.rollout.cleanup_done
    drv.fleet.commanded_back("cam-0000")
    drv.tick(20)
    assert drv.state("cam-0000") is DeviceState.ROLLED_BACK
    assert drv.rollout.devices["cam-0000"].reason == "rollback_requested"
    assert not drv.rollout.cleanup_done  # cam-0002 is still installing
    drv.fleet.activate("cam-0002")
    assert drv.tick(30) == [SendRollback("cam-0002", "shapes-cls")]
    assert drv.tick(60) == []  # at most once a minute
    assert drv.tick(90) == [SendRollback("cam-0002", "shapes-cls")]  # still on it: again
    drv.fleet.commanded_back("cam-0002")
    drv.tick(95)
    assert drv.rollout.cleanup_done and not drv.rollout.needs_tick(96)
    assert drv.tick(200) == []


def test_cleanup_gives_up_after_the_install_timeout() -> None:
    drv = _canary(
        2, canary="2", waves=["100%"], max_failed_pct=0, probation_timeout_s=100, offline_after_s=50
    )
    drv.fleet.ota("cam-0000", "failed", reason="build_failed")
    drv.fleet.activate("cam-0001")  # never answers the rollback
    drv.tick(1)
    assert drv.of(SendRollback) == ["cam-0001"]
    drv.tick(100)
    assert not drv.rollout.cleanup_done and drv.of(SendRollback) == ["cam-0001", "cam-0001"]
    drv.tick(101)
    assert drv.rollout.cleanup_done and drv.rollout.state is RolloutState.ABORTED
    assert drv.tick(300) == []
