"""``promtool check metrics`` (Debian package ``prometheus``) on an exposition text: the test
skips, saying why, where promtool is not installed."""

from __future__ import annotations

import shutil
import subprocess

import pytest

PROMTOOL = "/usr/bin/promtool"


def check_metrics(text: str) -> None:
    """Assert promtool finds no problem (parse errors and lint) in ``text``."""
    promtool = shutil.which("promtool") or (PROMTOOL if shutil.which(PROMTOOL) else None)
    if promtool is None:
        pytest.skip(f"{PROMTOOL} absent (Debian package `prometheus`): cannot lint the output")
    proc = subprocess.run(
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    problems = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and not problems, f"promtool check metrics: {problems}"
