"""Chemiscope export: the structures with each model's 2-D maps and the per-structure properties.

:func:`chemiscope_dataset` builds the dataset once; :func:`write_chemiscope` writes it as a file that
opens at https://chemiscope.org or in the chemiscope Jupyter widget, and
:func:`mlipspace.report.explore.write_explore` embeds it in the offline viewer ``explore.html``.
The map starts on the first model's two PCA components, coloured by the residual energy per atom
when labels exist (else by subset).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mlipspace.errors import InputError

#: Map kinds of ``results["maps"][model]`` exported, with their description.
MAP_KINDS = {"pca": "PCA component {j} of {model}'s structure features",
             "pcovr": "PCovR (alpha = 0.5, against the residual energy) component {j} of {model}'s structure features"}


def structure_properties(frames: Sequence) -> dict[str, list]:
    """Per-structure properties every study knows: subset, number of atoms, energy per atom if labelled."""
    props: dict[str, list] = {}
    subsets = [str(a.info.get("subset", "")) for a in frames]
    if any(subsets):
        props["subset"] = subsets
    props["n_atoms"] = [float(len(a)) for a in frames]
    energies = [a.info.get("energy") for a in frames]
    if frames and all(e is not None for e in energies):
        props["energy per atom (eV)"] = [float(e) / len(a) for e, a in zip(energies, frames)]
    return props


def atom_properties(frames: Sequence) -> dict[str, list]:
    """Per-atom properties (force magnitude, eV/Å) when every structure carries DFT forces; else empty."""
    forces = [a.arrays.get("forces") for a in frames]
    if not frames or any(f is None for f in forces):
        return {}
    return {"|force| (eV/Å)": np.concatenate([np.linalg.norm(np.asarray(f, dtype=float), axis=1)
                                              for f in forces]).tolist()}


def per_atom_properties(data: Mapping[str, np.ndarray], frames: Sequence) -> dict[str, list]:
    """Per-atom properties from ``per_atom.npz`` arrays: each model's error (mean over the source models
    of the pointwise GFRE into it; NaN for atoms outside the test set), the element and the subset.

    ``frames`` are the analysed structures in ``data["all_frames"]`` order; empty when they do not match.
    """
    from ase.data import chemical_symbols

    sizes = np.array([len(a) for a in frames], dtype=np.int64)
    if len(frames) != len(data["all_frames"]):
        return {}
    pos = np.searchsorted(np.asarray(data["all_frames"]), np.asarray(data["frame"]))
    offset = np.concatenate([[0], np.cumsum(sizes)])
    if np.any(np.asarray(data["atom"]) >= sizes[pos]):
        return {}
    where = offset[pos] + np.asarray(data["atom"])
    props: dict[str, list] = {}
    for m, err in zip(np.asarray(data["models"]).tolist(), np.asarray(data["model_error"], dtype=np.float64)):
        vals = np.full(int(offset[-1]), np.nan)
        vals[where] = err
        props[f"{m}: per-atom GFRE (mean over sources)"] = vals.tolist()
    props["element"] = [chemical_symbols[z] for a in frames for z in a.numbers]
    props["atom subset"] = [str(a.info.get("subset", "")) for a in frames for _ in range(len(a))]
    return props


def _map_properties(maps: Mapping[str, Mapping[str, Sequence]], n: int) -> dict[str, dict]:
    props: dict[str, dict] = {}
    for model, entry in maps.items():
        for kind, desc in MAP_KINDS.items():
            if not entry.get(kind) and kind != "pca":
                continue
            T = np.asarray(entry.get(kind, []), dtype=np.float64)
            if T.ndim != 2 or T.shape[0] != n:
                raise InputError(f"chemiscope: {kind.upper()} map of {model!r} has shape {T.shape}, "
                                 f"expected ({n}, 2)")
            for j in range(min(2, T.shape[1])):
                props[f"{model} {'PC' if kind == 'pca' else 'PCovR'}{j + 1}"] = {
                    "target": "structure", "values": T[:, j].tolist(),
                    "description": desc.format(j=j + 1, model=model)}
    return props


def _values(key: str, values, n: int, what: str) -> list:
    vals = list(values)
    if len(vals) != n:
        raise InputError(f"chemiscope: property {key!r} has {len(vals)} values for {n} {what}")
    if all(isinstance(v, str) for v in vals):
        return vals
    return np.asarray([np.nan if v is None else v for v in vals], dtype=np.float64).tolist()


def chemiscope_dataset(
    frames: Sequence,
    maps: Mapping[str, Mapping[str, Sequence]],
    *,
    properties: Mapping[str, Sequence] | None = None,
    atom_props: Mapping[str, Sequence[float]] | None = None,
    name: str = "mlipspace",
    description: str = "",
) -> dict:
    """The chemiscope dataset (a JSON-ready dict) of ``frames`` with ``maps[model][kind]`` (n_frames x 2).

    ``properties`` adds per-structure numbers or strings (e.g. ``{"subset": [...]}``), ``atom_props``
    per-atom numbers (one per atom of all frames, in order; every atom gets an environment).
    Raises :class:`InputError` if a map or property does not have one row per structure (atom).
    """
    try:
        import chemiscope
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise InputError("writing a chemiscope file needs the 'chemiscope' package (pip install chemiscope)") from exc
    n = len(frames)
    props = _map_properties(maps, n)
    for key, values in (properties or {}).items():
        props[key] = {"target": "structure", "values": _values(key, values, n, "structures")}
    n_atoms = sum(len(a) for a in frames)
    for key, values in (atom_props or {}).items():
        props[key] = {"target": "atom", "values": _values(key, values, n_atoms, "atoms")}
    settings = {}
    first = next(iter(maps), None)
    if first is not None:
        mapping = {"x": {"property": f"{first} PC1"}, "y": {"property": f"{first} PC2"}}
        colour = next((k for k in (properties or {}) if k != "n_atoms" and k != "subset"),
                      "subset" if "subset" in (properties or {}) else None)
        if colour is not None:
            mapping["color"] = {"property": colour}
        settings = {"map": mapping, "target": "structure"}  # the maps are per structure, even with atom properties
    clean = [_plain(a) for a in frames]
    env = chemiscope.all_atomic_environments(clean, cutoff=3.5) if atom_props else None
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return chemiscope.create_input(
            structures=clean, properties=props, settings=settings, environments=env,
            metadata={"name": name, "description": description or "mlipspace feature maps"},
        )


def write_chemiscope(
    path: str | os.PathLike,
    frames: Sequence,
    maps: Mapping[str, Mapping[str, Sequence]],
    *,
    properties: Mapping[str, Sequence] | None = None,
    atom_props: Mapping[str, Sequence[float]] | None = None,
    name: str = "mlipspace",
    description: str = "",
    dataset: Mapping | None = None,
) -> Path:
    """Write the chemiscope dataset of ``frames`` and ``maps`` (see :func:`chemiscope_dataset`) to ``path``.

    ``dataset``: an already built dataset to write instead. ``.gz`` paths are gzipped with a fixed
    header time, so reruns give identical bytes.
    """
    data = dataset if dataset is not None else chemiscope_dataset(
        frames, maps, properties=properties, atom_props=atom_props, name=name, description=description)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = json.dumps(data).encode("utf8")
    if path.name.endswith(".gz"):
        # like chemiscope.write_input, but with a fixed gzip header time: reruns give identical bytes
        with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=raw,
                                                     mtime=0) as fh:
            fh.write(blob)
    else:
        path.write_bytes(blob)
    return path


def _plain(atoms):
    """A copy with only numbers, positions, cell and pbc (chemiscope would export every info key)."""
    from ase import Atoms

    return Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
