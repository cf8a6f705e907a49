"""Fixtures shared across test folders.

* ``cpu_profile`` — the ``cpu`` device profile, loaded once per session.
* ``engine_cache`` / ``det_int8_engine`` — the bundled detector built once per session (INT8, CPU
  profile) into a session cache; tests read it and copy it before changing anything.
* ``broker`` — a fresh Mosquitto on loopback per test (skips where mosquitto is not installed).
* ``board_root`` / ``sysfs_root`` — a writable copy of a board fixture tree under ``tmp_path``.

Option ``--screenshots DIR``: the browser tests save their screenshots there (else under their
``tmp_path``).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.config.device import DeviceProfile
from agent.config.profiles.store import ProfileStore
from agent.engine.build.orchestrator import build_engine
from agent.engine.build.outcome import BuildOutcome
from tests.assets import BOARDS, DET_BUNDLE, DET_CALIB, PROFILES_DIR, SYSFS
from tests.helpers.broker import Broker, mosquitto_binary

CopyRoot = Callable[[str], Path]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--screenshots",
        metavar="DIR",
        type=Path,
        default=None,
        help="save the dashboard browser tests' screenshots in DIR (default: their tmp_path)",
    )


@pytest.fixture(scope="session")
def cpu_profile() -> DeviceProfile:
    return ProfileStore(PROFILES_DIR).load("cpu")


@pytest.fixture(scope="session")
def engine_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engine-cache")


@pytest.fixture(scope="session")
def det_int8_engine(cpu_profile: DeviceProfile, engine_cache: Path) -> BuildOutcome:
    """shapes-det, INT8, CPU profile: built once, shared read-only by the pipeline tests."""
    return build_engine(
        DET_BUNDLE,
        cpu_profile,
        precision="int8",
        calib_dir=DET_CALIB,
        cache_dir=engine_cache,
        gate_seconds=0.5,
    )


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if mosquitto_binary() is None:
        pytest.skip("mosquitto binary not installed (scripts/test.sh adds it)")
    with Broker(tmp_path / "broker") as b:
        yield b


def _copier(source_dir: Path, tmp_path: Path) -> CopyRoot:
    def copy(name: str) -> Path:
        root = tmp_path / name
        shutil.copytree(source_dir / name, root, symlinks=True)
        return root

    return copy


@pytest.fixture
def board_root(tmp_path: Path) -> CopyRoot:
    """``board_root("orin-nano-4gb")``: a writable copy of tests/fixtures/boards/<name>."""
    return _copier(BOARDS, tmp_path)


@pytest.fixture
def sysfs_root(tmp_path: Path) -> CopyRoot:
    """``sysfs_root("x86-host")``: a writable copy of tests/fixtures/sysfs/<name>."""
    return _copier(SYSFS, tmp_path)
