"""The row table: which atom of which frame each feature row describes.

Every per-atom feature matrix in mlipspace comes with a row table of equal length, so that row ``i``
of two models' matrices can be checked to describe the same atom (see :func:`check_aligned`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from ase import Atoms

from mlipspace.errors import AlignmentError

ROW_FIELDS = ("frame", "atom", "Z")


def row_table(frames: Sequence[Atoms], frame_offset: int = 0) -> dict[str, np.ndarray]:
    """Rows of all atoms of ``frames`` in input order.

    Returns ``{"frame": int64, "atom": int32, "Z": int32, "subset": str}`` arrays of length
    ``sum(len(f) for f in frames)``; ``frame`` counts from ``frame_offset``; ``subset`` is
    ``atoms.info["subset"]`` or ``""``.
    """
    counts = np.array([len(a) for a in frames], dtype=np.int64)
    frame = np.repeat(np.arange(len(frames), dtype=np.int64) + frame_offset, counts)
    atom = np.concatenate([np.arange(n, dtype=np.int32) for n in counts]) if len(frames) else np.zeros(0, np.int32)
    z = (
        np.concatenate([a.numbers.astype(np.int32) for a in frames])
        if len(frames)
        else np.zeros(0, np.int32)
    )
    subsets = [str(a.info.get("subset", "")) for a in frames]
    subset = np.repeat(np.array(subsets if subsets else [""], dtype=str), counts) if len(frames) else np.zeros(0, "U1")
    return {"frame": frame, "atom": atom, "Z": z, "subset": subset}


def concat_rows(tables: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate row tables (e.g. of consecutive shards) field by field."""
    keys = list(tables[0])
    return {k: np.concatenate([np.asarray(t[k]) for t in tables]) for k in keys}


def check_aligned(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], names: tuple[str, str] = ("A", "B")) -> None:
    """Raise :class:`AlignmentError` unless two row tables list the same atoms in the same order.

    The message names the first frame where they differ (frame index, atom count or Z).
    """
    na, nb = len(a["frame"]), len(b["frame"])
    for key in ROW_FIELDS:
        x, y = np.asarray(a[key]), np.asarray(b[key])
        n = min(len(x), len(y))
        diff = np.flatnonzero(x[:n] != y[:n])
        if diff.size:
            i = int(diff[0])
            frame = int(np.asarray(a["frame"])[i])
            raise AlignmentError(
                f"rows of {names[0]} and {names[1]} differ first at row {i} (frame {frame}, field {key!r}: "
                f"{x[i]} vs {y[i]}); the feature matrices do not describe the same atoms in the same order"
            )
    if na != nb:
        n = min(na, nb)
        frame = int(np.asarray(a["frame" if na > nb else "frame"])[n - 1]) + 1 if n else 0
        raise AlignmentError(
            f"{names[0]} has {na} rows and {names[1]} has {nb}: they differ from frame {frame} on "
            "(one dataset has frames the other lacks)"
        )
