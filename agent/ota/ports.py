"""What OTA needs from the rest of the agent, as ports (implemented by ``agent.app.ota``).

Every call comes from the updater thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agent.ota.record import BuildResult, ProbationSample


class EngineBuilder(Protocol):
    def build(self, bundle_dir: Path) -> BuildResult:
        """Build and validate an engine for the bundle (isolated child) or load it from the
        engine cache; raises an :class:`~agent.core.errors.EdgeAgentError` on failure."""
        ...

    def check_golden(self, result: BuildResult, bundle_dir: Path) -> None:
        """Raise an ``EdgeAgentError`` when the bundle's golden outputs do not match."""
        ...


class ModelServing(Protocol):
    def activate(self, model: str, bundle_dir: Path, result: BuildResult) -> None:
        """Warm a runner pool for ``result`` and hot-swap it in between frames; when this
        raises, the previous model must still be serving."""
        ...

    def probation_sample(self) -> ProbationSample:
        """The serving model since the previous call."""
        ...

    def baseline_sample(self, model: str) -> ProbationSample | None:
        """The model serving now (before a swap), measured the way probation measures; None
        when unknown. Probation compares like with like (see :mod:`agent.ota.probation`)."""
        ...


class BuildAdmission(Protocol):
    def builds_allowed(self) -> bool:
        """The governor's build admission; the updater polls it."""
        ...


class StatePublisher(Protocol):
    def publish_state(self, record: dict[str, Any]) -> None:
        """Every change of the update record, in its public wire form (publish it retained)."""
        ...


class AlwaysAdmit:
    def builds_allowed(self) -> bool:
        return True


class NoPublisher:
    def publish_state(self, record: dict[str, Any]) -> None:
        del record


@dataclass(frozen=True)
class UpdaterPorts:
    """The updater's collaborators, built by the composition root."""

    builder: EngineBuilder
    serving: ModelServing
    admission: BuildAdmission = field(default_factory=AlwaysAdmit)
    publisher: StatePublisher = field(default_factory=NoPublisher)
