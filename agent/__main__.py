"""``python -m agent`` runs the edge-agent CLI."""

from agent.cli.main import main

raise SystemExit(main())
