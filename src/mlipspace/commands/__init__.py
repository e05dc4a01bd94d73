"""CLI commands, one module per area; each registers its commands on the apps in :mod:`.apps`."""
