"""CLI commands: cumulants."""
