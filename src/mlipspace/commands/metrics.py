"""CLI command: ``mlipspace metrics X.npy Y.npy --metric gfre|gfrd|lfre`` (one reconstruction measure)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from mlipspace.commands.apps import app


def _load(path: Path, what: str, *, mmap: bool = False):
    import numpy as np

    from mlipspace.errors import InputError

    if not path.is_file():
        raise InputError(f"{what}: {path}: no such file")
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as exc:
        raise InputError(f"{what}: {path}: cannot be read as a .npy array ({exc})") from exc
    if not hasattr(arr, "shape"):
        raise InputError(f"{what}: {path}: expected one .npy array, got an archive")
    return arr


def run_metric(x_path: Path, y_path: Path, metric: str, *, test_idx: Path | None = None,
               train_idx: Path | None = None, k: int | None = None, device: str = "auto",
               mode: str = "exact") -> dict:
    """Compute one measure between two .npy files; returns the JSON-able summary the CLI prints."""
    from mlipspace import metrics
    from mlipspace.errors import InputError
    from mlipspace.metrics import check_rows, resolve_split

    metric = metric.lower()
    if metric not in ("gfre", "gfrd", "lfre"):
        raise InputError(f"unknown metric {metric!r}; choose gfre, gfrd or lfre")
    X = _load(x_path, "X", mmap=metric != "lfre")
    Y = _load(y_path, "Y", mmap=metric != "lfre")
    te = _load(test_idx, "--test-idx") if test_idx is not None else None
    tr = _load(train_idx, "--train-idx") if train_idx is not None else None
    if X.ndim != 2 or Y.ndim != 2:
        raise InputError(f"X and Y must be 2-D (rows, features); got shapes {X.shape} and {Y.shape}")
    check_rows(X.shape[0], Y.shape[0], (str(x_path), str(y_path)))
    train, test = resolve_split(X.shape[0], tr, te)
    t0 = time.perf_counter()
    out = {"metric": metric, "source": str(x_path), "target": str(y_path)}
    if metric == "lfre":
        if k is None:
            k = metrics.default_k(X.shape[1], Y.shape[1], train.size)
        value = metrics.lfre(X, Y, k=k, train_idx=train, test_idx=test, device=device, mode=mode)
        out.update(k=int(k), device=device, mode=mode)
    else:
        value = getattr(metrics, metric)(X, Y, train_idx=train, test_idx=test)
    out.update(value=float(value), n_train=int(train.size), n_test=int(test.size),
               d_source=int(X.shape[1]), d_target=int(Y.shape[1]), seconds=round(time.perf_counter() - t0, 3))
    return out


@app.command("metrics")
def metrics_cmd(
    x: Path = typer.Argument(..., help="Source features X, a (rows, features) .npy file."),
    y: Path = typer.Argument(..., help="Target features Y, a .npy file with the same rows in the same order."),
    metric: str = typer.Option("gfre", "--metric", "-m", help="gfre, gfrd or lfre."),
    test_idx: Path = typer.Option(None, "--test-idx", help=".npy of test row indices; every other row trains."),
    train_idx: Path = typer.Option(None, "--train-idx", help=".npy of training row indices (default: complement of --test-idx, or scikit-matter's seeded 50/50 split)."),
    k: int = typer.Option(None, "--k", "-k", help="LFRE neighbours (default: mlipspace.metrics.default_k, min(d_X, d_Y) capped at n_train // 4)."),
    device: str = typer.Option("auto", "--device", help="LFRE device: auto, cpu or cuda."),
    mode: str = typer.Option("exact", "--mode", help="LFRE mode: exact (scikit-matter values) or fast (Gram eigh approximation)."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Reconstruct Y from X: GFRE (global ridge error), GFRD (its distortion) or LFRE (local ridge error).

    Same semantics as scikit-matter's reconstruction measures: per-space centring and global
    scaling on the training rows, Ridge2FoldCV with relative cutoffs. 0 = Y fully recoverable from
    X; about 1 = nothing recoverable.
    """
    out = run_metric(x, y, metric, test_idx=test_idx, train_idx=train_idx, k=k, device=device, mode=mode)
    if as_json:
        typer.echo(json.dumps(out))
        return
    from rich.console import Console

    extra = f", k={out['k']}" if "k" in out else ""
    Console().print(
        f"{out['metric'].upper()}({x.name} -> {y.name}) = [bold]{out['value']:.6f}[/] "
        f"(train {out['n_train']}, test {out['n_test']}{extra}; {out['seconds']} s)",
        highlight=False,
    )
