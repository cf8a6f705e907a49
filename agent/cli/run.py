"""``edge-agent run``: the agent's daemon (:mod:`agent.app.lifecycle`) from the command line.

With no arguments it runs the embedded default (``agent/data/agent.default.yaml``): the CPU
profile, the bundled detector and the bundled sample video. Every ``--stats-interval`` seconds a
stats line per model (fps and drops per source, latency p50/p99, governor state, power and
temperature where known) goes to stdout: a short text line on a terminal, shown at any
``--log-level`` (it is the command's output), a trimmed JSON record in the journal or a pipe
(``--log-format`` overrides; the full figures go to MQTT/Prometheus). SIGINT/SIGTERM stop the
sources, drain in-flight frames, log a summary (frames, fps, drops, latency, uptime) and exit 0;
a second Ctrl-C stops waiting for the drain (exit 130). SIGHUP reloads the configuration. Under
systemd it speaks sd_notify (READY, STATUS, WATCHDOG, STOPPING, RELOADING). Exit codes: see
:class:`agent.app.exits.ExitCode`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from agent.app.exits import RunError
from agent.app.runconfig import DaemonOptions
from agent.app.service import build_service
from agent.cli.progress import ProgressPrinter
from agent.config.broker import MqttConfig
from agent.config.cachedir import cache_dir_help

__all__ = ["RunError", "options_from_args", "register"]


def options_from_args(args: argparse.Namespace) -> DaemonOptions:
    """The daemon's options from ``edge-agent run``'s arguments."""
    return DaemonOptions(
        config_path=Path(args.config) if args.config else None,
        profile=args.profile,
        profiles_dir=args.profiles_dir,
        sources=tuple(args.source or ()),
        cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        workers=args.workers,
        duration_s=args.duration,
        stats_interval_s=args.stats_interval,
        stop_timeout_s=args.stop_timeout,
        realtime=args.realtime,
        jsonl=Path(args.jsonl) if args.jsonl else None,
        snapshots=Path(args.snapshots) if args.snapshots else None,
        print_results=args.print_results,
        monitor=not args.no_monitor,
        monitor_source=args.monitor_source,
        root=Path(args.root),
        log_level=args.log_level_run,
        mqtt_url=args.mqtt_url,
        progress_factory=lambda: ProgressPrinter(stream=sys.stderr),
    )


def _mqtt_url(text: str) -> str:
    try:
        MqttConfig(url=text)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not mqtt://host:port or mqtts://host:port "
            f"({exc.errors()[0]['msg']}); e.g. --mqtt-url mqtt://127.0.0.1:1883"
        ) from exc
    return text


def _cmd_run(args: argparse.Namespace) -> int:
    return build_service(options_from_args(args)).run()


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "run",
        help="run the camera pipelines (default: CPU profile, bundled model and sample video)",
        description="Build or load each model's engine, start the sources and the worker pool, "
        "and serve until the sources end, --duration passes, or SIGINT/SIGTERM (SIGHUP reloads "
        "the config). Exit codes: 0 stopped, 1 start-up failed, 2 invalid configuration, "
        "3 a component kept failing past daemon.restart_budget.",
    )
    parser.add_argument("--config", default=None, help="agent.yaml (default: the embedded demo)")
    parser.add_argument("--profile", default=None, help="override the config's profile")
    parser.add_argument("--profiles-dir", default=None, help="directory of profile YAMLs")
    parser.add_argument(
        "--source",
        action="append",
        default=None,
        metavar="URI",
        help="replace the config's sources (file, folder, /dev/videoN, rtsp://, http://, "
        "a GStreamer pipeline, or 'synthetic'); repeatable; all run the first model",
    )
    parser.add_argument(
        "--cache-dir", default=None, metavar="DIR", help=cache_dir_help(config=True)
    )
    parser.add_argument("--workers", type=int, default=None, help="override runtime.streams")
    parser.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    parser.add_argument(
        "--stats-interval",
        type=float,
        default=None,
        help="seconds between stats lines (default: daemon.stats_interval_s, 5)",
    )
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=None,
        help="drain bound on SIGTERM, seconds (default: daemon.stop_timeout_s, 10)",
    )
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="pace file sources at their own frame rate (live-camera behaviour)",
    )
    _add_output_args(parser)
    parser.set_defaults(handler=_cmd_run)


def _add_output_args(parser: argparse.ArgumentParser) -> None:
    """Results, monitor, MQTT and log-level options of ``run``."""
    parser.add_argument("--jsonl", default=None, help="append every result to this JSONL file")
    parser.add_argument("--snapshots", default=None, help="write annotated JPEGs into this dir")
    parser.add_argument("--print-results", action="store_true", help="one line per result")
    parser.add_argument(
        "--monitor-source",
        default="auto",
        choices=["auto", "jtop", "sysfs", "host"],
        help="where power/thermal/memory readings come from (default: auto)",
    )
    parser.add_argument("--root", default="/", help="file-system root of the monitor (tests)")
    parser.add_argument(
        "--mqtt-url",
        type=_mqtt_url,
        default=None,
        metavar="mqtt[s]://HOST:PORT",
        help="publish to this broker (MQTT on), overriding the config's mqtt.url",
    )
    parser.add_argument(
        "--no-monitor", action="store_true", help="run without the monitor and governor"
    )
    parser.add_argument(
        "--log-level",
        dest="log_level_run",
        default=None,
        choices=["debug", "info", "warning", "error"],
        help="override the config's logging.level (on a terminal the stats lines and the "
        "summary show at any level)",
    )
