"""CLI commands: store."""
