"""Run the real CLI (``python -m agent``) as a subprocess, bounded in time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.assets import REPO


def run_cli(*args: str, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m agent ARGS`` in ``cwd`` with the repo importable and no user cache dir."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("XDG_CACHE_HOME", None)
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
