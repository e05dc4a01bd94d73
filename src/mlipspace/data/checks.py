"""Checks on lists of structures: validity, model element coverage, and a content fingerprint."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from ase.geometry import wrap_positions

from mlipspace.errors import InputError, StructureError

__all__ = ["validate", "consistent", "fingerprint", "closest_pair", "frame_problem", "frame_source", "MIN_DISTANCE"]

#: Atoms closer than this (Å) make a frame invalid (periodic images included).
MIN_DISTANCE = 0.3

_FINGERPRINT_VERSION = b"mlipspace-frames-v1"


def frame_source(atoms: Atoms, i: int) -> tuple[str | None, int]:
    """Source file and frame-in-file of ``atoms`` (falls back to the position ``i`` in the list).

    What a :class:`~mlipspace.errors.StructureError` names (``source=``, ``frame=``), so an error
    raised anywhere (reading, model adapters, the store) points at the same file and frame.
    """
    source = atoms.info.get("source")
    frame = atoms.info.get("source_index", i)
    return (str(source) if source is not None else None), int(frame)


def closest_pair(atoms: Atoms, cutoff: float) -> tuple[int, int, float] | None:
    """The closest pair of atoms (periodic images included) nearer than ``cutoff``, else ``None``.

    A k-d tree over the wrapped positions and their periodic images within ``cutoff`` of the cell;
    O(n log n), so it stays fast on cells with large vacuum, where ASE's binning neighbour list is
    slow for a short cutoff. An atom closer than ``cutoff`` to its own image counts (i == j).
    """
    from scipy.spatial import cKDTree

    n = len(atoms)
    pos = atoms.positions
    pbc = np.asarray(atoms.pbc, dtype=bool)
    cell = np.asarray(atoms.cell[:], dtype=np.float64)
    if pbc.any():
        pos = wrap_positions(pos, cell, pbc=pbc)
    ranges = []
    for axis in range(3):
        if not pbc[axis]:
            ranges.append([0])
            continue
        other = np.cross(cell[(axis + 1) % 3], cell[(axis + 2) % 3])
        width = abs(float(np.dot(cell[axis], other))) / max(float(np.linalg.norm(other)), 1e-300)
        k = int(np.ceil(cutoff / width)) if width > 0 else 1
        ranges.append(range(-k, k + 1))
    shifts = np.array([(a, b, c) for a in ranges[0] for b in ranges[1] for c in ranges[2]], dtype=np.float64)
    zero = int(np.flatnonzero(~shifts.any(axis=1))[0])
    images = (pos[None, :, :] + (shifts @ cell)[:, None, :]).reshape(-1, 3)
    dist = cKDTree(pos).sparse_distance_matrix(cKDTree(images), cutoff, output_type="ndarray")
    i, j_img, d = dist["i"], dist["j"], dist["v"]
    j, shift = j_img % n, j_img // n
    keep = ~((i == j) & (shift == zero))
    if not keep.any():
        return None
    k = int(np.flatnonzero(keep)[np.argmin(d[keep])])
    return int(i[k]), int(j[k]), float(d[k])


def _symbol(z: int) -> str:
    return chemical_symbols[z] if 0 <= z < len(chemical_symbols) else f"Z={int(z)}"


def frame_problem(atoms: Atoms, *, labels: bool = True, elements: bool = True) -> str | None:
    """The first reason ``atoms`` cannot be used, or ``None`` (the per-frame test of :func:`validate`).

    ``labels=False`` skips the energy/forces checks, ``elements=False`` the Z range (for model
    adapters, which report unsupported elements themselves and may skip such frames).
    """
    n = len(atoms)
    if n == 0:
        return "empty frame (no atoms)"
    z = atoms.numbers
    bad = z[(z <= 0) | (z > 118)]
    if elements and bad.size:
        return f"unknown element with atomic number {int(bad[0])}"
    if not np.all(np.isfinite(atoms.positions)):
        k = int(np.flatnonzero(~np.all(np.isfinite(atoms.positions), axis=1))[0])
        return f"non-finite (NaN/inf) position of atom {k}"
    cell = np.asarray(atoms.cell[:], dtype=np.float64)
    if not np.all(np.isfinite(cell)):
        return "non-finite (NaN/inf) cell"
    for axis in np.flatnonzero(atoms.pbc):
        if np.linalg.norm(cell[axis]) < 1e-8:
            return f"periodic along axis {axis} but its cell vector is zero"
    if atoms.pbc.any() and abs(np.linalg.det(cell)) < 1e-8 and atoms.pbc.all():
        return "periodic cell with zero volume"
    if n > 1 or atoms.pbc.any():
        try:
            close = closest_pair(atoms, MIN_DISTANCE)
        except Exception as exc:  # degenerate cells
            return f"cannot search neighbours ({type(exc).__name__}: {exc})"
        if close is not None:
            i, j, d = close
            return (
                f"atoms {i} ({_symbol(z[i])}) and {j} ({_symbol(z[j])}) "
                f"are {d:.3f} Å apart (< {MIN_DISTANCE} Å)"
            )
    if not labels:
        return None
    forces = atoms.arrays.get("forces")
    if forces is not None and not np.all(np.isfinite(forces)):
        return "non-finite (NaN/inf) forces label"
    energy = atoms.info.get("energy")
    if energy is not None and not np.isfinite(float(energy)):
        return "non-finite (NaN/inf) energy label"
    return None


def validate(frames: Sequence[Atoms], on_error: str = "raise") -> tuple[list[Atoms], list[dict]]:
    """Check every frame; return the usable frames and a report of the dropped ones.

    A frame is bad when it is empty, has an unknown element (Z <= 0 or Z > 118), NaN/inf
    positions, cell or labels, a zero periodic cell vector, or two atoms (periodic images
    included) closer than :data:`MIN_DISTANCE`. ``on_error="raise"`` raises
    :class:`~mlipspace.errors.StructureError` naming ``info["source"]`` and the frame;
    ``"skip"`` drops the frame and reports ``{"frame", "source", "source_index", "reason"}``
    (``frame`` = position in ``frames``).
    """
    if on_error not in ("raise", "skip"):
        raise InputError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    kept, report = [], []
    for k, atoms in enumerate(frames):
        if not isinstance(atoms, Atoms):
            raise InputError(f"frame {k} is a {type(atoms).__name__}, not ase.Atoms")
        reason = frame_problem(atoms)
        if reason is None:
            kept.append(atoms)
            continue
        source, frame = frame_source(atoms, k)
        if on_error == "raise":
            raise StructureError(reason, source=source, frame=frame)
        report.append({"frame": k, "source": source, "source_index": frame, "reason": reason})
    return kept, report


def _model_elements(models: Any) -> dict[str, set[int]]:
    """``{name: set of Z}`` from a mapping, one object with ``.elements`` or an iterable of them."""
    if isinstance(models, Mapping):
        return {str(k): {int(z) for z in v} for k, v in models.items()}
    if hasattr(models, "elements"):
        models = [models]
    out = {}
    for m in models:
        if not hasattr(m, "elements"):
            raise InputError(f"{m!r} has no .elements: pass extractors or a dict name -> set of Z")
        out[str(getattr(m, "name", repr(m)))] = {int(z) for z in m.elements}
    return out


def consistent(frames: Sequence[Atoms], models: Any) -> tuple[list[Atoms], list[dict]]:
    """Keep the frames every model can describe: all elements supported and at least two atoms.

    ``models``: objects with ``.name`` and ``.elements`` (set of Z, e.g. extractors) or a dict
    ``name -> set of Z``. Returns ``(kept, report)``; each report entry is ``{"frame",
    "source", "source_index", "reason"}`` for a dropped frame.
    """
    elements = _model_elements(models)
    kept, report = [], []
    for k, atoms in enumerate(frames):
        reason = None
        if len(atoms) < 2:
            reason = f"{len(atoms)} atom(s): a structure needs at least 2"
        else:
            present = set(np.unique(atoms.numbers).tolist())
            missing = {
                name: sorted(present - zs) for name, zs in elements.items() if not present <= zs
            }
            if missing:
                parts = [
                    f"{name} lacks {','.join(chemical_symbols[z] for z in zs)}" for name, zs in sorted(missing.items())
                ]
                reason = "unsupported elements: " + "; ".join(parts)
        if reason is None:
            kept.append(atoms)
        else:
            source, frame = frame_source(atoms, k)
            report.append({"frame": k, "source": source, "source_index": frame, "reason": reason})
    return kept, report


def fingerprint(frames: Iterable[Atoms]) -> str:
    """sha256 hex digest of the atoms content: numbers, positions, cell and pbc of every frame.

    Arrays are hashed as canonical little-endian int64/float64 bytes (with each frame's atom count
    in front), so equal structures give equal keys on any machine; ``info``, labels and
    calculators are ignored.
    """
    h = hashlib.sha256(_FINGERPRINT_VERSION)
    n_frames = 0
    for atoms in frames:
        n_frames += 1
        h.update(np.array([len(atoms)], dtype="<i8").tobytes())
        h.update(np.ascontiguousarray(atoms.numbers, dtype="<i8").tobytes())
        h.update(np.ascontiguousarray(atoms.positions, dtype="<f8").tobytes())
        h.update(np.ascontiguousarray(atoms.cell[:], dtype="<f8").tobytes())
        h.update(np.ascontiguousarray(atoms.pbc, dtype="u1").tobytes())
    h.update(np.array([n_frames], dtype="<i8").tobytes())
    return h.hexdigest()
