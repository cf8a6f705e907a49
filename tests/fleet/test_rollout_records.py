"""The stored rollout document: exact round trip, compact size, the status view."""

from __future__ import annotations

import dataclasses
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.fleet.rollout import DeviceProgress, DeviceState, Rollout, RolloutState, Wave
from tests.fleet.test_rollout_engine import make_rollout

_times = st.none() | st.floats(min_value=0, max_value=2e9, allow_nan=False)
_progress = st.builds(
    DeviceProgress,
    wave=st.integers(0, 5),
    sha256=st.text("0123456789abcdef", min_size=64, max_size=64),
    state=st.sampled_from(DeviceState),
    reason=st.none() | st.sampled_from(["install_timeout", "probation_nan", "offline"]),
    published_at=_times,
    clock_at=_times,
    final_at=_times,
    old_version=st.none() | st.integers(1, 2**53 - 1),
    baseline_fps=st.none() | st.floats(min_value=0, max_value=1e4),
    metrics_seen=st.booleans(),
    cleared=st.booleans(),
    rollback_at=_times,
    note=st.none() | st.just("fps_unchecked"),
)


@settings(max_examples=60, deadline=None)
@given(
    progress=st.lists(_progress, min_size=1, max_size=5),
    state=st.sampled_from(RolloutState),
    tokens=st.floats(min_value=0, max_value=100),
    bucket_at=_times,
    wave_times=st.tuples(_times, _times, _times),
    tripped=st.lists(st.sampled_from(["cam-0000", "cam-0001"]), unique=True),
)
def test_document_round_trips_exactly(
    *,
    progress: list[DeviceProgress],
    state: RolloutState,
    tokens: float,
    bucket_at: float | None,
    wave_times: tuple[float | None, float | None, float | None],
    tripped: list[str],
) -> None:
    base = make_rollout(len(progress), canary="100%", waves=["100%"])
    devices = dict(zip(base.devices, progress, strict=True))
    rollout = dataclasses.replace(
        base,
        state=state,
        devices=devices,
        waves=(Wave(0, tuple(devices), *wave_times),),
        tokens=tokens,
        bucket_at=bucket_at,
        abort_reason="why" if tripped else None,
        tripped=tuple(tripped),
    )
    doc = rollout.to_json()
    text = json.dumps(doc)
    back = Rollout.from_json(json.loads(text))
    assert back == rollout
    assert back.to_json() == doc


def test_thousand_devices_stay_compact() -> None:
    rollout = make_rollout(1000, canary="10%", waves=["50%", "100%"])
    busy = {
        d: dataclasses.replace(
            p,
            sha256="f" * 64,
            state=DeviceState.ACTIVE,
            published_at=1_760_000_000.123,
            clock_at=1_760_000_000.123,
            final_at=1_760_000_100.5,
            old_version=41,
            baseline_fps=29.87,
            metrics_seen=True,
            cleared=True,
        )
        for d, p in rollout.devices.items()
    }
    text = json.dumps(dataclasses.replace(rollout, devices=busy).to_json(), separators=(",", ":"))
    assert len(text) < 300_000


def test_status_view() -> None:
    rollout = make_rollout(4, canary="1", waves=["100%"])
    status = rollout.status_json()
    for key in (
        "id",
        "fleet",
        "state",
        "model",
        "version",
        "created_at",
        "updated_at",
        "counts",
        "waves",
        "abort_reason",
        "tripped",
        "devices",
        "spec",
    ):
        assert key in status
    assert status["counts"] == {
        "pending": 4,
        "in_progress": 0,
        "active": 0,
        "failed": 0,
        "rolled_back": 0,
        "offline": 0,
    }
    assert status["waves"][0] == {
        "index": 0,
        "devices": ["cam-0000"],
        "state": "pending",
        "started_at": None,
        "final_at": None,
        "done_at": None,
    }
    assert status["devices"]["cam-0003"]["state"] == "pending"
    assert status["spec"]["version"] == 2 and status["spec"]["bundle"] == "/srv/b"
    json.dumps(status)
