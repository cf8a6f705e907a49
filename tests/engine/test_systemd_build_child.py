"""The engine-build child is the OOM killer's first choice and lives in its own process group,
so that the kernel (and the unit's OOMPolicy=continue) kill a runaway build, not the agent."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from agent.engine.isolate.launch import run_isolated
from agent.engine.isolate.limits import BUILD_OOM_SCORE_ADJ


def _identify(progress: Any, marker: str, hold_s: float) -> dict[str, int]:
    Path(marker).write_text(str(os.getpid()))
    time.sleep(hold_s)  # long enough for the parent to look at us from outside
    with open("/proc/self/oom_score_adj", encoding="ascii") as handle:
        oom = int(handle.read())
    return {"pid": os.getpid(), "pgid": os.getpgid(0), "sid": os.getsid(0), "oom": oom}


def test_build_child_has_its_own_group_and_a_high_oom_score(tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    outcome: dict[str, Any] = {}

    def build() -> None:
        outcome["value"] = run_isolated(
            _identify, (str(marker), 3.0), memory_cap_mib=2048, timeout_s=60, what="probe"
        ).value

    thread = threading.Thread(target=build)
    thread.start()
    deadline = time.monotonic() + 30
    while not marker.exists() or not marker.read_text():
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.02)
    pid = int(marker.read_text())
    # Seen from the parent while the build runs
    seen_oom = int(Path(f"/proc/{pid}/oom_score_adj").read_text())
    seen_pgid = os.getpgid(pid)
    thread.join(60)
    assert not thread.is_alive()

    assert seen_oom == BUILD_OOM_SCORE_ADJ == 500
    assert seen_pgid == pid != os.getpgid(0)
    child = outcome["value"]
    assert child["pid"] == pid
    assert child["pgid"] == child["sid"] == pid  # setsid: its own session and group
    assert child["oom"] == BUILD_OOM_SCORE_ADJ
    # The agent itself keeps its own score
    assert int(Path("/proc/self/oom_score_adj").read_text()) < BUILD_OOM_SCORE_ADJ
