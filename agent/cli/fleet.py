"""``edge-agent fleet ...``: the fleet controller and its client.

* ``serve --config fleet.yaml`` — run the controller (registry, rollouts, HTTP API, bundle
  server) until SIGINT/SIGTERM;
* ``devices`` — the registry as a table (or ``--json``);
* ``rollout start BUNDLE --version N --key KEY ...`` — start a rollout in waves with abort
  criteria; ``rollout status ID [--watch]``, ``rollout list``, ``rollout pause|resume|abort ID``;
* ``simulate`` — simulated devices (:mod:`agent.fleet.sim`).

The client commands talk to the controller's API (``--api URL``, default
``http://127.0.0.1:8780`` or ``$EDGE_AGENT_FLEET_API``); changes need its token
(``--token-file FILE`` or ``$EDGE_AGENT_FLEET_TOKEN``; never on the command line). Paths in
``rollout start`` (bundle, key) are read by the controller, on its host.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent.cli.common import print_json
from agent.cli.fleet_views import devices_table, rollout_list_table, rollout_status_text
from agent.config.load import load_fleet_config
from agent.core.errors import EdgeAgentError
from agent.core.logs import configure_logging
from agent.fleet.client import API_ENV, DEFAULT_API, TOKEN_ENV, FleetClient, read_token
from agent.fleet.controller.service import FleetController
from agent.fleet.rollout.spec import parse_spec
from agent.fleet.sim import add_simulate_arguments, run_simulate

__all__ = ["register"]

WATCH_S = 2.0
_FINISHED = ("completed", "aborted")


class UsageError(EdgeAgentError):
    exit_code = 2


def _client(args: argparse.Namespace) -> FleetClient:
    token_file = Path(args.token_file) if args.token_file else None
    return FleetClient(args.api, read_token(token_file))


# ---------------------------------------------------------------------------- serve


@contextmanager
def _stop_signals(stop: threading.Event) -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _cmd_serve(args: argparse.Namespace) -> int:
    path = Path(args.config)
    cfg = load_fleet_config(path)
    if args.log_level == "warning":
        configure_logging("info", stream=sys.stderr)
    controller = FleetController(cfg, path.parent.resolve())
    stop = threading.Event()
    with _stop_signals(stop):
        controller.start()
        try:
            print(f"fleet {cfg.fleet}: controller {controller.instance_id}", flush=True)
            print(f"api:   {controller.api_url}", flush=True)
            print(f"store: {controller.store.where}", flush=True)
            stop.wait()
        finally:
            controller.stop()
    print("fleet controller stopped", flush=True)
    return 0


# ---------------------------------------------------------------------------- devices


def _cmd_devices(args: argparse.Namespace) -> int:
    devices = _client(args).devices()
    if args.json:
        print_json({"devices": devices})
    else:
        print(devices_table(devices))
    return 0


# ---------------------------------------------------------------------------- rollouts


_SPEC_OPTIONS = (
    ("target", "target"),
    ("canary", "canary"),
    ("rate", "rate_per_min"),
    ("soak", "soak_s"),
    ("max_failed_pct", "max_failed_pct"),
    ("min_fps_ratio", "min_fps_ratio"),
    ("max_nan", "max_nan"),
    ("max_metric_drop", "max_metric_drop"),
    ("expires", "expires"),
)


def _spec_fields(args: argparse.Namespace) -> dict[str, Any]:
    """Only what the operator gave: the controller's fleet.yaml fills its rollout defaults."""
    fields: dict[str, Any] = {"bundle": str(Path(args.bundle).resolve()), "version": args.version}
    for option, name in _SPEC_OPTIONS:
        value = getattr(args, option)
        if value is not None:
            fields[name] = value
    if args.waves is not None:
        fields["waves"] = [w.strip() for w in args.waves.split(",") if w.strip()]
    try:
        parse_spec(fields)
    except EdgeAgentError as exc:
        raise UsageError(exc.message, fix=exc.fix) from None
    return fields


def _cmd_start(args: argparse.Namespace) -> int:
    fields = _spec_fields(args)
    status = _client(args).start_rollout(fields, Path(args.key).resolve())
    if args.json:
        print_json(status)
    else:
        print(rollout_status_text(status))
        print(f"\nfollow it: edge-agent fleet rollout status {status.get('id')} --watch")
    return 0


def _finished(status: dict[str, Any]) -> bool:
    state = status.get("state")
    return state == "completed" or (state == "aborted" and bool(status.get("cleanup_done")))


def _cmd_status(args: argparse.Namespace) -> int:
    client = _client(args)
    while True:
        status = client.rollout(args.id)
        if args.json:
            print_json(status, indent=None if args.watch else 2)
        else:
            if args.watch and sys.stdout.isatty():
                sys.stdout.write("\x1b[H\x1b[2J")
            print(rollout_status_text(status), flush=True)
        if not args.watch or _finished(status):
            return 0
        time.sleep(WATCH_S)
        if not sys.stdout.isatty() and not args.json:
            print()


def _cmd_list(args: argparse.Namespace) -> int:
    rollouts = _client(args).rollouts()
    if args.json:
        print_json({"rollouts": rollouts})
    else:
        print(rollout_list_table(rollouts))
    return 0


def _cmd_control(args: argparse.Namespace) -> int:
    status = _client(args).control(args.id, args.op)
    if args.json:
        print_json(status)
    else:
        print(f"rollout {status.get('id')}: {status.get('state')}")
    return 0


# ---------------------------------------------------------------------------- parsers


def _client_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--api",
        default=os.environ.get(API_ENV, DEFAULT_API),
        metavar="URL",
        help=f"the controller's API (default {DEFAULT_API}, or ${API_ENV})",
    )
    common.add_argument(
        "--token-file",
        metavar="FILE",
        help=f"file holding the API token (default: ${TOKEN_ENV}); needed for changes",
    )
    common.add_argument("--json", action="store_true", help="print the API's JSON")
    return common


def _add_start(rollout: Any, common: argparse.ArgumentParser) -> None:
    p = rollout.add_parser(
        "start", parents=[common], help="start a rollout in waves",
        description="Copy BUNDLE (on the controller's host), sign one manifest per target "
        "device with KEY, and publish them wave by wave, watching the abort criteria.",
    )  # fmt: skip
    p.add_argument("bundle", metavar="BUNDLE", help="model bundle directory (holds model.yaml)")
    p.add_argument("--version", type=int, required=True, help="the new model version")
    p.add_argument("--key", required=True, help="Ed25519 signing key (NAME.key)")
    p.add_argument("--target", help="all (default), group:NAME or devices:ID,ID")
    p.add_argument("--canary", help="first wave: a device count N or a share P%% (default 1)")
    p.add_argument("--waves", help="cumulative shares after the canary (default 25%%,100%%)")
    p.add_argument("--rate", type=float, metavar="PER_MIN", help="most publishes a minute")
    p.add_argument("--soak", type=float, metavar="S", help="seconds to wait after each wave")
    p.add_argument("--max-failed-pct", type=float, metavar="P", help="abort above P%% failed")
    p.add_argument("--min-fps-ratio", type=float, metavar="R", help="abort below R × old fps")
    p.add_argument("--max-nan", type=int, metavar="N", help="abort above N probation_nan")
    p.add_argument("--max-metric-drop", type=float, metavar="D", help="abort above task drop D")
    p.add_argument("--expires", help="manifest lifetime, e.g. 24h (default: fleet.yaml)")
    p.set_defaults(handler=_cmd_start)


def _add_rollout(sub: Any, common: argparse.ArgumentParser) -> None:
    group = sub.add_parser("rollout", help="start and follow rollouts")
    rollout = group.add_subparsers(dest="rollout_command", metavar="ACTION")
    rollout.required = True
    _add_start(rollout, common)
    status = rollout.add_parser("status", parents=[common], help="a rollout's waves and counts")
    status.add_argument("id", metavar="ID")
    status.add_argument("--watch", action="store_true", help=f"redraw every {WATCH_S:g} s")
    status.set_defaults(handler=_cmd_status)
    listing = rollout.add_parser("list", parents=[common], help="the fleet's rollouts")
    listing.set_defaults(handler=_cmd_list)
    for op, text in (("pause", "stop publishing (watching goes on)"), ("resume", "go on"),
                     ("abort", "abort: clear manifests, roll back updated devices")):  # fmt: skip
        control = rollout.add_parser(op, parents=[common], help=text)
        control.add_argument("id", metavar="ID")
        control.set_defaults(handler=_cmd_control, op=op)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fleet = sub.add_parser(
        "fleet", help="fleet controller: registry, rollouts, simulated devices",
        description="Run the fleet controller, or talk to it over its HTTP API.",
    )  # fmt: skip
    group = fleet.add_subparsers(dest="fleet_command", metavar="COMMAND")
    group.required = True
    common = _client_options()
    serve = group.add_parser("serve", help="run the controller until SIGINT/SIGTERM")
    serve.add_argument("--config", required=True, metavar="FILE", help="fleet.yaml")
    serve.set_defaults(handler=_cmd_serve)
    devices = group.add_parser("devices", parents=[common], help="the device registry")
    devices.set_defaults(handler=_cmd_devices)
    _add_rollout(group, common)
    simulate = group.add_parser("simulate", help="simulated devices speaking the MQTT contract")
    add_simulate_arguments(simulate)
    simulate.set_defaults(handler=run_simulate)
