"""``edge-agent run``'s exit codes and the daemon errors that carry them."""

from __future__ import annotations

import enum

from agent.core.errors import EdgeAgentError


class ExitCode(enum.IntEnum):
    """Exit codes of ``edge-agent run`` (also in systemd/README.md)."""

    OK = 0  # stopped on SIGTERM/SIGINT, the sources ended, or --duration passed
    ERROR = 1  # start-up failed (engine build, backend, profile detection...)
    CONFIG = 2  # the configuration is invalid (RestartPreventExitStatus: a restart won't fix it)
    RESTART_BUDGET = 3  # a component kept failing past daemon.restart_budget


class DaemonError(EdgeAgentError):
    """The daemon cannot go on."""


class RunError(DaemonError):
    """``edge-agent run`` was asked for something impossible (no sources...)."""

    exit_code = ExitCode.CONFIG


class RestartBudgetSpent(DaemonError):
    """A component failed again after using up its restart budget."""

    exit_code = ExitCode.RESTART_BUDGET
