"""Leftover scratch directories in the engine cache: a SIGKILLed build's ``.tmp-build-*`` is swept
when the daemon starts and when an :class:`EngineCache` opens; a live build's never is. Real
processes hold (and, killed, drop) the claims."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.app.engines import EnginePreparer
from agent.app.events import EventBus
from agent.engine.cache import CacheKey, EngineCache, tmp_dirs
from agent.engine.tmpdirs import OWNER_FILE, UNCLAIMED_GRACE_S, claim_dir
from tests.assets import CLS_BUNDLE, CLS_CALIB, REPO
from tests.helpers.ota_e2e_util import cli_env, wait_until

_HOLDER = """
import sys, time
from pathlib import Path
from agent.engine.tmpdirs import claim_dir
d = Path(sys.argv[1]); d.mkdir()
(d / "partial.onnx").write_bytes(b"x" * 1024)
claim = claim_dir(d)
print("claimed" if claim.held else "unclaimed", flush=True)
time.sleep(600)
"""


def _holder(directory: Path) -> subprocess.Popen[str]:
    """A process that creates ``directory``, claims it, and works there until killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(directory)],
        cwd=REPO,
        env=cli_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "claimed"
    return proc


def _age(path: Path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def _key() -> CacheKey:
    return CacheKey("0" * 64, "", "fp32", {}, 256, "onnxruntime", "1")


def test_sigkilled_owner_is_swept_live_owner_is_kept(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    root.mkdir()
    dead_dir, live_dir = root / ".tmp-build-dead-1234", root / ".tmp-build-live-5678"
    dead, live = _holder(dead_dir), _holder(live_dir)
    try:
        dead.send_signal(signal.SIGKILL)
        dead.wait(10)
        _age(live_dir, 10 * UNCLAIMED_GRACE_S)  # age alone never condemns a claimed directory
        assert EngineCache(root).lookup(_key()) is None  # the first use sweeps
        assert not dead_dir.exists(), "the killed build's directory is swept at once"
        assert live_dir.is_dir() and (live_dir / "partial.onnx").is_file()
        assert (live_dir / OWNER_FILE).is_file()
        assert EngineCache(root).sweep() == []
    finally:
        live.kill()
        live.wait(10)
    assert EngineCache(root).sweep() == [live_dir]
    assert tmp_dirs(root) == []


def test_unclaimed_directories_wait_out_the_grace_period(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    fresh, stale = root / ".tmp-quantize-fresh", root / ".tmp-quantize-stale"
    for d in (fresh, stale):
        d.mkdir(parents=True)
    _age(stale, UNCLAIMED_GRACE_S + 60)
    entry = root / "shapes-cls-fp32-abc"  # a committed entry is never touched
    entry.mkdir()
    _age(entry, 10 * UNCLAIMED_GRACE_S)
    assert EngineCache(root).sweep() == [stale]
    assert fresh.is_dir() and entry.is_dir()


def test_claim_in_this_process_keeps_its_directory(tmp_path: Path) -> None:
    work = tmp_path / ".tmp-build-mine"
    work.mkdir()
    with claim_dir(work) as claim:
        assert claim.held
        assert EngineCache(tmp_path).sweep() == []  # another open file description: still held
    assert EngineCache(tmp_path).sweep() == [work]


@pytest.mark.timeout(120)
def test_daemon_start_sweeps_what_a_sigkilled_build_left(tmp_path: Path) -> None:
    """A real ``edge-agent build`` SIGKILLed mid-build leaves its claimed ``.tmp-build-*``;
    the daemon's engine preparation at start removes it (and a live one survives it)."""
    cache = tmp_path / "cache"
    build = subprocess.Popen(
        [sys.executable, "-m", "agent", "build", str(CLS_BUNDLE), "--profile", "cpu",
         "--calib", str(CLS_CALIB), "--cache-dir", str(cache)],
        cwd=REPO, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        work = wait_until(
            lambda: [p for p in tmp_dirs(cache) if (p / OWNER_FILE).is_file()], 60, "a claim"
        )
    finally:
        os.killpg(build.pid, signal.SIGKILL)
        build.wait(10)
    assert [p.name.startswith(".tmp-build-") for p in work] == [True]
    live_dir = cache / ".tmp-build-other-live"
    live = _holder(live_dir)
    try:
        preparer = EnginePreparer(EventBus(), lambda cfg: cache)
        cfg = SimpleNamespace(models=[])
        assert preparer.prepare(cfg, None, None, []) == {}  # type: ignore[arg-type]
        assert not work[0].exists()
        assert tmp_dirs(cache) == [live_dir]
    finally:
        live.kill()
        live.wait(10)
