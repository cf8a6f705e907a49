"""``python -m agent.fleet.sim``: the same as ``edge-agent fleet simulate``."""

from agent.fleet.sim.cli import main

raise SystemExit(main())
