"""CLI commands: models."""
