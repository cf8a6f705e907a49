"""The build: model bundle → validated, cached engine artifact (candidates, steps, orchestrator)."""
