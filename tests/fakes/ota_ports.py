"""In-memory fakes of OTA's ports (:mod:`agent.ota.ports`): no engine, no pipeline, no broker."""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.core.errors import BuildFailed, EdgeAgentError
from agent.ota.record import BuildResult, ProbationSample


class Crash(BaseException):
    """The process dying inside a port or hook (not an Exception: nothing in the updater
    catches it)."""


@dataclass
class FakeBuilder:
    """``EngineBuilder``: "builds" a bundle into an artifact directory under ``root`` (the
    engine hash is the bundle path's); ``fail`` holds bundle dirs whose build fails, ``golden``
    bundle dirs whose golden check fails."""

    root: Path
    validated_fps: float | None = 100.0
    fail: set[Path] = field(default_factory=set[Path])
    golden: set[Path] = field(default_factory=set[Path])
    built: list[Path] = field(default_factory=list[Path])

    def build(self, bundle_dir: Path) -> BuildResult:
        self.built.append(bundle_dir)
        if bundle_dir in self.fail:
            raise BuildFailed("fake build failed", fix="push a model that builds")
        digest = hashlib.sha256(str(bundle_dir).encode()).hexdigest()
        artifact = self.root / digest[:12]
        artifact.mkdir(parents=True, exist_ok=True)
        return BuildResult(artifact, digest, self.validated_fps, precision="fp32")

    def check_golden(self, result: BuildResult, bundle_dir: Path) -> None:
        del result
        if bundle_dir in self.golden:
            raise EdgeAgentError("fake golden mismatch", fix="regenerate the golden outputs")


@dataclass
class FakeServing:
    """``ModelServing``: records activations; probation samples come from ``samples`` (then
    ``steady``); ``activate_error`` makes the next activation raise."""

    steady: ProbationSample = field(default_factory=lambda: ProbationSample(fps=100.0, frames=5))
    baseline: ProbationSample | None = None
    activate_error: BaseException | None = None
    samples: deque[ProbationSample] = field(default_factory=deque[ProbationSample])
    activations: list[tuple[str, Path, BuildResult]] = field(default_factory=list[Any])

    def script(self, samples: Iterable[ProbationSample]) -> None:
        self.samples.extend(samples)

    def activate(self, model: str, bundle_dir: Path, result: BuildResult) -> None:
        if self.activate_error is not None:
            error, self.activate_error = self.activate_error, None
            raise error
        self.activations.append((model, bundle_dir, result))

    def probation_sample(self) -> ProbationSample:
        return self.samples.popleft() if self.samples else self.steady

    def baseline_sample(self, model: str) -> ProbationSample | None:
        del model
        return self.baseline

    @property
    def serving(self) -> Path | None:
        """The bundle activated last."""
        return self.activations[-1][1] if self.activations else None


@dataclass
class ScriptedAdmission:
    """``BuildAdmission``: answers from ``answers`` in turn, then True."""

    answers: list[bool] = field(default_factory=list[bool])
    calls: int = 0

    def builds_allowed(self) -> bool:
        self.calls += 1
        return self.answers.pop(0) if self.answers else True


@dataclass
class ListPublisher:
    """``StatePublisher``: keeps every published record."""

    states: list[dict[str, Any]] = field(default_factory=list[dict[str, Any]])

    def publish_state(self, record: dict[str, Any]) -> None:
        self.states.append(record)

    @property
    def last(self) -> dict[str, Any]:
        return self.states[-1]

    def trail(self, update_id: str | None = None) -> list[str]:
        """The states one update went through (the last one by default)."""
        rid = update_id or self.states[-1]["id"]
        out: list[str] = []
        for s in self.states:
            if s["id"] == rid and (not out or out[-1] != s["state"]):
                out.append(s["state"])
        return out
