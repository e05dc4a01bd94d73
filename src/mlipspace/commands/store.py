"""CLI commands: ``mlipspace extract`` (features into a store) and ``mlipspace store ls``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mlipspace.commands.apps import ENERGY_KEY, FORCES_KEY, app, store_app


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@app.command("extract")
def extract(
    data: list[str] = typer.Argument(..., help="Dataset: paths, globs (quote them) or builtin:NAME[?size=N&seed=S]."),
    model: str = typer.Option(..., "--model", "-m", help="Registry name(s), comma-separated: A,B,..."),
    store: Path = typer.Option(..., "--store", "-s", help="Feature store directory (created if missing)."),
    layers: str = typer.Option("last", "--layers", "-l", help="'last', 'all' or layer names L1,L2."),
    shard_size: int = typer.Option(None, "--shard-size", help="Frames per shard (unit of work and of resuming; default 32)."),
    workers: int = typer.Option(None, "--workers", "-w", help="Run on a Dask LocalCluster of N processes (one per GPU when GPUs exist)."),
    scheduler: str = typer.Option(None, "--scheduler", help="Address of an existing Dask scheduler, e.g. tcp://host:8786."),
    device: str = typer.Option("auto", "--device", help="'auto' (CUDA when visible), 'cpu', 'cuda', 'cuda:1'."),
    batch_size: int = typer.Option(8, "--batch-size", help="Frames per model call inside a shard."),
    env: str = typer.Option(None, "--env", help="Run checkpoint models (FAMILY:/path) in this environment: a family name, an environment directory or a python executable (default: the family's own environment)."),
    python: str = typer.Option(None, "--python", help="Python executable to run checkpoint models in (same as --env PATH)."),
    on_unsupported: str = typer.Option("raise", "--on-unsupported", help="'raise': fail naming frames with unsupported elements; 'skip': leave them out and record them."),
    energy_key: str = ENERGY_KEY,
    forces_key: str = FORCES_KEY,
    wait: bool = typer.Option(True, "--wait/--no-wait", help="When another process is writing the same model into this store: wait for it (default; its work is then reused) or fail at once naming it."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar (atoms/s, ETA)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show every warning of the model packages (default: one summary line per model)."),
    no_create_env: bool = typer.Option(False, "--no-create-env", help="Fail instead of making a missing checkpoint-family environment (offline, cluster nodes)."),
) -> None:
    """Extract per-atom features of one or more models into a feature store (resumable: rerun to continue)."""
    from mlipspace.errors import InputError
    from mlipspace.store import extract_to_store

    if workers is not None and scheduler is not None:
        raise InputError("give either --workers or --scheduler, not both")
    if on_unsupported not in ("raise", "skip"):
        raise InputError(f"--on-unsupported must be 'raise' or 'skip', not {on_unsupported!r}")
    if env is not None and python is not None:
        raise InputError("give either --env or --python, not both")
    models = [m.strip() for m in model.split(",") if m.strip()]
    if env is not None or python is not None:
        from mlipspace.envs import resolve_python
        from mlipspace.models.registry import with_python

        py = str(resolve_python(env if env is not None else python))
        models = [with_python(m, py) for m in models]
    if no_create_env:
        from mlipspace.commands.envs import refuse_missing_envs

        refuse_missing_envs(models)
    spec = data if len(data) > 1 else data[0]
    if energy_key is not None or forces_key is not None:  # the store keeps the labels read here
        from mlipspace.data import read

        spec = read(spec, energy_key=energy_key, forces_key=forces_key)
    summary = extract_to_store(spec, models, store, layers=layers, shard_size=shard_size, workers=workers,
                               scheduler=scheduler, progress=progress and not as_json,
                               on_unsupported=on_unsupported, device=device, batch_size=batch_size, wait=wait,
                               verbose=verbose)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    console = Console()
    console.print(f"dataset [bold]{summary['dataset']}[/] -> {store}", highlight=False)
    for name, rec in summary["models"].items():
        extra = f", {rec['skipped']} frames skipped" if rec.get("skipped") else ""
        if not progress and rec.get("warnings", {}).get("count"):  # with progress the pipeline told already
            extra += f", {rec['warnings']['count']} warnings from model packages (--verbose shows them)"
        console.print(f"  {name}: {', '.join(rec['layers'])} — {rec['status']}{extra}", highlight=False)


@store_app.command("ls")
def ls(
    path: Path = typer.Argument(..., help="Feature store directory."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """List datasets, models, layers, shapes, sizes and completeness of a feature store."""
    from mlipspace.store import FeatureStore

    summary = FeatureStore(path).summary()
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    console = Console()
    if not summary:
        console.print(f"{path}: empty store")
        return
    for ds in summary:
        console.print(
            f"[bold]{ds['key']}[/] {ds['spec'] or '(frames)'} — {ds['n_frames']} frames, {ds['n_atoms']} atoms, "
            f"labels: {', '.join(ds['labels']) or 'none'}", highlight=False,
        )
        table = Table("model", "layer", "shape", "size", "status")
        for rec in ds["models"]:
            if rec["pending"] is not None:
                p = rec["pending"]
                status = f"[yellow]incomplete[/] ({p['shards_done']}/{p['shards_total']} shards of {','.join(p['layers'])})"
            else:
                status = "[green]complete[/]"
            if rec["skipped"]:
                status += f", {rec['skipped']} frames skipped"
            rows = rec["layers"] or [None]
            for layer in rows:
                table.add_row(rec["model"], layer["layer"] if layer else "-",
                              "×".join(map(str, layer["shape"])) if layer else "-",
                              _human(layer["bytes"]) if layer else "-", status)
            for st in rec["structure"]:
                table.add_row(rec["model"], f"structure/{st['name']}", "×".join(map(str, st["shape"])),
                              _human(st["bytes"]), "[green]complete[/]")
        console.print(table)
