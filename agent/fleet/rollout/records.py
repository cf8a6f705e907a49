"""The typed rollout: :class:`Rollout`, its :class:`Wave` s and one :class:`DeviceProgress` per
target device.

``to_json`` is the stored document (rewritten every tick, so compact: per-device entries use
short keys and leave out defaults; 1,000 devices stay around 250 KB); ``from_json`` reads back
exactly what ``to_json`` wrote (``from_json(d).to_json() == d``). ``status_json`` is the
operator's view (HTTP API, CLI): long names, counts and wave states.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.fleet.rollout.spec import RolloutSpec
from agent.fleet.rollout.states import DEVICE_FINAL, DeviceState, RolloutState

__all__ = ["DOC_FORMAT", "DeviceProgress", "Rollout", "Wave"]

DOC_FORMAT = 1

_DEVICE_KEYS = {
    "wave": "w",
    "sha256": "h",
    "state": "s",
    "reason": "r",
    "published_at": "p",
    "clock_at": "c",
    "final_at": "f",
    "old_version": "ov",
    "baseline_fps": "bf",
    "metrics_seen": "m",
    "cleared": "x",
    "rollback_at": "rb",
    "note": "n",
}


#: device states a completed rollout keeps ticking for (until it expires)
_FOLLOWED_AFTER_COMPLETION = frozenset({DeviceState.OFFLINE, DeviceState.IN_PROGRESS})


@dataclass(frozen=True)
class DeviceProgress:
    """One target device: its signed manifest's hash, where it stands, what we sent it.

    ``clock_at`` starts the install timeout (publish, or the device's return from offline);
    ``final_at`` is when it last reached a state that no longer blocks its wave;
    ``metrics_seen``: a metrics report on the new version arrived; ``cleared``: its retained
    manifest was cleared; ``rollback_at``: the last rollback command sent.
    """

    wave: int
    sha256: str = ""
    state: DeviceState = DeviceState.PENDING
    reason: str | None = None
    published_at: float | None = None
    clock_at: float | None = None
    final_at: float | None = None
    old_version: int | None = None
    baseline_fps: float | None = None
    metrics_seen: bool = False
    cleared: bool = False
    rollback_at: float | None = None
    note: str | None = None

    @property
    def published(self) -> bool:
        return self.published_at is not None

    @property
    def final(self) -> bool:
        return self.state in DEVICE_FINAL

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"w": self.wave, "h": self.sha256, "s": self.state.value}
        for name, key in _DEVICE_KEYS.items():
            value = getattr(self, name)
            if name not in ("wave", "sha256", "state") and value is not None and value is not False:
                out[key] = value
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeviceProgress:
        fields = {name: data[key] for name, key in _DEVICE_KEYS.items() if key in data}
        fields["state"] = DeviceState(data["s"])
        return cls(**fields)


@dataclass(frozen=True)
class Wave:
    """Devices published together. ``final_at``: when all of them were last seen final (the
    soak counts from it); ``done_at``: when the wave let the next one start."""

    index: int
    devices: tuple[str, ...]
    started_at: float | None = None
    final_at: float | None = None
    done_at: float | None = None

    @property
    def state(self) -> str:
        if self.done_at is not None:
            return "done"
        if self.started_at is None:
            return "pending"
        return "publishing" if self.final_at is None else "soaking"

    def to_json(self) -> list[Any]:
        return [self.index, list(self.devices), self.started_at, self.final_at, self.done_at]

    @classmethod
    def from_json(cls, data: list[Any]) -> Wave:
        index, devices, started, final, done = data
        return cls(index, tuple(devices), started, final, done)

    def status_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "devices": list(self.devices),
            "state": self.state,
            "started_at": self.started_at,
            "final_at": self.final_at,
            "done_at": self.done_at,
        }


@dataclass(frozen=True)
class Rollout:
    """One rollout of one model version to a fleet. Frozen: the engine returns new ones.

    ``tokens`` / ``bucket_at`` are the publish rate's token bucket; ``current_wave`` the wave
    being published or soaked; ``abort_sent_at``: when an abort's clears and rollbacks went
    out; ``cleanup_done``: an aborted rollout stopped watching.
    """

    id: str
    fleet: str
    model: str
    version: int
    spec: RolloutSpec
    state: RolloutState
    created_at: float
    updated_at: float
    expires_at: float
    base_url: str
    waves: tuple[Wave, ...]
    devices: Mapping[str, DeviceProgress] = field(default_factory=dict[str, DeviceProgress])
    current_wave: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    tokens: float = 0.0
    bucket_at: float | None = None
    abort_reason: str | None = None
    tripped: tuple[str, ...] = ()
    abort_sent_at: float | None = None
    cleanup_done: bool = False

    def started_devices(self) -> list[str]:
        """Devices of the waves started so far, in wave order."""
        return [d for w in self.waves if w.started_at is not None for d in w.devices]

    def counts(self) -> dict[str, int]:
        counts = {state.value: 0 for state in DeviceState}
        for progress in self.devices.values():
            counts[progress.state.value] += 1
        return counts

    def needs_tick(self, now: float) -> bool:
        """Whether the controller still drives or watches this rollout."""
        if self.state in (RolloutState.PLANNED, RolloutState.RUNNING, RolloutState.PAUSED):
            return True
        if self.state is RolloutState.ABORTED:
            return not self.cleanup_done
        # a completed rollout still follows the devices that were offline at its end: while
        # one is offline or, back online, still installing (it may report in_progress first)
        waiting = any(p.state in _FOLLOWED_AFTER_COMPLETION for p in self.devices.values())
        return waiting and now < self.expires_at

    def to_json(self) -> dict[str, Any]:
        return {
            "format": DOC_FORMAT,
            "id": self.id,
            "fleet": self.fleet,
            "model": self.model,
            "version": self.version,
            "state": self.state.value,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "expires_at": self.expires_at,
            "base_url": self.base_url,
            "spec": self.spec.to_json(),
            "waves": [w.to_json() for w in self.waves],
            "devices": {d: p.to_json() for d, p in self.devices.items()},
            "current_wave": self.current_wave,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "bucket": [self.tokens, self.bucket_at],
            "abort_reason": self.abort_reason,
            "tripped": list(self.tripped),
            "abort_sent_at": self.abort_sent_at,
            "cleanup_done": self.cleanup_done,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Rollout:
        tokens, bucket_at = doc["bucket"]
        return cls(
            id=doc["id"],
            fleet=doc["fleet"],
            model=doc["model"],
            version=doc["version"],
            spec=RolloutSpec.model_validate(doc["spec"]),
            state=RolloutState(doc["state"]),
            created_at=doc["created_at"],
            updated_at=doc["updated_at"],
            expires_at=doc["expires_at"],
            base_url=doc["base_url"],
            waves=tuple(Wave.from_json(w) for w in doc["waves"]),
            devices={d: DeviceProgress.from_json(p) for d, p in doc["devices"].items()},
            current_wave=doc["current_wave"],
            started_at=doc["started_at"],
            finished_at=doc["finished_at"],
            tokens=tokens,
            bucket_at=bucket_at,
            abort_reason=doc["abort_reason"],
            tripped=tuple(doc["tripped"]),
            abort_sent_at=doc["abort_sent_at"],
            cleanup_done=doc["cleanup_done"],
        )

    def _wave_status(self, wave: Wave) -> dict[str, Any]:
        """A wave's view; one the abort cut short (started, not done) shows ``aborted``."""
        out = wave.status_json()
        started = wave.started_at is not None
        if self.state is RolloutState.ABORTED and started and wave.done_at is None:
            out["state"] = "aborted"
        return out

    def status_json(self) -> dict[str, Any]:
        """The operator's view of the rollout (``GET /rollouts/<id>``, ``rollout status``)."""
        return {
            "id": self.id,
            "fleet": self.fleet,
            "state": self.state.value,
            "model": self.model,
            "version": self.version,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "expires_at": self.expires_at,
            "current_wave": self.current_wave,
            "counts": self.counts(),
            "waves": [self._wave_status(w) for w in self.waves],
            "abort_reason": self.abort_reason,
            "tripped": list(self.tripped),
            "cleanup_done": self.cleanup_done,
            "devices": {
                d: {
                    "state": p.state.value,
                    "reason": p.reason,
                    "published_at": p.published_at,
                    "wave": p.wave,
                    "note": p.note,
                }
                for d, p in self.devices.items()
            },
            "spec": self.spec.to_json(),
        }
