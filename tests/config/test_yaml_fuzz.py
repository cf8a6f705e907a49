"""Issue #14 item 6: every configuration loader survives ≥ 200 mutated YAML files.

The corpus is generated at test time from the repository's real configuration files (the
embedded default, the systemd example, every device profile, every bundle's model.yaml) with
seeded mutations (``tests/helpers/yaml_mutations.py``). Each file goes through the agent-config
loader, the device-profile store, the bundle loader and ``edge-agent validate-config`` (in
process): only documented user errors may come out (an ``EdgeAgentError``; exit code 0 or 2),
never another exception, and each file is handled within a per-file guard.
"""

from __future__ import annotations

import collections
import contextlib
import shutil
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.cli.main import main
from agent.config.load import load_run_config, validate_file
from agent.config.profiles.store import ProfileStore
from agent.core.errors import ConfigIssue, EdgeAgentError
from agent.engine.bundle import load_bundle
from tests.assets import CLS_BUNDLE, DEFAULT_CONFIG, FIXTURES, MODELS, PROFILES_DIR, SYSTEMD_DIR
from tests.helpers.yaml_mutations import Mutant, mutated_corpus

COUNT = 260
GUARD_S = 10.0
#: mutations whose every output must be refused, with a located YAML issue
ALWAYS_REFUSED = {"billion_laughs", "merge_bomb", "self_anchor", "deep_sequence"}


class GuardTimeout(BaseException):
    """A loader ran past the per-file guard (BaseException: no ``except Exception`` hides it)."""


@contextlib.contextmanager
def time_guard(seconds: float, what: str) -> Iterator[None]:
    """SIGALRM after ``seconds``; pytest-timeout's own alarm is saved and re-armed after."""

    def on_alarm(_signum: int, _frame: Any) -> None:
        raise GuardTimeout(f"{what} still running after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    delay, interval = signal.getitimer(signal.ITIMER_REAL)
    start = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if delay:
            left = max(0.001, delay - (time.monotonic() - start))
            signal.setitimer(signal.ITIMER_REAL, left, interval)


def _sources() -> list[Path]:
    models = sorted(MODELS.glob("*/model.yaml")) + sorted(FIXTURES.glob("models/*/model.yaml"))
    return [
        DEFAULT_CONFIG,
        SYSTEMD_DIR / "agent.example.yaml",
        *sorted(PROFILES_DIR.glob("*.yaml")),
        *models,
    ]


class Loaders:
    """Every loader of a configuration file, each fed the mutated bytes where it expects them."""

    def __init__(self, work: Path) -> None:
        self.bundle = work / "bundle"
        self.bundle.mkdir()
        shutil.copy(CLS_BUNDLE / "model.onnx", self.bundle / "model.onnx")
        shutil.copy(CLS_BUNDLE / "labels.txt", self.bundle / "labels.txt")
        self.profiles = work / "profiles"
        self.issues: dict[Path, list[ConfigIssue]] = {}

    def agent(self, mutant: Mutant) -> object:
        return load_run_config(mutant.path)

    def profile(self, mutant: Mutant) -> object:
        shutil.rmtree(self.profiles, ignore_errors=True)
        self.profiles.mkdir()
        name = mutant.source.stem if mutant.source.parent == PROFILES_DIR else "fuzz"
        shutil.copy(mutant.path, self.profiles / f"{name}.yaml")
        return ProfileStore(self.profiles).load(name)

    def model(self, mutant: Mutant) -> object:
        shutil.copy(mutant.path, self.bundle / "model.yaml")
        return load_bundle(self.bundle)

    def validate(self, mutant: Mutant) -> object:
        _kind, self.issues[mutant.path] = validate_file(mutant.path)
        return self.issues[mutant.path]

    def cli(self, mutant: Mutant) -> object:
        code = main(["validate-config", "-q", str(mutant.path)])
        if code not in (0, 2):
            raise AssertionError(f"validate-config exited {code}, not 0 or 2")
        return code

    def every(self) -> dict[str, Callable[[Mutant], object]]:
        return {
            "agent": self.agent,
            "profile": self.profile,
            "model": self.model,
            "validate_file": self.validate,
            "cli": self.cli,
        }


def _run_one(loader: Callable[[Mutant], object], mutant: Mutant) -> str | None:
    """None when the loader accepted or refused the file as documented, else the traceback."""
    try:
        with time_guard(GUARD_S, f"{mutant.path.name}"):
            loader(mutant)
    except EdgeAgentError:
        return None
    except (Exception, GuardTimeout):
        return traceback.format_exc(limit=-6)
    return None


def test_every_loader_survives_mutated_yaml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mutants = mutated_corpus(_sources(), tmp_path / "corpus", COUNT)
    assert len(mutants) >= 200
    loaders = Loaders(tmp_path)
    crashes: list[str] = []
    outcomes: collections.Counter[str] = collections.Counter()
    for mutant in mutants:
        for name, loader in loaders.every().items():
            failure = _run_one(loader, mutant)
            if failure is not None:
                crashes.append(f"{mutant.path.name} [{name}, seed {mutant.seed}]:\n{failure}")
        issues = loaders.issues.get(mutant.path, [])
        outcomes["refused" if issues else "accepted"] += 1
        if mutant.mutation in ALWAYS_REFUSED:
            assert issues and issues[0].line >= 1, f"{mutant.path.name} was not refused"
        capsys.readouterr()
    assert not crashes, f"{len(crashes)} tracebacks:\n" + "\n".join(crashes[:5])
    assert outcomes["refused"] >= COUNT // 2, outcomes
