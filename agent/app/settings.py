"""The ``daemon:`` section in force: the command line's overrides first, then the config's;
applied at start and on each reload to the supervisor, the progress watch and readiness."""

from __future__ import annotations

import logging

from agent.app.readiness import Readiness
from agent.app.runconfig import DaemonOptions
from agent.app.supervisor import ProgressWatch, Supervisor
from agent.config.agent import AgentConfig, DaemonConfig
from agent.core.logs import log_fields

log = logging.getLogger(__name__)


class DaemonSettings:
    """Stats interval and stop timeout (read by the main loop), restart budget, progress and
    ready timeouts (pushed to the supervisor, the watch and readiness)."""

    def __init__(
        self,
        options: DaemonOptions,
        supervisor: Supervisor,
        watch: ProgressWatch,
        readiness: Readiness,
    ) -> None:
        self.options = options
        self.supervisor = supervisor
        self.watch = watch
        self.readiness = readiness
        defaults = DaemonConfig()
        self.stats_interval_s = defaults.stats_interval_s
        self.stop_timeout_s = defaults.stop_timeout_s

    def apply(self, cfg: AgentConfig) -> None:
        d = cfg.daemon
        self.stats_interval_s = self.options.stats_interval_s or d.stats_interval_s
        self.stop_timeout_s = self.options.stop_timeout_s or d.stop_timeout_s
        self.supervisor.configure(d.restart_budget, d.restart_window_s)
        self.watch.timeout_s = d.progress_timeout_s
        self.readiness.ready_timeout_s = d.ready_timeout_s
        slow = [s.name for s in cfg.sources if s.stall_timeout_s >= d.progress_timeout_s]
        if slow:
            log.warning(
                "sources %s have stall_timeout_s >= daemon.progress_timeout_s (%g s): the "
                "watchdog will report them stuck before they notice the stall themselves; "
                "lower their stall_timeout_s or raise daemon.progress_timeout_s",
                slow, d.progress_timeout_s, extra=log_fields(event="config_warning"),
            )  # fmt: skip
