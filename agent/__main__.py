"""``python -m agent`` runs the edge-agent CLI."""

from agent.cli import main

raise SystemExit(main())
