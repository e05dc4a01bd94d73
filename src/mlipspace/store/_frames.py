"""Structures as flat arrays, so a store can give back the exact frames its features describe.

Positions, cells and labels are kept in float64 bit for bit (an extxyz text blob would round them
and change the dataset fingerprint); ``info`` entries that JSON can hold travel as one JSON list.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
from ase import Atoms

#: ``info`` keys stored as arrays (labels), not in the JSON list.
LABEL_INFO = ("energy", "stress")


def _jsonable(value):
    """``value`` as a JSON-compatible object, or ``None`` (then dropped) when it has no JSON form."""
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf" and value.size <= 64:
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, (list, tuple)) and len(value) <= 64:
        items = [_jsonable(v) for v in value]
        return items if all(i is not None or v is None for i, v in zip(items, value)) else None
    return None


def _unjson(value):
    if isinstance(value, dict) and "__ndarray__" in value:
        return np.array(value["__ndarray__"], dtype=value["dtype"])
    return value


def _labels(atoms: Atoms) -> dict:
    """Energy, forces and stress of a frame from ``info``/``arrays`` or a single-point calculator."""
    results = {}
    calc = atoms.calc
    if calc is not None and isinstance(getattr(calc, "results", None), dict):
        results = calc.results
    out = {}
    energy = atoms.info.get("energy", results.get("energy"))
    if energy is not None:
        out["energy"] = float(np.asarray(energy).reshape(()))
    forces = atoms.arrays.get("forces", results.get("forces"))
    if forces is not None and np.shape(forces) == (len(atoms), 3):
        out["forces"] = np.asarray(forces, dtype=np.float64)
    stress = atoms.info.get("stress", results.get("stress"))
    if stress is not None:
        stress = np.asarray(stress, dtype=np.float64).reshape(-1)
        if stress.size == 9:
            s = stress.reshape(3, 3)
            stress = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
        if stress.size == 6:
            out["stress"] = stress
    return out


def frames_to_arrays(frames: Sequence[Atoms]) -> dict[str, np.ndarray]:
    """Flat arrays of ``frames``: ``natoms``, ``numbers``, ``positions``, ``cell``, ``pbc``, ``subset``,
    ``info`` (UTF-8 JSON bytes); when any frame has them, ``energy`` (F,), ``forces`` (A, 3) and
    ``stress`` (F, 6), NaN where a frame lacks the label; ``array.<name>`` for other numeric per-atom
    arrays that all frames carry (tags, initial magnetic moments, ...).
    """
    n_frames = len(frames)
    natoms = np.array([len(a) for a in frames], dtype=np.int64)
    n_atoms = int(natoms.sum())
    out = {
        "natoms": natoms,
        "numbers": np.concatenate([a.numbers for a in frames]).astype(np.int32) if n_atoms else np.zeros(0, np.int32),
        "positions": (np.concatenate([a.positions for a in frames]).astype(np.float64)
                      if n_atoms else np.zeros((0, 3))),
        "cell": np.array([a.cell.array for a in frames], dtype=np.float64).reshape(n_frames, 3, 3),
        "pbc": np.array([a.pbc for a in frames], dtype=bool).reshape(n_frames, 3),
    }
    subsets = np.array([str(a.info.get("subset", "")) for a in frames] or [""], dtype=str)
    out["subset"] = subsets[:n_frames]  # stored as codes + categories (see core._write_coded)
    labels = [_labels(a) for a in frames]
    if any("energy" in lab for lab in labels):
        out["energy"] = np.array([lab.get("energy", np.nan) for lab in labels], dtype=np.float64)
    if any("stress" in lab for lab in labels):
        out["stress"] = np.array([lab.get("stress", np.full(6, np.nan)) for lab in labels], dtype=np.float64)
    if any("forces" in lab for lab in labels):
        out["forces"] = np.concatenate(
            [lab.get("forces", np.full((len(a), 3), np.nan)) for lab, a in zip(labels, frames)]
        ) if n_atoms else np.zeros((0, 3))
    # other numeric per-atom arrays (tags, magmoms, charges, ...) that every frame carries alike
    if n_frames:
        for name, first in frames[0].arrays.items():
            if name in ("numbers", "positions", "forces") or not isinstance(first, np.ndarray):
                continue
            if first.dtype.kind not in "biuf" or not all(
                name in a.arrays and a.arrays[name].dtype.kind == first.dtype.kind
                and a.arrays[name].shape[1:] == first.shape[1:] for a in frames
            ):
                continue
            out[f"array.{name}"] = np.concatenate([a.arrays[name] for a in frames])
    infos = []
    for a in frames:
        info = {}
        for key, value in a.info.items():
            if key in LABEL_INFO:
                continue
            v = _jsonable(value)
            if v is not None or value is None:
                info[str(key)] = v
        infos.append(info)
    out["info"] = np.frombuffer(json.dumps(infos, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    return out


def arrays_to_frames(arrays: dict[str, np.ndarray], indices: Sequence[int] | None = None) -> list[Atoms]:
    """Rebuild the ``Atoms`` of :func:`frames_to_arrays` (labels in ``info``/``arrays`` and on a
    ``SinglePointCalculator``, as :func:`mlipspace.data.read` gives them)."""
    from ase.calculators.singlepoint import SinglePointCalculator

    natoms = np.asarray(arrays["natoms"])
    offsets = np.concatenate([[0], np.cumsum(natoms)])
    infos = json.loads(bytes(np.asarray(arrays["info"], dtype=np.uint8)).decode("utf-8"))
    chosen = range(len(natoms)) if indices is None else indices
    frames = []
    for f in chosen:
        lo, hi = offsets[f], offsets[f + 1]
        atoms = Atoms(numbers=arrays["numbers"][lo:hi], positions=arrays["positions"][lo:hi],
                      cell=arrays["cell"][f], pbc=arrays["pbc"][f])
        atoms.info.update({k: _unjson(v) for k, v in infos[f].items()})
        res = {}
        if "energy" in arrays and np.isfinite(arrays["energy"][f]):
            atoms.info["energy"] = res["energy"] = float(arrays["energy"][f])
        if "stress" in arrays and np.all(np.isfinite(arrays["stress"][f])):
            atoms.info["stress"] = res["stress"] = np.array(arrays["stress"][f])
        if "forces" in arrays and np.all(np.isfinite(arrays["forces"][lo:hi])):
            atoms.arrays["forces"] = res["forces"] = np.array(arrays["forces"][lo:hi])
        for name, arr in arrays.items():
            if name.startswith("array."):
                atoms.arrays[name[len("array."):]] = np.array(arr[lo:hi])
        if res:
            atoms.calc = SinglePointCalculator(atoms, **res)
        frames.append(atoms)
    return frames
