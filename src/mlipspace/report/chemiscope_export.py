"""Chemiscope export: the structures with each model's 2-D PCA map (and energies where known).

The file opens at https://chemiscope.org or in the chemiscope Jupyter widget; the map starts on the
first model's two PCA components, coloured by the residual energy per atom when labels exist.
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


def write_chemiscope(
    path: str | os.PathLike,
    frames: Sequence,
    maps: Mapping[str, Mapping[str, Sequence]],
    *,
    properties: Mapping[str, Sequence[float]] | None = None,
    name: str = "mlipspace",
    description: str = "",
) -> Path:
    """Write ``frames`` with ``maps[model]["pca"]`` (n_frames x 2) as properties to ``path``.

    ``properties`` adds further per-structure numbers (e.g. ``{"energy per atom (eV)": [...]}``).
    Raises if a map does not have one row per frame. Needs the ``chemiscope`` package.
    """
    try:
        import chemiscope
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise InputError("writing a chemiscope file needs the 'chemiscope' package (pip install chemiscope)") from exc
    n = len(frames)
    props: dict[str, dict] = {}
    first = None
    for model, entry in maps.items():
        T = np.asarray(entry.get("pca", []), dtype=np.float64)
        if T.ndim != 2 or T.shape[0] != n:
            raise InputError(f"chemiscope: PCA map of {model!r} has shape {T.shape}, expected ({n}, 2)")
        for j in range(min(2, T.shape[1])):
            key = f"{model} PC{j + 1}"
            props[key] = {"target": "structure", "values": T[:, j].tolist(),
                          "description": f"PCA component {j + 1} of {model}'s structure features"}
        first = first or model
    for key, values in (properties or {}).items():
        v = np.asarray(values, dtype=np.float64)
        if v.shape != (n,):
            raise InputError(f"chemiscope: property {key!r} has {v.size} values for {n} structures")
        props[key] = {"target": "structure", "values": v.tolist()}
    settings = {}
    if first is not None:
        mapping = {"x": {"property": f"{first} PC1"}, "y": {"property": f"{first} PC2"}}
        if properties:
            mapping["color"] = {"property": next(iter(properties))}
        settings = {"map": mapping}
    clean = [_plain(a) for a in frames]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        data = chemiscope.create_input(
            structures=clean, properties=props, settings=settings,
            metadata={"name": name, "description": description or "mlipspace feature maps"},
        )
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
