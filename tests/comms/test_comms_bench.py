"""scripts/bench_mqtt.py runs end to end (a short run; the real figures come from --seconds 60)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.assets import REPO
from tests.helpers.broker import mosquitto_binary


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto binary not installed")
def test_bench_script_short_run(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_mqtt.py"), "--seconds", "2",
         "--rate", "500", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS" in proc.stdout
    result = json.loads(out.read_text())
    assert result["messages"] == 1000 and result["missing"] == 0
    assert result["received_unique"] == 1000 and result["agent_cpu_s"] > 0
    assert result["drain_tail_s"] <= 1.04 and result["delivered_rate"] > 0
