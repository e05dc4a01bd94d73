"""CLI commands: metrics."""
