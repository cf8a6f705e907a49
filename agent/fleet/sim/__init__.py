"""Simulated devices (``edge-agent fleet simulate``): N devices in one process that speak the
MQTT contract of ``docs/telemetry.md``, for load tests of a broker and of the fleet controller.

* :mod:`~agent.fleet.sim.config` — :class:`SimConfig` and the OTA outcomes;
* :mod:`~agent.fleet.sim.scheduler` — the one thread every device's jobs run on;
* :mod:`~agent.fleet.sim.wire` — what a device publishes (birth with its group, will, metrics,
  records, responses);
* :mod:`~agent.fleet.sim.ota` — the update walk; :mod:`~agent.fleet.sim.commands` — ``ping``,
  ``rollback-model``;
* :mod:`~agent.fleet.sim.device` — one device; :mod:`~agent.fleet.sim.fleet` — the fleet and
  its offline/online controls; :mod:`~agent.fleet.sim.cli` — the command line, which runs
  fleets over :data:`~agent.fleet.sim.config.MAX_SESSIONS_PER_PROCESS` devices in child
  processes (:mod:`~agent.fleet.sim.shards`).
"""

from agent.fleet.sim.cli import add_simulate_arguments, main, run_simulate
from agent.fleet.sim.config import FAIL_MODES, NAN_MODE, SUCCESS_PATH, TERMINAL, SimConfig
from agent.fleet.sim.device import SimDevice
from agent.fleet.sim.fleet import SimFleet, SimProgress

__all__ = [
    "FAIL_MODES",
    "NAN_MODE",
    "SUCCESS_PATH",
    "TERMINAL",
    "SimConfig",
    "SimDevice",
    "SimFleet",
    "SimProgress",
    "add_simulate_arguments",
    "main",
    "run_simulate",
]
