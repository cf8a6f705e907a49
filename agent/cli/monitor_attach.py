"""``edge-agent monitor --attach [URL]``: the running daemon's own figures, from its Prometheus
endpoint (``metrics:`` in its config, docs/telemetry.md "Prometheus").

Without a URL the endpoint comes from the daemon's config: ``--config FILE``, else
``/etc/edge-agent/agent.yaml`` when it exists (the systemd service's), else the embedded
default's ``127.0.0.1:9108``. Every ``--interval`` seconds the endpoint is scraped (size and time
bounded) and shown: a table redrawn in place on a terminal, one line per scrape off it, one JSON
document per scrape with ``--json``. ``--once`` shows one scrape (waiting up to ``--wait`` for
the daemon's first report). Ctrl-C exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from agent.cli.monitor_attach_view import InPlace, Scrape, scrape_json, scrape_line, scrape_table
from agent.comms.prometheus.scrape import DaemonFigures, fetch_exposition, parse_figures
from agent.config.agent import AgentConfig, PrometheusConfig
from agent.config.load import default_config_path
from agent.config.yaml import load_model_file
from agent.core.errors import CommsError, EdgeAgentError
from agent.core.logs import wants_color

__all__ = ["SERVICE_CONFIG", "AttachError", "AttachTarget", "normalize_url", "run_attach"]

SERVICE_CONFIG = Path("/etc/edge-agent/agent.yaml")
"""The systemd service's config (systemd/edge-agent.service)."""
DEFAULT_INTERVAL_S = 2.0
"""Seconds between scrapes (the daemon refreshes its figures every telemetry.interval_s)."""


class AttachError(EdgeAgentError):
    exit_code = 1


class AttachArgumentError(EdgeAgentError):
    exit_code = 2


@dataclass(frozen=True)
class AttachTarget:
    """The endpoint and what to tell the user when it does not answer."""

    url: str
    fix: str


def normalize_url(text: str) -> str:
    """``http://host:port/metrics`` from a URL, ``host:port`` or ``http://host:port``."""
    raw = text.strip()
    url = raw if "://" in raw else f"http://{raw}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AttachArgumentError(
            f"--attach {text!r} is not an http URL",
            fix="pass the daemon's endpoint, e.g. --attach http://127.0.0.1:9108/metrics",
        )
    try:
        parts.port  # noqa: B018 (validates the port)
    except ValueError as err:
        raise AttachArgumentError(
            f"--attach {text!r}: {err}", fix="pass a port 1-65535, e.g. 127.0.0.1:9108"
        ) from err
    return url if parts.path not in ("", "/") else url.rstrip("/") + "/metrics"


def endpoint_url(cfg: PrometheusConfig) -> str:
    """Where a client reaches ``cfg``'s endpoint (a wildcard bind is reached on loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(cfg.host, cfg.host)
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{cfg.port}/metrics"


def _running_fix(config: Path | None, url: str) -> str:
    if config is None:
        return (
            "start the daemon with metrics on: `edge-agent run --config FILE` (or `systemctl "
            "start edge-agent`) where FILE sets metrics.enabled: true (metrics.host and "
            "metrics.port give the address; the embedded default serves none), or pass the "
            "endpoint: --attach http://HOST:PORT/metrics"
        )
    return (
        f"is the daemon running? start it: `edge-agent run --config {config}` (or `systemctl "
        f"start edge-agent`); with metrics.enabled: true in {config} it serves {url}"
    )


def resolve_target(attach: str, config: str | None) -> AttachTarget:
    """The endpoint of ``--attach [URL]`` (``attach`` is "" without a URL) and ``--config``."""
    if attach:
        url = normalize_url(attach)
        return AttachTarget(url, _running_fix(Path(config) if config else None, url))
    path = Path(config) if config else SERVICE_CONFIG if SERVICE_CONFIG.is_file() else None
    if path is None:
        url = endpoint_url(load_model_file(default_config_path(), AgentConfig).metrics)
        return AttachTarget(url, _running_fix(None, url))
    metrics = load_model_file(path, AgentConfig).metrics
    url = endpoint_url(metrics)
    if not metrics.enabled:
        raise AttachError(
            f"metrics are off (metrics.enabled: false): the daemon serves no {url}",
            fix=f"set metrics.enabled: true in {path} and restart the daemon "
            "(`systemctl restart edge-agent`), or pass --attach http://HOST:PORT/metrics",
            path=path,
        )
    return AttachTarget(url, _running_fix(path, url))


class Scraper:
    """Scrapes the target; keeps the last good figures to show beside a later failure."""

    def __init__(self, target: AttachTarget, timeout_s: float) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.last: DaemonFigures | None = None

    def figures(self) -> DaemonFigures:
        """One scrape's figures, or :class:`CommsError`."""
        url = self.target.url
        text = fetch_exposition(url, timeout_s=self.timeout_s, fix=self.target.fix)
        self.last = parse_figures(text, url=url)
        return self.last

    def scrape(self) -> Scrape:
        """One scrape, a failure recorded in it rather than raised."""
        now = time.time()
        try:
            return Scrape(self.target.url, now, self.figures())
        except CommsError as exc:
            return Scrape(self.target.url, now, self.last, error=exc.message)


def _first(scraper: Scraper, wait_s: float, poll_s: float) -> Scrape:
    """The first scrape with figures, polling until ``wait_s`` has passed; a failure to reach
    the endpoint raises at once (the daemon is not running or serves no metrics)."""
    deadline = time.monotonic() + wait_s
    while True:
        figures = scraper.figures()
        if figures.reported or time.monotonic() >= deadline:
            return Scrape(scraper.target.url, time.time(), figures)
        time.sleep(max(0.05, min(poll_s, deadline - time.monotonic())))


def _once(scraper: Scraper, args: argparse.Namespace, out: IO[str]) -> int:
    shot = _first(scraper, args.wait, min(0.5, args.interval))
    if shot.figures is None or not shot.figures.reported:
        raise AttachError(
            f"{shot.url} is up but the daemon has not reported within {args.wait:g} s",
            fix="wait for its first report (every telemetry.interval_s of its profile) or "
            "raise --wait",
        )
    if args.json:
        out.write(json.dumps(scrape_json(shot), default=str) + "\n")
    elif out.isatty():
        InPlace(out).draw(scrape_table(shot, color=wants_color(out)))
    else:
        out.write(scrape_line(shot) + "\n")
    out.flush()
    return 0


def _show(out: IO[str], shot: Scrape, view: InPlace | None, as_json: bool) -> None:
    if as_json:
        out.write(json.dumps(scrape_json(shot), default=str) + "\n")
    elif view is not None:
        view.draw(scrape_table(shot, color=wants_color(out)))
        return
    else:
        out.write(scrape_line(shot) + "\n")
    out.flush()


def _loop(scraper: Scraper, args: argparse.Namespace, out: IO[str]) -> int:
    view = InPlace(out) if out.isatty() and not args.json else None
    shot = Scrape(scraper.target.url, time.time(), scraper.figures())  # unreachable: raise
    shown, start = 0, time.monotonic()
    while True:
        _show(out, shot, view, args.json)
        shown += 1
        if args.count is not None and shown >= args.count:
            return 0
        time.sleep(max(0.0, start + shown * args.interval - time.monotonic()))
        shot = scraper.scrape()


def run_attach(args: argparse.Namespace) -> int:
    """The ``--attach`` mode of ``edge-agent monitor``."""
    out = sys.stdout
    if args.interval is None:
        args.interval = DEFAULT_INTERVAL_S
    for flag, value in (("--timeout", args.timeout), ("--interval", args.interval)):
        if not value > 0:
            raise AttachArgumentError(
                f"{flag} must be > 0, got {value}", fix="pass a positive number of seconds"
            )
    if args.count is not None and args.count < 1:
        raise AttachArgumentError(f"--count must be >= 1, got {args.count}", fix="pass --count 1")
    target = resolve_target(args.attach, args.config)
    scraper = Scraper(target, args.timeout)
    try:
        if args.once or args.count == 1:
            return _once(scraper, args, out)
        return _loop(scraper, args, out)
    except KeyboardInterrupt:
        return 0  # Ctrl-C ends the view; the frame drawn last stays on the screen
