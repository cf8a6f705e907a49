"""The ``edge-agent`` command line.

Each command group lives in its own module of :mod:`agent.cli` and exposes
``register(subparsers)``; :data:`COMMAND_GROUPS` lists them in the order ``--help`` shows them.
Handlers return an exit code. Errors from the exception tree are printed as one clear block on
stderr with their exit code (2 for bad input) — never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import cast

from agent import __version__
from agent.cli import (
    bench,
    build,
    config,
    fleet,
    infer,
    inspect,
    monitor,
    ota,
    profile,
    quantize,
    run,
    schema,
)
from agent.cli.common import print_error
from agent.cli.helpfmt import Parser
from agent.core.errors import EdgeAgentError
from agent.core.logs import configure_logging

Handler = Callable[[argparse.Namespace], int]
Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

#: command group → the function that adds its commands, in ``--help`` order
COMMAND_GROUPS: tuple[tuple[str, Register], ...] = (
    ("validate-config", config.register),
    ("schema", schema.register),
    ("profile", profile.register),
    ("build", build.register),
    ("quantize", quantize.register),
    ("inspect", inspect.register),
    ("bench", bench.register),
    ("infer", infer.register),
    ("monitor", monitor.register),
    ("keygen, push, ota-status", ota.register),
    ("run", run.register),
    ("fleet", fleet.register),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="On-device deployment agent for NVIDIA Jetson (and plain CPU hosts).",
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="log level (stderr for one-shot commands, stdout for run; default: warning)",
    )
    parser.add_argument(
        "--log-format",
        default="auto",
        choices=["auto", "json", "text"],
        help="log lines as JSON (journald, pipes) or text (a terminal); default auto",
    )
    # every subcommand's parser is a Parser (help shows defaults); registrars take the base type
    sub = cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]",
        parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser),
    )
    sub.required = True
    for _group, register in COMMAND_GROUPS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level, stream=sys.stderr, fmt=args.log_format)
    handler: Handler = args.handler
    try:
        return handler(args)
    except EdgeAgentError as exc:
        print_error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        print("edge-agent: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    finally:
        logging.shutdown()
