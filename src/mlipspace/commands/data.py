"""CLI commands: ``mlipspace data describe`` and ``mlipspace data export``."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import typer
from ase.data import chemical_symbols
from rich.console import Console
from rich.table import Table

from mlipspace.commands.apps import ENERGY_KEY, FORCES_KEY, data_app


def describe_frames(frames) -> dict:
    """Counts of a dataset: frames, atoms, elements (atoms per symbol), subsets, labels, fingerprint."""
    from mlipspace.data import fingerprint

    elements: Counter = Counter()
    subsets_frames: Counter = Counter()
    subsets_atoms: Counter = Counter()
    sources: Counter = Counter()
    labels = {"energy": 0, "forces": 0, "stress": 0}
    label_keys: dict[str, Counter] = {"energy": Counter(), "forces": Counter()}
    for atoms in frames:
        elements.update(chemical_symbols[z] for z in atoms.numbers)
        subset = str(atoms.info.get("subset", ""))
        subsets_frames[subset] += 1
        subsets_atoms[subset] += len(atoms)
        sources[str(atoms.info.get("source", ""))] += 1
        labels["energy"] += "energy" in atoms.info
        labels["forces"] += "forces" in atoms.arrays
        labels["stress"] += "stress" in atoms.info
        for what in ("energy", "forces"):
            if f"{what}_key" in atoms.info:
                label_keys[what][str(atoms.info[f"{what}_key"])] += 1
    sizes = [len(a) for a in frames]
    return {
        "frames": len(frames),
        "atoms": int(sum(sizes)),
        "atoms_per_frame": {"min": min(sizes, default=0), "max": max(sizes, default=0)},
        "n_elements": len(elements),
        "elements": dict(sorted(elements.items(), key=lambda kv: -kv[1])),
        "subsets": {k: {"frames": subsets_frames[k], "atoms": subsets_atoms[k]} for k in sorted(subsets_frames)},
        "labels": labels,
        "label_keys": {k: dict(v) for k, v in label_keys.items()},
        "sources": dict(sources),
        "fingerprint": fingerprint(frames),
    }


@data_app.command("describe")
def describe(
    spec: list[str] = typer.Argument(..., help="Paths, globs (quote them) or builtin:NAME[?size=N&seed=S]."),
    index: str = typer.Option(":", "--index", "-i", help="Frames per file, ASE syntax (':', '-1', '0:10')."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Drop unreadable files and bad frames instead of failing."),
    energy_key: str = ENERGY_KEY,
    forces_key: str = FORCES_KEY,
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Count frames, atoms, elements, subsets and DFT labels of a dataset."""
    from mlipspace.data import read_with_report

    frames, report = read_with_report(spec if len(spec) > 1 else spec[0], index=index, on_error="skip" if skip_bad else "raise",
                                      energy_key=energy_key, forces_key=forces_key)
    info = describe_frames(frames)
    info["skipped"] = report
    if as_json:
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    console = Console()
    n = info["frames"]
    console.print(
        f"[bold]{n}[/] frames, [bold]{info['atoms']}[/] atoms "
        f"({info['atoms_per_frame']['min']}–{info['atoms_per_frame']['max']} per frame), "
        f"[bold]{info['n_elements']}[/] elements"
    )
    console.print("elements: " + " ".join(f"{s}:{c}" for s, c in info["elements"].items()), highlight=False)
    table = Table("subset", "frames", "atoms")
    for name, c in info["subsets"].items():
        table.add_row(name or "(none)", str(c["frames"]), str(c["atoms"]))
    console.print(table)
    console.print(
        "labels: " + ", ".join(f"{k} {v}/{n}" for k, v in info["labels"].items()), highlight=False
    )
    used = "; ".join(f"{k} from {', '.join(f'{key!r} ({c})' for key, c in v.items())}"
                     for k, v in info["label_keys"].items() if v)
    if used:
        console.print(f"label keys: {used}", highlight=False)
    console.print(f"fingerprint: {info['fingerprint']}", highlight=False)
    if report:
        console.print(f"[yellow]skipped {len(report)}:[/]")
        for r in report:
            where = r["source"] + (f", frame {r['source_index']}" if r["source_index"] is not None else "")
            console.print(f"  {where}: {r['reason']}", highlight=False)


@data_app.command("export")
def export(
    spec: str = typer.Argument(..., help="Path, glob (quoted) or builtin:NAME[?size=N&seed=S]."),
    out: Path = typer.Argument(..., help="Output extended XYZ file."),
    index: str = typer.Option(":", "--index", "-i", help="Frames per file, ASE syntax."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Drop unreadable files and bad frames instead of failing."),
    energy_key: str = ENERGY_KEY,
    forces_key: str = FORCES_KEY,
) -> None:
    """Write a dataset to extended XYZ with its labels and info tags (subset, source, ...)."""
    from mlipspace.data import read, write

    frames = read(spec, index=index, on_error="skip" if skip_bad else "raise", energy_key=energy_key,
                  forces_key=forces_key)
    write(frames, out)
    Console(stderr=True).print(f"wrote {len(frames)} frames to {out}", highlight=False)
