"""The ``edge-agent`` command line.

Each command group lives in ``agent/commands/<group>.py`` and exposes ``register(subparsers)``;
handlers return an exit code. Errors from the exception tree are printed as one clear block on
stderr with their exit code (2 for bad input) — never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from agent import __version__
from agent.core.errors import EdgeAgentError
from agent.core.logs import configure_logging

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    from agent.cli import config as config_cmds
    from agent.cli import engine as engine_cmds
    from agent.cli import monitor as monitor_cmds
    from agent.cli import ota as ota_cmds
    from agent.cli import profile as profile_cmds
    from agent.cli import run as run_cmds

    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="On-device deployment agent for NVIDIA Jetson (and plain CPU hosts).",
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="log level of the JSON log lines (stderr for one-shot commands)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    config_cmds.register(sub)
    profile_cmds.register(sub)
    engine_cmds.register(sub)
    monitor_cmds.register(sub)
    ota_cmds.register(sub)
    run_cmds.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level, stream=sys.stderr)
    handler: Handler = args.handler
    try:
        return handler(args)
    except EdgeAgentError as exc:
        print(f"edge-agent: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("edge-agent: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    finally:
        logging.shutdown()
