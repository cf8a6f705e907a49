"""Smoke test of ``scripts/bench_fuzz.py`` (issue #14): a tiny seeded run against the real daemon
and Mosquitto, so that the fuzz benchmark cannot rot. The full run is a script, not a CI test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.assets import REPO, SCRIPTS
from tests.helpers.broker import mosquitto_binary

pytestmark = [
    pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto binary not installed"),
    pytest.mark.timeout(180),
]


def test_bench_fuzz_reports_tried_held_crashed(tmp_path: Path) -> None:
    out = tmp_path / "fuzz.json"
    command = [sys.executable, str(SCRIPTS / "bench_fuzz.py"), "--count", "4", "--batch", "2"]
    command += ["--no-final-push", "--out", str(out)]
    res = subprocess.run(
        command, check=False, cwd=REPO, capture_output=True, text=True, timeout=170
    )
    assert out.is_file(), res.stdout + res.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["kinds"]) == {"command", "ota"}
    for tally in report["kinds"].values():
        assert tally["tried"] == 4
        assert tally["held"] + tally["crashed"] == 4
    assert "| kind | tried | held | crashed |" in res.stdout
    assert report["alive_at_end"], res.stdout
    assert res.returncode == (0 if sum(t["crashed"] for t in report["kinds"].values()) == 0 else 1)
