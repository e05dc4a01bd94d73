"""CLI commands: ``mlipspace cumulants`` (structure features into the store) and ``cumulants-table``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mlipspace.commands.apps import app


def _models(model: str) -> list[str]:
    from mlipspace.errors import InputError

    names = [m.strip() for m in model.split(",") if m.strip()]
    if not names:
        raise InputError("--model needs at least one model name")
    return names


@app.command("cumulants")
def cumulants_cmd(
    store: Path = typer.Option(..., "--store", "-s", help="Feature store directory (features extracted with `mlipspace extract`)."),
    model: str = typer.Option(..., "--model", "-m", help="Model name(s) in the store, comma-separated: A,B,..."),
    dataset: str = typer.Option(None, "--dataset", "-d", help="Dataset key, fingerprint prefix or spec (needed when the store holds several)."),
    layer: str = typer.Option("last", "--layer", "-l", help="Layer whose atom features are aggregated."),
    max_order: int = typer.Option(8, "--max-order", "-k", help="Highest cumulant order K (stores kappa_1..kappa_K)."),
    per_species: bool = typer.Option(False, "--per-species", help="Cumulants per element (the dataset's element list), zero for absent elements."),
    root: bool = typer.Option(True, "--root/--no-root", help="Map kappa_k to sign*|kappa_k|^(1/k) for k >= 2 (feature units)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Compute progressive cumulants (structure features) of stored atom features and write them into the store.

    Stored as structure array ``cumulants-<layer>`` (``-species`` with --per-species), one float64
    row per frame of the model's rows (sorted frame ids, in the array's attrs), columns order-major
    [kappa_1 | ... | kappa_K]; the features of order k < K are its first k blocks.
    """
    from mlipspace.aggregate import cumulants, stored_name
    from mlipspace.aggregate.structure import resolve_dataset
    from mlipspace.store import FeatureStore

    fs = FeatureStore(store, mode="a")
    key = resolve_dataset(fs, dataset)
    elements = fs.dataset_info(key)["elements"] if per_species else None
    summary = []
    for name in _models(model):
        X = fs.features(key, name, layer)
        rows = fs.rows(key, name)
        values, info = cumulants(
            X, rows["frame"], order=max_order, root=root, per_species=per_species,
            species=rows["Z"] if per_species else None, elements=elements, return_info=True,
        )
        attrs = info.to_attrs() | {"layer": layer, "model": name, "dataset": key, "per_species": per_species}
        array_name = stored_name(layer, per_species)
        fs.put_structure(key, name, array_name, values, attrs)
        summary.append({
            "model": name, "dataset": key, "name": array_name, "shape": list(values.shape),
            "order": max_order, "single_atom_frames": len(info.single_atom_frames),
        })
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    console = Console()
    for s in summary:
        console.print(
            f"{s['model']}: {s['name']} {s['shape'][0]} frames x {s['shape'][1]} columns (orders 1..{s['order']}) "
            f"-> {store} [dataset {s['dataset']}]"
            + (f"; {s['single_atom_frames']} single-atom frames (kappa_k>=2 = 0)" if s["single_atom_frames"] else ""),
            highlight=False,
        )


@app.command("cumulants-table")
def cumulants_table_cmd(
    store: Path = typer.Option(..., "--store", "-s", help="Feature store directory."),
    model: str = typer.Option(..., "--model", "-m", help="Model name(s) in the store, comma-separated (one table each)."),
    dataset: str = typer.Option(None, "--dataset", "-d", help="Dataset key, fingerprint prefix or spec."),
    layer: str = typer.Option("last", "--layer", "-l", help="Layer whose atom features are aggregated."),
    max_order: int = typer.Option(8, "--max-order", "-k", help="Highest cumulant order."),
    seeds: int = typer.Option(3, "--seeds", help="Number of structure splits (seeds 0..N-1)."),
    metrics: str = typer.Option("gfre,lfre", "--metrics", help="Comma-separated: gfre, lfre."),
    k: int = typer.Option(None, "--k", help="LFRE neighbours (default: mlipspace.metrics.default_k, min(d_X, d_Y) capped at n_train // 4)."),
    test_fraction: float = typer.Option(0.25, "--test-fraction", help="Share of structures on the test side (stratified by subset)."),
    lfre_max_test: int = typer.Option(None, "--lfre-max-test", help="Evaluate LFRE on at most this many test structures."),
    out: Path = typer.Option(None, "--out", "-o", help="Write the records as JSON to this file."),
    as_json: bool = typer.Option(False, "--json", help="Print the records as JSON instead of tables."),
) -> None:
    """GFRE/LFRE between cumulant orders j -> k (does each order add information?), per model."""
    from rich.progress import Progress

    from mlipspace.aggregate.structure import resolve_dataset
    from mlipspace.errors import InputError
    from mlipspace.experiments.cumulant_orders import order_matrix, order_table
    from mlipspace.store import FeatureStore

    if seeds < 1:
        raise InputError(f"--seeds must be >= 1, got {seeds}")
    metric_names = tuple(m.strip() for m in metrics.split(",") if m.strip())
    fs = FeatureStore(store)
    key = resolve_dataset(fs, dataset)
    names = _models(model)
    records = []
    n_steps = len(names) * len(metric_names) * max_order * (max_order - 1)
    with Progress(disable=as_json, transient=True) as bar:
        task = bar.add_task("order table", total=n_steps)
        for name in names:
            rows = fs.rows(key, name)
            records += order_table(
                fs.features(key, name, layer), rows["frame"], rows["subset"], max_order=max_order,
                seeds=tuple(range(seeds)), metrics=metric_names, k=k,
                test_fraction=test_fraction, model=name, layer=layer, dataset=key,
                lfre_max_test=lfre_max_test, progress=lambda: bar.advance(task),
            )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(records, indent=1))
    if as_json:
        typer.echo(json.dumps(records, indent=1))
        return
    console = Console()
    for name in names:
        for metric in metric_names:
            M, orders = order_matrix(records, metric, name)
            S, _ = order_matrix(records, metric, name, field="spread")
            r0 = next(r for r in records if r["model"] == name and r["metric"] == metric)
            table = Table(
                title=f"{name} ({layer}): {metric.upper()} j → k",
                caption=f"reconstruct order ≤k (column) from order ≤j (row); {r0['n_train']} train / "
                        f"{r0['n_test']} test structures, {seeds} seed(s); bold = consecutive orders",
                title_justify="left",
                caption_justify="left",
            )
            table.add_column("j \\ k", justify="right")
            for o in orders:
                table.add_column(f"≤{o}", justify="right")
            for i, a in enumerate(orders):
                cells = []
                for jj in range(len(orders)):
                    if i == jj:
                        cells.append("·")
                    else:
                        cell = f"{M[i, jj]:.3f}"
                        if jj == i + 1:  # consecutive orders: the study's headline numbers
                            cell = f"[bold]{cell}[/]"
                        if seeds > 1:
                            cell += f"\n[dim]±{S[i, jj]:.3f}[/]"
                        cells.append(cell)
                table.add_row(f"≤{a}", *cells)
            console.print(table)
    if out is not None:
        console.print(f"records -> {out}", highlight=False)
