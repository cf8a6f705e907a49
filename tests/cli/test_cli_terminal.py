"""The CLI on a real terminal and off it (issue #18 item 1), as real processes on a real pty.

* ``run`` on a terminal: a text stats line per interval, shown even at ``--log-level warning``;
  Ctrl-C (``\\x03`` through the pty's line discipline) drains, prints a summary, exits 0.
* ``run`` off a terminal: JSON lines, the stats record trimmed; ``--log-format`` wins both ways.
* ``build`` on a terminal: tqdm bars and log records never share a row.
* ``build --json`` piped: exactly one JSON document on stdout (``| python -m json.tool``), the
  progress events on stderr, with stderr a pipe or a terminal.
* a user error on a terminal: its fix on a line of its own.

The ``run`` tests serve the bundled detector from the session's engine cache (``conftest``).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.engine.build.outcome import BuildOutcome
from tests.assets import CLS_BUNDLE, CLS_CALIB, DET_BUNDLE, DET_CALIB, SAMPLE_VIDEO
from tests.helpers.pty_session import PtySession, cli_env

#: a text log record: local time with milliseconds, level, component
TEXT_RECORD = re.compile(r"\d\d:\d\d:\d\d\.\d{3} (?:\x1b\[[\d;]*m)?(DEBUG|INFO |WARN |ERROR)")
#: a tqdm bar of :class:`agent.cli.progress.ProgressPrinter`: percentage then ``stage:``
BAR = re.compile(r"\s\d{1,3}% [a-z][a-z0-9-]*: ")
STATS_ROW = re.compile(r"INFO  stats    shapes-det int8 ×\d+: sample \d+\.\d fps, \d+ dropped")


@pytest.fixture
def det_config(tmp_path: Path, det_int8_engine: BuildOutcome, engine_cache: Path) -> list[str]:
    """``run`` arguments: the bundled detector at int8 (built once per session, so the run
    finds it in the cache) on the bundled sample video, paced at 15 fps (10 s long)."""
    assert det_int8_engine.artifact.precision == "int8"
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"""device_id: term-test
fleet: test
profile: cpu
state_dir: {tmp_path / "state"}
models:
  - {{name: shapes-det, bundle: {DET_BUNDLE}, precision: int8, calib_dir: {DET_CALIB}}}
sources:
  - {{name: sample, type: file, uri: {SAMPLE_VIDEO}, model: shapes-det, fps_cap: 15}}
mqtt: {{enabled: false}}
logging: {{level: info}}
"""
    )
    return ["run", "--config", str(config), "--cache-dir", str(engine_cache), "--no-monitor"]


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_run_on_a_terminal_prints_text_stats_and_a_summary_on_ctrl_c(
    tmp_path: Path, det_config: list[str]
) -> None:
    args = [*det_config, "--stats-interval", "0.5", "--log-level", "warning"]
    session = PtySession(args, env=cli_env(tmp_path, NO_COLOR="1"), cwd=tmp_path)
    try:
        assert session.wait_for(STATS_ROW.pattern, 90), session.text[-3000:]
        session.send(b"\x03")  # Ctrl-C: SIGINT to the foreground process group
    finally:
        code = session.finish(60)
    rows = session.rows()
    assert code == 0, session.text[-3000:]
    assert not [r for r in rows if r.lstrip().startswith("{")], "no JSON on a terminal"
    assert "\x1b[" not in session.text, "NO_COLOR: no escape sequences"
    # --log-level warning: the info records are gone, the stats lines and the summary stay
    assert not [r for r in rows if "source sample:" in r or " ready" in r]
    assert [r for r in rows if STATS_ROW.search(r)]
    summary = [r for r in rows if "stopped (SIGINT) after" in r]
    assert len(summary) == 1, rows[-10:]
    found = re.search(
        r"stopped \(SIGINT\) after [\d.]+ s: (\d+) frames, [\d.]+ fps, 0 dropped, "
        r"latency p50/p99 [\d.]+/[\d.]+ ms",
        summary[0],
    )
    assert found and int(found.group(1)) > 0, summary[0]


def _run_piped(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_run_off_a_terminal_logs_trimmed_json(tmp_path: Path, det_config: list[str]) -> None:
    proc = _run_piped([*det_config, "--duration", "1.5", "--stats-interval", "0.5"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = _json_lines(proc.stdout)  # every line is JSON
    stats = [r for r in records if r.get("event") == "stats"]
    assert stats
    line = json.dumps(stats[0])
    assert len(line) < 700, line  # trimmed: the full figures go to MQTT/Prometheus
    sample = stats[0]["stats"]["sources"]["sample"]
    assert set(sample) == {"state", "fps", "results", "dropped", "errors"}
    assert set(stats[0]["stats"]["latency_ms"]) <= {"infer", "total"}
    stop = [r for r in records if r.get("event") == "stop"]
    assert len(stop) == 1 and stop[0]["reason"] == "duration"
    assert stop[0]["frames"] > 0 and stop[0]["uptime_s"] > 0 and "latency_ms" in stop[0]


def test_log_format_overrides_the_terminal_choice(tmp_path: Path, det_config: list[str]) -> None:
    short = [*det_config, "--duration", "0.5"]
    session = PtySession(["--log-format", "json", *short], env=cli_env(tmp_path), cwd=tmp_path)
    assert session.finish(90) == 0, session.text[-3000:]
    records = [r for r in session.rows() if not BAR.search(r)]  # the cache lookup's bars
    assert records and all(json.loads(r)["level"] for r in records), records[:5]

    proc = _run_piped(["--log-format", "text", *short], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines and all(TEXT_RECORD.match(line) for line in lines), lines[:5]
    assert "\x1b[" not in proc.stdout, "no colours off a terminal"
    assert any("stopped (duration) after" in line for line in lines)


@pytest.fixture(scope="module")
def cls_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cls-cache")


def _build_args(cache: Path) -> list[str]:
    return [
        "build", str(CLS_BUNDLE), "--profile", "cpu", "--precision", "int8",
        "--calib", str(CLS_CALIB), "--gate-seconds", "0.3", "--cache-dir", str(cache),
    ]  # fmt: skip


def test_build_bars_and_log_lines_never_share_a_row(tmp_path: Path, cls_cache: Path) -> None:
    args = ["--log-level", "debug", *_build_args(cls_cache), "--force"]
    session = PtySession(args, env=cli_env(tmp_path), cwd=tmp_path)
    code = session.finish(240)
    rows = session.rows()
    assert code == 0, session.text[-3000:]
    bars = [i for i, r in enumerate(rows) if BAR.search(r)]
    logs = [i for i, r in enumerate(rows) if TEXT_RECORD.search(r)]
    assert bars and logs, rows[:20]
    both = [rows[i] for i in set(bars) & set(logs)]
    assert not both, both[:3]
    # some record was written while a bar was shown: the bar was cleared and drawn again
    assert any(bars[0] < i < bars[-1] for i in logs)
    assert any(r.startswith("artifact:") for r in rows)  # the summary follows on stdout


def test_build_json_is_one_document_on_stdout(tmp_path: Path, cls_cache: Path) -> None:
    py = shlex.quote(sys.executable)
    cmd = " ".join(shlex.quote(a) for a in _build_args(cls_cache))
    piped = subprocess.run(
        ["bash", "-o", "pipefail", "-c", f"{py} -m agent {cmd} --json | {py} -m json.tool"],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    assert piped.returncode == 0, piped.stderr[-3000:]
    doc = json.loads(piped.stdout)
    assert doc["precision"] == "int8" and doc["profile"] == "cpu"
    events = _json_lines(piped.stderr)  # progress goes to stderr, as JSON lines
    assert events and all(e["event"] == "progress" for e in events)

    # stderr on a terminal (bars there), stdout a pipe: still one document
    session = PtySession(
        [*_build_args(cls_cache), "--json"], env=cli_env(tmp_path), cwd=tmp_path, pipe_stdout=True
    )
    assert session.finish(240) == 0, session.text[-3000:]
    assert json.loads(session.stdout)["artifact"] == doc["artifact"]


def test_a_user_error_shows_its_fix_on_a_line_of_its_own(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-bundle"
    args = ["build", str(missing), "--profile", "cpu", "--cache-dir", str(tmp_path / "cache")]
    session = PtySession(args, env=cli_env(tmp_path), cwd=tmp_path)
    assert session.finish(120) == 2, session.text[-3000:]
    rows = session.rows()
    error = [i for i, r in enumerate(rows) if r.startswith("edge-agent: \x1b[31;1merror:")]
    assert error and str(missing) in rows[error[0]], rows[-5:]
    assert "(fix:" not in rows[error[0]]
    assert rows[error[0] + 1].startswith("  \x1b[32;1mfix:\x1b[0m ")

    piped = _run_piped(args, tmp_path)
    assert piped.returncode == 2
    assert f"edge-agent: error: {missing}" in piped.stderr and "(fix: " in piped.stderr
    assert not piped.stdout, "progress never goes to stdout"
