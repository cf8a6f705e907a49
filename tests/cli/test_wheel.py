"""The default engine cache and the wheel, end to end with the real CLI.

* ``edge-agent build`` with no ``--cache-dir`` fills the default cache and ``edge-agent run`` on
  the embedded default then serves that very engine (a cache hit, same artifact directory).
* The wheel built from the checkout carries what the embedded default needs (calibration frames,
  models, sample video, config, the LICENSE, the dashboard's static files) and, installed in a
  fresh venv outside the checkout, ``edge-agent run`` runs the embedded default from anywhere.

No network: the wheel is built with the dev venv's setuptools (``--no-build-isolation``,
``--no-index``) and installed with ``--no-deps --no-index``; the fresh venv sees the dev venv's
dependencies through a ``.pth`` line. The engine is built once by the first fixture (from the
session's INT8 entry: fp32 and the gate only) and copied into the wheel test's cache, so the
installed run is a cache hit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.config.cachedir import CACHE_ENV
from agent.engine.build.outcome import BuildOutcome
from tests.assets import DET_BUNDLE, DET_CALIB, REPO

pytestmark = pytest.mark.slow

#: what ``pip wheel`` needs from the checkout: pyproject's packages, package-data, readme,
#: license-files and data-files (device_profiles)
WHEEL_SOURCES = ("agent", "pyproject.toml", "README.md", "LICENSE", "device_profiles")
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")


def _env(root: Path, **extra: str) -> dict[str, str]:
    """A private HOME and XDG cache under ``root``; no other cache setting leaks in."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in (CACHE_ENV, "CACHE_DIRECTORY", "XDG_CACHE_HOME", "PYTHONPATH", "HOME")
    }
    env.update(HOME=str(root / "home"), XDG_CACHE_HOME=str(root / "xdg"))
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 240) -> str:
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=timeout
    )
    assert proc.returncode == 0, f"{cmd[:3]} exit {proc.returncode}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _records(stdout: str) -> list[dict[str, Any]]:
    """The JSON log lines of ``edge-agent run`` (stdout is not a terminal)."""
    out: list[dict[str, Any]] = []
    for line in stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if isinstance(record, dict):
                out.append(record)  # pyright: ignore[reportUnknownArgumentType]
    return out


def _engine_ready(stdout: str) -> dict[str, Any]:
    ready = [r for r in _records(stdout) if r.get("event") == "engine"]
    assert len(ready) == 1, stdout[-3000:]
    return ready[0]


def _entries(cache: Path) -> set[str]:
    return {p.name for p in cache.iterdir() if p.name.startswith("shapes-det-")}


@dataclass(frozen=True)
class BuiltDefault:
    root: Path  # HOME and XDG_CACHE_HOME of the build
    cache: Path  # the default cache it resolved to: <root>/xdg/edge-agent


@pytest.fixture(scope="module")
def built_default(
    tmp_path_factory: pytest.TempPathFactory, det_int8_engine: BuildOutcome, engine_cache: Path
) -> BuiltDefault:
    """``edge-agent build`` of the embedded default's model (auto precision, the default's
    calibration frames) with no ``--cache-dir``, run from a directory outside the checkout.

    The default cache starts as a copy of the session's engine cache (tests/conftest.py): its
    INT8 entry has the same key, so the build only adds fp32 and gates both (no calibration)."""
    root = tmp_path_factory.mktemp("built-default")
    cache = root / "xdg" / "edge-agent"
    assert det_int8_engine.artifact.dir.parent == engine_cache
    shutil.copytree(engine_cache, cache)
    env = _env(root, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "agent", "build", str(DET_BUNDLE), "--profile", "cpu"]
    cmd += ["--precision", "auto", "--calib", str(DET_CALIB), "--gate-seconds", "0.3"]
    _run(cmd, root, env, timeout=280)
    assert {e.split("-")[2] for e in _entries(cache)} == {"int8", "fp32"}, _entries(cache)
    return BuiltDefault(root, cache)


def test_build_then_run_share_the_default_cache(built_default: BuiltDefault) -> None:
    before = _entries(built_default.cache)
    env = _env(built_default.root, PYTHONPATH=str(REPO))
    stdout = _run(
        [sys.executable, "-m", "agent", "run", "--duration", "1"], built_default.root, env
    )
    ready = _engine_ready(stdout)
    assert ready["cache_hit"] is True, ready
    assert Path(ready["artifact"]).parent == built_default.cache
    assert Path(ready["artifact"]).name in before
    assert _entries(built_default.cache) == before  # nothing was built again


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built offline from a copy of the checkout's sources (a build in place would
    write build/ into the checkout and could pick up stale files from an earlier build)."""
    src = tmp_path_factory.mktemp("wheel-src")
    for name in WHEEL_SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=_IGNORED)
        else:
            shutil.copy2(path, src / name)
    out = tmp_path_factory.mktemp("wheel-out")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    _run([*cmd, "--no-index", "-q", "-w", str(out), str(src)], src, _env(src))
    (built,) = out.glob("edge_agent-*.whl")
    return built


def test_wheel_carries_what_the_default_needs(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = zf.read(meta).decode()
        (lic,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        license_text = zf.read(lic).decode()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "License-Expression: Apache-2.0" in metadata and "License-File: LICENSE" in metadata
    assert "Description-Content-Type: text/markdown" in metadata
    assert "\n# Edge Agent\n" in metadata  # README.md is the long description
    for model in ("shapes-det", "shapes-cls"):
        frames = {n for n in names if n.startswith(f"agent/data/calib/{model}/")}
        assert frames == {
            f"agent/data/calib/{model}/{p.name}"
            for p in (REPO / "agent/data/calib" / model).iterdir()
        }
        assert len(frames) >= 64
        assert f"agent/data/models/{model}/model.onnx" in names
    expected = {
        "agent/data/calib/README.md",
        "agent/data/agent.default.yaml",
        "agent/data/README.md",
        "agent/data/samples/shapes.mp4",
        "agent/fleet/web/static/index.html",
        "agent/py.typed",
    }
    expected |= {
        f"agent/fleet/web/static/{p.name}" for p in (REPO / "agent/fleet/web/static").iterdir()
    }
    assert expected <= names, expected - names
    profiles = {
        n.rsplit("/", 1)[1] for n in names if "/data/share/edge-agent/device_profiles/" in n
    }
    assert profiles == {p.name for p in (REPO / "device_profiles").glob("*.yaml")}


def _fresh_venv(root: Path, wheel: Path) -> Path:
    """A venv outside the checkout with the wheel installed (no network); the dev venv's
    third-party packages are visible through a ``.pth`` line, not its editable ``agent``."""
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], root, _env(root))
    python = venv / "bin" / "python"
    purelib = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        root,
        _env(root),
    ).strip()
    Path(purelib, "dev-venv-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q"]
    _run([*pip, "--no-deps", "--no-index", str(wheel)], root, _env(root))
    return venv


def test_installed_wheel_runs_the_embedded_default_from_anywhere(
    wheel: Path, built_default: BuiltDefault, tmp_path: Path
) -> None:
    venv = _fresh_venv(tmp_path, wheel)
    shutil.copytree(built_default.cache, tmp_path / "xdg" / "edge-agent")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = _env(tmp_path)
    where = _run(
        [str(venv / "bin/python"), "-c", "import agent; print(agent.__file__)"], elsewhere, env
    )
    assert Path(where.strip()).is_relative_to(venv), where
    assert not Path(where.strip()).is_relative_to(REPO)
    stdout = _run([str(venv / "bin/edge-agent"), "run", "--duration", "1"], elsewhere, env)
    ready = _engine_ready(stdout)
    assert ready["cache_hit"] is True, ready
    assert Path(ready["artifact"]).parent == tmp_path / "xdg" / "edge-agent"
    assert not (elsewhere / ".cache").exists() and not (elsewhere / "calib").exists()
