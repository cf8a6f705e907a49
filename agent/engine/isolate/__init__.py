"""Isolated builds: a spawned child under a memory cap and a timeout (launch, limits, protocol)."""
