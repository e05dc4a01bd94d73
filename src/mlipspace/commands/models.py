"""CLI command ``mlipspace models``: list the registered models, their layers and whether they load here.

Listing is cheap: it reads the static registry and each adapter module's ``describe(spec)`` (adapter
modules import no torch and no model package at import time); weights are loaded only with
``--load``, which then reports what the loaded checkpoint really declares.
"""

from __future__ import annotations

import importlib
import json
import time

import typer
from ase.data import chemical_symbols
from rich.console import Console
from rich.table import Table

from mlipspace.commands.apps import app


def _element_summary(elements) -> dict | None:
    if elements is None:
        return None
    zs = sorted(int(z) for z in elements)
    if not zs:
        return {"count": 0}
    return {
        "count": len(zs),
        "min": chemical_symbols[zs[0]],
        "max": chemical_symbols[zs[-1]],
        "Z": zs,
    }


def _layer_summary(layers) -> str:
    """``interaction.0-4, last`` instead of six names."""
    if not layers:
        return "?"
    backbone = [layer for layer in layers if layer.startswith("interaction.")]
    rest = [layer for layer in layers if not layer.startswith("interaction.")]
    parts = []
    if backbone:
        idx = [int(layer.split(".")[1]) for layer in backbone]
        contiguous = idx == list(range(idx[0], idx[0] + len(idx)))
        parts.append(f"interaction.{idx[0]}-{idx[-1]}" if contiguous and len(idx) > 1 else ", ".join(backbone))
    parts.extend(rest)
    return ", ".join(parts)


def model_info(name: str, load: bool = False, device: str = "cpu") -> dict:
    """What ``mlipspace models`` shows for ``name``: family, layers, dims, elements, availability.

    Without ``load`` the layers/dims/elements come from the adapter's static ``describe(spec)``
    (``None`` where an adapter has none); with ``load`` the model is loaded on ``device`` and its
    declared attributes, fingerprint and load time are reported.
    """
    from mlipspace.errors import MlipspaceError
    from mlipspace.models import registry

    spec = registry.get_spec(name)
    reason = registry.why_unavailable(name)
    info = {
        "name": name,
        "family": spec.family,
        "description": spec.description,
        "available": reason is None,
        "reason": reason,
        "layers": None,
        "dims": None,
        "elements": None,
        "source": "static",
    }
    try:
        module = importlib.import_module(f"mlipspace.models.{spec.module}")
        describe = getattr(module, "describe", None)
        meta = describe(spec) if describe is not None else None
    except Exception as exc:  # a broken adapter must not hide the other models
        meta = None
        info["reason"] = info["reason"] or f"adapter module failed to import: {exc}"
        info["available"] = False
    if meta:
        info["layers"] = list(meta["layers"])
        info["dims"] = dict(meta["dims"])
        info["elements"] = _element_summary(meta.get("elements"))
    if load and info["available"]:
        start = time.perf_counter()
        try:
            ex = registry.load(name, device=device)
        except (MlipspaceError, ImportError, RuntimeError, OSError) as exc:
            info["available"] = False
            info["reason"] = f"failed to load: {exc}"
        else:
            info.update(
                layers=list(ex.layers),
                dims=dict(ex.dims),
                elements=_element_summary(ex.elements),
                fingerprint=ex.fingerprint,
                load_seconds=round(time.perf_counter() - start, 2),
                source="loaded",
            )
    return info


@app.command("models")
def models(
    names: list[str] = typer.Argument(None, help="Models to show (default: all registered)."),
    load: bool = typer.Option(False, "--load", help="Load the weights (slow) and report what each checkpoint declares."),
    device: str = typer.Option("cpu", "--device", help="Device for --load: cpu, cuda, auto."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """List the models: bundled ones (layers, widths, elements, usable here?) and the checkpoint families
    (spec syntax, whether their environment exists). Names may be checkpoint specs FAMILY:/path."""
    from mlipspace.commands.envs import env_rows
    from mlipspace.models import registry

    listing_all = not names
    names = names or registry.names()
    for name in names:
        registry.get_spec(name)  # unknown names fail before any work, with the list of known ones
    infos = [dict(model_info(name, load=load, device=device),
                  kind="checkpoint" if registry.is_checkpoint_spec(name) else "bundled") for name in names]
    families = env_rows() if listing_all else []
    if as_json:
        for row in families:  # the families whose models come from user checkpoint files
            infos.append({"name": row["spec"], "family": row["family"], "description": row["description"],
                          "kind": "checkpoint family", "available": row["exists"],
                          "reason": None if row["exists"] else f"no environment: mlipspace env create {row['family']}",
                          "environment": row["path"], "layers": None, "dims": None, "elements": None,
                          "source": "static"})
        typer.echo(json.dumps(infos, indent=2, default=str))
        return
    table = Table(title="mlipspace models" + (" (loaded)" if load else ""))
    for col in ("name", "family", "layers", "dims", "elements", "status"):
        table.add_column(col, overflow="fold")
    for info in infos:
        dims = sorted(set(info["dims"].values())) if info["dims"] else []
        el = info["elements"]
        elements = f"{el['count']} ({el['min']}-{el['max']})" if el and el.get("count") else "?"
        status = "[green]available[/]" if info["available"] else f"[red]{info['reason']}[/]"
        if info.get("load_seconds") is not None:
            status += f" (loaded in {info['load_seconds']} s)"
        table.add_row(
            info["name"], info["family"], _layer_summary(info["layers"]),
            ", ".join(map(str, dims)) or "?", elements, status,
        )
    console = Console()
    console.print(table)
    if families:
        fam = Table(title="checkpoint families (FAMILY:/path/to/checkpoint[?options], one environment each)")
        for col in ("family", "spec", "environment"):
            fam.add_column(col, overflow="fold")
        for row in families:
            where = (f"[green]{row['path']}[/] ({row['package']} {row['version']})" if row["exists"]
                     else f"[yellow]none[/]: mlipspace env create {row['family']}")
            fam.add_row(row["family"], row["spec"], where)
        console.print(fam)
