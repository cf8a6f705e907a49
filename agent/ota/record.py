"""Typed records of OTA: an update (:class:`UpdateRecord`, journalled and published retained),
what a build returns (:class:`BuildResult`, with the gate's verdict :class:`GateVerdict`), a
look at the serving model (:class:`ProbationSample`) and a rollback target
(:class:`RollbackTarget`).

``to_json`` / ``from_json`` are the wire forms: the journal file (``state_dir/ota/journal.json``)
and the retained ``model`` record of docs/telemetry.md. They must not change (new optional
fields only, such as ``artifact.gate``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from agent.core.errors import InternalError
from agent.ota.states import UpdateState


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True)
class GateVerdict:
    """The validation gate on the chosen precision: its agreement ``metric`` and ``value``,
    whether it ``passed``, and ``task_drop`` = the float reference's task metric minus the
    engine's (> 0 = worse; None without held-out labels). On the wire as ``artifact.gate``."""

    passed: bool
    metric: str
    value: float
    task_drop: float | None = None

    def to_json(self) -> dict[str, Any]:
        drop = None if self.task_drop is None else round(self.task_drop, 6)
        return {
            "passed": self.passed,
            "task_drop": drop,
            "metric": self.metric,
            "value": round(self.value, 6),
        }

    @classmethod
    def from_json(cls, data: Any) -> GateVerdict | None:
        """The verdict of a ``gate`` object; None when it is not one (tolerant reader)."""
        if not isinstance(data, dict):
            return None
        doc = cast(dict[str, Any], data)
        passed, metric, value = doc.get("passed"), doc.get("metric"), _finite(doc.get("value"))
        if not isinstance(passed, bool) or not isinstance(metric, str) or value is None:
            return None
        return cls(passed, metric, value, _finite(doc.get("task_drop")))


@dataclass(frozen=True)
class BuildResult:
    """What the engine builder returns: a validated engine artifact."""

    artifact_dir: Path
    engine_sha256: str
    #: batch-1 inference throughput the validation gate measured (None: not measured)
    validated_fps: float | None
    precision: str = ""
    cache_hit: bool = False
    details: dict[str, Any] = field(default_factory=dict[str, Any])
    #: the gate's verdict on the chosen precision (None: not known, e.g. an older cache entry)
    gate: GateVerdict | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "artifact_dir": str(self.artifact_dir),
            "engine_sha256": self.engine_sha256,
            "validated_fps": self.validated_fps,
            "precision": self.precision,
            "cache_hit": self.cache_hit,
        }
        if self.gate is not None:
            out["gate"] = self.gate.to_json()
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BuildResult:
        """The inverse of :meth:`to_json`; ``gate`` and the optional fields may be missing or
        unreadable (then None / defaults). KeyError without ``artifact_dir``/``engine_sha256``."""
        return cls(
            artifact_dir=Path(str(data["artifact_dir"])),
            engine_sha256=str(data["engine_sha256"]),
            validated_fps=_finite(data.get("validated_fps")),
            precision=str(data.get("precision") or ""),
            cache_hit=data.get("cache_hit") is True,
            gate=GateVerdict.from_json(data.get("gate")),
        )


@dataclass(frozen=True)
class ProbationSample:
    """One look at the serving model during probation (since the previous sample)."""

    #: inference throughput of the serving engine (per worker, inferences/s); None = no traffic
    fps: float | None
    nan_outputs: int = 0
    crashed: bool = False
    frames: int = 0


@dataclass(frozen=True)
class RollbackTarget:
    """A version to fall back to: a kept OTA version, or the bundle in agent.yaml."""

    version: int | None
    bundle_dir: str
    source: str  # "ota" | "config"

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "bundle_dir": self.bundle_dir, "source": self.source}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RollbackTarget:
        return cls(data["version"], str(data["bundle_dir"]), str(data["source"]))

    def describe(self) -> str:
        if self.version is None:
            return f"the configured bundle {self.bundle_dir}"
        return f"v{self.version}"


@dataclass(frozen=True)
class Transition:
    state: UpdateState
    at: int
    reason: str | None

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state.value, "at": self.at, "reason": self.reason}


#: the fields a record may carry besides the core ones, in the order an update sets them
OPTIONAL = (
    "resumed_from",
    "manifest_sha256",
    "key_id",
    "payload",
    "envelope",
    "bundle_dir",
    "progress",
    "progress_message",
    "waiting_for",
    "artifact",
    "validated_fps",
    "previous",
    "baseline_fps",
)
_CORE = ("id", "op", "model", "version", "state", "reason", "detail", "started_at", "updated_at")


@dataclass
class UpdateRecord:
    """One update (or operator rollback). Optional fields are on the wire only once set
    (``present`` keeps the order they were set in); ``extra`` keeps keys this version does not
    know, so that a journal round-trips."""

    id: str
    op: str
    state: UpdateState
    started_at: int
    updated_at: int
    model: str | None = None
    version: int | None = None
    reason: str | None = None
    detail: str = ""
    transitions: list[Transition] = field(default_factory=list[Transition])
    resumed_from: str | None = None
    manifest_sha256: str | None = None
    key_id: str | None = None
    payload: str | None = None
    envelope: dict[str, Any] | None = None
    bundle_dir: str | None = None
    progress: float | None = None
    progress_message: str | None = None
    waiting_for: str | None = None
    artifact: dict[str, Any] | None = None
    validated_fps: float | None = None
    previous: RollbackTarget | None = None
    baseline_fps: float | None = None
    present: list[str] = field(default_factory=list[str])
    extra: dict[str, Any] = field(default_factory=dict[str, Any])

    def set(self, **fields: Any) -> None:
        """Set fields (``model``, ``version`` or optional ones); optional ones join the wire."""
        for name, value in fields.items():
            if name in ("model", "version"):
                setattr(self, name, value)
            elif name in OPTIONAL:
                setattr(self, name, value)
                if name not in self.present:
                    self.present.append(name)
            else:
                raise InternalError(f"UpdateRecord has no field {name!r}")

    def clear(self, *names: str) -> None:
        """Take optional fields off the wire again."""
        for name in names:
            if name in self.present:
                self.present.remove(name)
                setattr(self, name, None)

    def _core_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in _CORE}
        out["state"] = self.state.value
        return out

    def _optional_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.present:
            value = getattr(self, name)
            out[name] = value.to_json() if isinstance(value, RollbackTarget) else value
        out.update(self.extra)
        return out

    def to_json(self) -> dict[str, Any]:
        """The journal form (with the envelope and the full transition list)."""
        out = self._core_json()
        out["transitions"] = [t.to_json() for t in self.transitions]
        out.update(self._optional_json())
        return out

    def public_json(self) -> dict[str, Any]:
        """The published form: without the envelope, transitions as a list of states."""
        out = self._core_json()
        out.update({k: v for k, v in self._optional_json().items() if k != "envelope"})
        out["transitions"] = [t.state.value for t in self.transitions]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UpdateRecord:
        """Parse a journal; raises ValueError/KeyError/TypeError on one this cannot read."""
        rec = cls(
            id=str(data["id"]),
            op=str(data["op"]),
            state=UpdateState(data["state"]),
            started_at=int(data["started_at"]),
            updated_at=int(data["updated_at"]),
            model=data.get("model"),
            version=data.get("version"),
            reason=data.get("reason"),
            detail=str(data.get("detail", "")),
            transitions=[_transition(t) for t in data.get("transitions", [])],
        )
        for key, value in data.items():
            if key in OPTIONAL:
                if key == "previous" and isinstance(value, dict):
                    value = RollbackTarget.from_json(cast(dict[str, Any], value))  # noqa: PLW2901
                rec.set(**{key: value})
            elif key not in _CORE and key != "transitions":
                rec.extra[key] = value
        return rec


def _transition(data: Any) -> Transition:
    item = cast(dict[str, Any], data)
    return Transition(UpdateState(item["state"]), int(item["at"]), item.get("reason"))
