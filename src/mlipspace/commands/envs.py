"""CLI commands ``mlipspace env create|list``: the per-family environments of checkpoint models."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mlipspace.commands.apps import env_app


def env_rows() -> list[dict]:
    """One dict per family: recipe facts, environment path and whether it is complete."""
    from mlipspace import envs

    rows = []
    for fam in envs.families():
        rec = envs.recipe(fam)
        marker = envs.info(fam)
        rows.append({
            "family": fam,
            "spec": rec["spec"],
            "package": rec["distribution"],
            "pins": [a for step in rec["steps"] for a in step if not a.startswith("-")],
            "description": rec["description"],
            "path": str(envs.env_dir(fam)),
            "exists": marker is not None,
            "outdated": marker is not None and marker.get("recipe") != rec,
            "version": marker.get("version") if marker else None,
            "created": marker.get("created") if marker else None,
        })
    return rows


def refuse_missing_envs(models: list[str]) -> None:
    """For ``--no-create-env``: fail before any work when a model (e.g. a checkpoint spec whose
    family has no environment yet) cannot be loaded as things are, instead of making its environment."""
    from mlipspace.errors import ModelUnavailableError
    from mlipspace.models.registry import why_unavailable

    for m in models:
        reason = why_unavailable(m)
        if reason:
            raise ModelUnavailableError(f"model {m!r} is not available: {reason} "
                                        "(--no-create-env: environments are not made automatically)")


@env_app.command("create")
def create(
    families: list[str] = typer.Argument(..., help="Families to make environments for (see 'mlipspace env list'), or 'all'."),
    path: Path = typer.Option(None, "--path", help="Environment directory (only with one family; default $MLIPSPACE_ENVS/FAMILY)."),
    force: bool = typer.Option(False, "--force", help="Rebuild an existing environment."),
) -> None:
    """Make a dedicated virtualenv with the pinned, known-good packages of each family."""
    from mlipspace import envs
    from mlipspace.errors import InputError

    if families == ["all"]:
        families = envs.families()
    if path is not None and len(families) != 1:
        raise InputError("--path works with exactly one family")
    for fam in families:
        envs.recipe(fam)  # unknown families fail before any work
    console = Console(stderr=True)
    for fam in families:
        with console.status(f"{fam}: creating environment") as status:
            def say(msg, status=status):
                status.update(msg)
                console.print(f"  {msg}", highlight=False)

            envs.create(fam, path, force=force, on_step=say)


@env_app.command("list")
def list_(
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
    names: bool = typer.Option(False, "--names", help="Print only the family names, one a line (for scripts)."),
) -> None:
    """The checkpoint families: spec syntax, pinned packages, and whether their environment exists."""
    if names:
        from mlipspace import envs

        typer.echo("\n".join(envs.families()))
        return
    rows = env_rows()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("family", "spec", "pinned", "environment")
    for r in rows:
        where = f"[green]{r['path']}[/] ({r['package']} {r['version']})" if r["exists"] else \
            f"[yellow]none[/] — mlipspace env create {r['family']}"
        if r["outdated"]:
            where += f" [yellow](recipe changed: mlipspace env create {r['family']} rebuilds it)[/]"
        table.add_row(r["family"], r["spec"], " ".join(r["pins"]), where)
    Console().print(table)
