"""``edge-agent monitor --attach`` (issue #18 item 6) against a real daemon and real endpoints.

* A real ``edge-agent run`` (the embedded default config with its Prometheus endpoint on a free
  loopback port, the bundled detector from the session's engine cache, the sample video looped,
  the CPU profile with a 1 s telemetry interval): ``--once --json`` shows the governor state and
  fps the daemon itself exports; on a real pty the table is redrawn in place (cursor up by the
  previous frame's height, no screen clear) and Ctrl-C exits 0; off a terminal one plain line
  per scrape.
* The board figures a CPU host lacks (power, temperature, throttling, OTA): the agent's own
  exporter serving the ``metrics/2`` body of a monitor reading of a Jetson sysfs fixture.
* The daemon not running, metrics off, an oversized answer, a peer that never answers.
"""

from __future__ import annotations

import io
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from agent.app.metrics import metrics_body, ota_figures
from agent.app.monitor_component import MonitorComponent
from agent.cli import main as cli
from agent.cli.monitor_attach_view import STATE_COLOURS
from agent.comms.prometheus import PrometheusExporter
from agent.comms.prometheus.scrape import parse_figures
from agent.config.agent import PrometheusConfig
from agent.config.profiles.store import ProfileStore
from agent.engine.build.outcome import BuildOutcome
from agent.monitor.energy import EnergyMeter
from agent.monitor.governor.machine import Governor
from agent.monitor.governor.states import GovernorState
from agent.monitor.sampler import Sampler
from agent.monitor.select import open_source
from agent.pipeline.stats import PipelineStats, SourceFigures, StageLatency
from tests.assets import DATA, DEFAULT_CONFIG, PROFILES_DIR, SYSFS
from tests.helpers.broker import free_port
from tests.helpers.pty_session import PtySession, cli_env

pytestmark = pytest.mark.timeout(240)

NANO_SYSFS = SYSFS / "orin-nano"
CURSOR_UP = re.compile(r"\x1b\[(\d+)A")


def _poll(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout} s")


def _scrape_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def _exported_governor_state(text: str) -> str | None:
    """The daemon's governor state read with prometheus_client alone (not the code tested)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "edge_agent_governor_state" and sample.value == 1.0:
                return sample.labels["state"]
    return None


# --------------------------------------------------------------------------- the real daemon


def _daemon_config(tmp: Path, port: int) -> Path:
    """The embedded default (agent/data/agent.default.yaml) with its paths made absolute, the
    session's int8 engine, the sample looped and the Prometheus endpoint on ``port``."""
    cfg = yaml.safe_load(DEFAULT_CONFIG.read_text())
    for model in cfg["models"]:
        model.update(bundle=str(DATA / model["bundle"]), calib_dir=str(DATA / model["calib_dir"]))
        model["precision"] = "int8"
    for source in cfg["sources"]:
        source.update(uri=str(DATA / source["uri"]), loop=True)
    cfg.update(state_dir=str(tmp / "state"))
    cfg["metrics"] = {"enabled": True, "host": "127.0.0.1", "port": port}
    path = tmp / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _fast_profiles(tmp: Path) -> Path:
    """The bundled profiles with the CPU one reporting every second (not every 10 s)."""
    out = tmp / "profiles"
    out.mkdir()
    cpu = yaml.safe_load((PROFILES_DIR / "cpu.yaml").read_text())
    cpu["telemetry"]["interval_s"] = 1
    (out / "cpu.yaml").write_text(yaml.safe_dump(cpu))
    return out


class Daemon:
    def __init__(self, config: Path, url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.config, self.url, self.proc, self.log = config, url, proc, log

    def reported(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited: {self.log.read_text()[-3000:]}")
        try:
            return "edge_agent_governor_state" in _scrape_text(self.url)
        except (urllib.error.URLError, OSError):
            return False


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory, det_int8_engine: BuildOutcome, engine_cache: Path
) -> Iterator[Daemon]:
    assert det_int8_engine.artifact.precision == "int8"  # the run finds it in the cache
    tmp = tmp_path_factory.mktemp("attach")
    port = free_port()
    config = _daemon_config(tmp, port)
    command = [sys.executable, "-m", "agent", "run", "--config", str(config)]
    command += ["--profiles-dir", str(_fast_profiles(tmp)), "--cache-dir", str(engine_cache)]
    log = tmp / "daemon.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            command, cwd=tmp, env=cli_env(tmp), stdout=sink, stderr=subprocess.STDOUT
        )
    agent = Daemon(config, f"http://127.0.0.1:{port}/metrics", proc, log)
    try:
        _poll(agent.reported, 120, "metrics report from the daemon")
        yield agent
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_once_json_shows_the_daemons_governor_state_and_fps(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["monitor", "--attach", "--config", str(daemon.config), "--once", "--json"]
    assert cli.main(argv) == 0
    doc = json.loads(capsys.readouterr().out)  # exactly one JSON document
    assert doc["url"] == daemon.url and doc["reachable"] and doc["reported"]
    figures = doc["figures"]
    assert figures["governor_state"] in {s.value for s in GovernorState}
    assert figures["governor_state"] == _exported_governor_state(_scrape_text(daemon.url))
    assert figures["governor_workers"] >= 1
    [source] = figures["sources"]
    assert source["name"] == "sample" and source["state"] == "streaming"
    assert source["fps"] > 0 and source["frames"] > 0 and source["drops"] >= 0
    assert 0 < source["latency_p50_s"] <= source["latency_p99_s"]
    assert {s["name"] for s in figures["stages"]} >= {"infer"}
    [model] = figures["models"]
    assert model["name"] == "shapes-det" and model["precision"] == "int8"
    assert 0 < figures["memory_used_ratio"] < 1


def _frames(text: str) -> list[tuple[int, int]]:
    """(rows drawn, rows the next cursor-up climbs) for each redraw of the terminal text."""
    chunks = CURSOR_UP.split(text)  # text, N, text, N, ... text
    return [(chunks[i].count("\n"), int(chunks[i + 1])) for i in range(0, len(chunks) - 2, 2)]


def test_on_a_terminal_the_table_is_redrawn_in_place_and_ctrl_c_exits_0(
    tmp_path: Path, daemon: Daemon
) -> None:
    args = ["monitor", "--attach", daemon.url, "--interval", "0.3"]
    session = PtySession(args, env=cli_env(tmp_path), cwd=tmp_path)
    try:
        assert session.wait_for(r"(?s)(\x1b\[\d+A.*){3}", 60), session.text[-3000:]
        session.send(b"\x03")  # Ctrl-C: SIGINT to the foreground process group
    finally:
        code = session.finish(30)
    text = session.text
    assert code == 0, (code, text[-3000:])
    assert "\x1b[2J" not in text and "\x1b[H" not in text, "no screen clear"
    assert "Traceback" not in text and "interrupted" not in text
    frames = _frames(text)
    assert len(frames) >= 3
    # each redraw climbs exactly the rows the previous frame drew, then rewrites them
    assert all(drawn == climbed for drawn, climbed in frames), frames
    # every row ends by erasing the rest of the old one (the pty turns \n into \r\n)
    assert len(re.findall(r"\x1b\[K\r?\n", text)) >= sum(drawn for drawn, _ in frames)
    state = _exported_governor_state(_scrape_text(daemon.url))
    assert state is not None
    assert f"governor  \x1b[{STATE_COLOURS[state]}m{state}\x1b[0m" in text
    assert re.search(r"source sample\s+streaming\s+\d+\.\d", text), text[-2000:]


class FakeTty(io.StringIO):
    """An in-memory terminal for the in-process CLI (``isatty`` true)."""

    def isatty(self) -> bool:
        return True


def test_no_color_keeps_the_redraw_and_drops_the_colours(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    screen = FakeTty()
    monkeypatch.setattr(sys, "stdout", screen)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("TERM", "xterm")
    argv = ["monitor", "--attach", daemon.url, "--interval", "0.2", "--count", "2"]
    assert cli.main(argv) == 0
    text = screen.getvalue()
    assert len(CURSOR_UP.findall(text)) == 1 and "\x1b[K" in text
    assert not re.search(r"\x1b\[[\d;]*m", text), "NO_COLOR: no SGR colour sequences"
    assert "governor  " in text


def test_off_a_terminal_one_plain_line_per_scrape(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["monitor", "--attach", daemon.url, "--interval", "0.2", "--count", "3"]
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert "\x1b" not in "".join(lines)
    for line in lines:
        assert re.match(
            r"\d\d:\d\d:\d\d governor \w+; sample streaming \d+\.\d fps \d+ drops "
            r"p50/p99 [\d.]+/[\d.]+ ms; power \?; hottest .*; memory \d+%; ota none$",
            line,
        ), line


# --------------------------------------------------------------------------- board figures


def _stats() -> PipelineStats:
    lat = {"infer": StageLatency(4.0, 6.0), "total": StageLatency(9.0, 15.0)}
    cam = SourceFigures("streaming", 12.5, 40, 0, 2, 1, 0, 0)
    return PipelineStats(
        model="det", precision="int8", fps_cap=None, shedding=False, engine="e1", workers=2,
        mean_batch=1.0, nan_outputs=0, swaps=0, worker_restarts=0, sources={"cam": cam},
        latency_ms=lat, sink_errors=0,
    )  # fmt: skip


@pytest.fixture
def jetson_endpoint() -> Iterator[tuple[str, dict[str, Any]]]:
    """The agent's exporter serving the body the daemon would build on an Orin Nano (its sysfs
    fixture read by the real monitor source, the real governor) with an OTA update active."""
    profile = ProfileStore(PROFILES_DIR).load("orin-nano-8gb")
    source = open_source(profile, root=NANO_SYSFS, prefer="sysfs")
    sampler = Sampler(source, 1.0, on_sample=lambda _s: None)
    sampler.read_once()
    governor = Governor(profile, max_fps=30.0)
    monitor = MonitorComponent(
        profile, source=source, governor=governor, energy=EnergyMeter(),
        pipelines=list, on_event=lambda _k, _d: None,
    )  # fmt: skip
    monitor.last_sample = sample = sampler.read_once()
    governor.update(sample)
    info = {"name": "det", "version": 3, "precision": "int8", "engine_hash": "ab" * 32}
    body = metrics_body(75.0, {"det": _stats()}, {"det": info}, monitor)
    body["ota"] = ota_figures({"state": "probation", "op": "update", "model": "det", "version": 3})
    exporter = PrometheusExporter(PrometheusConfig(enabled=True, port=free_port()), device="d")
    exporter.start()
    try:
        exporter.update(body)
        yield f"http://127.0.0.1:{exporter.port}/metrics", body
    finally:
        exporter.close()
        source.close()


def test_board_figures_round_trip_through_the_exporter(
    jetson_endpoint: tuple[str, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, body = jetson_endpoint
    figures = parse_figures(_scrape_text(url))
    assert figures.governor_state == body["governor"]["state"] == "normal"
    assert figures.power_w == pytest.approx(body["power_watts"])
    assert figures.power_rail_w == pytest.approx(body["power_rail_watts"])
    assert figures.temperature_c == pytest.approx(body["temperature_celsius"])
    zone = max(body["temperature_celsius"], key=body["temperature_celsius"].get)
    assert figures.hottest() == (zone, pytest.approx(body["temperature_celsius"][zone]))
    assert figures.memory_used_bytes == body["memory"]["used_bytes"]
    assert figures.throttled == body["throttled"]
    assert figures.ota_state == "probation"
    assert figures.uptime_s == 75.0
    [stage] = [s for s in figures.stages if s.name == "infer"]
    assert (stage.p50_s, stage.p99_s) == pytest.approx((0.004, 0.006))
    [cam] = figures.sources
    assert (cam.fps, cam.drops, cam.frames) == (12.5, 3, 40)
    assert (cam.latency_p50_s, cam.latency_p99_s) == pytest.approx((0.009, 0.015))

    assert cli.main(["monitor", "--attach", url, "--once"]) == 0
    line = capsys.readouterr().out
    hot = body["temperature_celsius"][zone]
    assert f"power {body['power_watts']:.2f} W; hottest {hot:.1f} °C ({zone})" in line
    assert "cam streaming 12.5 fps 3 drops p50/p99 9.0/15.0 ms" in line
    assert line.rstrip().endswith("ota probation")


# --------------------------------------------------------------------------- failures


def test_not_running_names_the_url_and_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()  # nothing listens there
    config = _daemon_config(tmp_path, port)
    assert cli.main(["monitor", "--attach", "--config", str(config), "--once"]) == 1
    err = capsys.readouterr().err
    assert f"cannot reach http://127.0.0.1:{port}/metrics" in err
    assert "is the daemon running?" in err and f"edge-agent run --config {config}" in err
    assert "metrics.enabled: true" in err


def test_metrics_off_in_the_config_says_which_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "off.yaml"
    doc = yaml.safe_load(DEFAULT_CONFIG.read_text())
    doc["metrics"] = {"enabled": False, "port": 9300}
    config.write_text(yaml.safe_dump(doc))
    assert cli.main(["monitor", "--attach", "--config", str(config), "--once"]) == 1
    err = capsys.readouterr().err
    assert str(config) in err and "metrics.enabled: false" in err
    assert "http://127.0.0.1:9300/metrics" in err and "set metrics.enabled: true" in err


def test_an_oversized_answer_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    class Huge(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            chunk = b"# " + b"x" * (1024 * 1024) + b"\n"
            for _ in range(6):
                self.wfile.write(chunk)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Huge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        assert cli.main(["monitor", "--attach", url, "--once"]) == 1
    finally:
        server.shutdown()
        server.server_close()
    err = capsys.readouterr().err
    assert f"{url} sent more than 4194304 bytes" in err


def test_a_peer_that_never_answers_times_out(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/metrics"
        argv = ["monitor", "--attach", url, "--once", "--timeout", "0.3"]
        assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert f"cannot read {url}" in err or f"cannot reach {url}" in err
    assert "timed out" in err


def test_attach_url_forms(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["monitor", "--attach", "ftp://host/x", "--once"]) == 2
    assert "is not an http URL" in capsys.readouterr().err
