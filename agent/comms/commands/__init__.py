"""Remote commands: request parsing and replay, the name → handler table, the built-in handlers."""
