"""Rows grouped into segments (one per frame, or per frame and element) for vectorised reductions.

All structure-level aggregations reduce contiguous runs of rows with ``np.ufunc.reduceat``. Rows
need not arrive sorted: a stable permutation is kept and applied chunk by chunk, so the feature
matrix is never copied as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from mlipspace.errors import InputError

# Rows x columns of one float64 work block (about 16 MiB): keeps the temporaries of the power
# recursion in cache-friendly, bounded memory whatever the size of the feature matrix.
_BLOCK_ELEMENTS = 1 << 19


@dataclass(frozen=True)
class Segments:
    """Contiguous runs of equal keys after a stable sort of the rows.

    ``perm`` (or ``None`` when the rows are already sorted) maps sorted position -> input row;
    ``starts``/``counts`` locate each segment among the sorted rows; ``keys`` is the key of each
    segment (sorted, unique).
    """

    perm: np.ndarray | None
    starts: np.ndarray
    counts: np.ndarray
    keys: np.ndarray

    @property
    def n_rows(self) -> int:
        return int(self.counts.sum())

    def blocks(self, width: int):
        """Yield ``(seg_lo, seg_hi, row_lo, row_hi)`` groups of whole segments of bounded size."""
        n_seg = len(self.starts)
        ends = self.starts + self.counts
        target = max(1, _BLOCK_ELEMENTS // max(1, width))
        lo = 0
        while lo < n_seg:
            row_lo = int(self.starts[lo])
            # first segment whose end goes past row_lo + target (always take at least one segment)
            hi = int(np.searchsorted(ends, row_lo + target, side="right"))
            hi = max(hi, lo + 1)
            yield lo, hi, row_lo, int(ends[hi - 1])
            lo = hi

    def take(self, x: np.ndarray, row_lo: int, row_hi: int) -> np.ndarray:
        """Rows ``row_lo:row_hi`` (in sorted order) of ``x`` as a private float64 copy (safe to modify)."""
        if self.perm is None:
            return np.array(x[row_lo:row_hi], dtype=np.float64, copy=True)
        return x[self.perm[row_lo:row_hi]].astype(np.float64, copy=False)


def segment_indicator(local_starts: np.ndarray, n_rows: int) -> sp.csr_matrix:
    """Sparse 0/1 (n_segments, n_rows) matrix summing the rows of each segment (rows sorted).

    ``indicator @ block`` gives per-segment column sums: about 15x faster than
    ``np.add.reduceat(axis=0)`` on row-major blocks, with plain float64 sums.
    """
    indptr = np.append(local_starts, n_rows).astype(np.int64)
    return sp.csr_matrix((np.ones(n_rows), np.arange(n_rows, dtype=np.int64), indptr), shape=(len(local_starts), n_rows))


def segment_sum(block: np.ndarray, local_starts: np.ndarray, n_rows: int) -> np.ndarray:
    """Per-segment column sums of ``block`` (rows sorted, segments starting at ``local_starts``)."""
    return np.asarray(segment_indicator(local_starts, n_rows) @ block)


def check_features(features, frame_index) -> tuple[np.ndarray, np.ndarray]:
    """Validate a per-atom feature matrix and its frame index; return them as arrays."""
    x = np.asarray(features)
    if x.ndim != 2:
        raise InputError(f"features must be a 2-D (n_atoms, n_features) array, got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise InputError(f"features must be numeric, got dtype {x.dtype}")
    f = np.asarray(frame_index)
    if f.ndim != 1:
        raise InputError(f"frame_index must be 1-D (one frame id per atom row), got shape {f.shape}")
    if len(f) != len(x):
        raise InputError(f"frame_index has {len(f)} entries but features has {len(x)} rows")
    if len(x) == 0:
        raise InputError("features has no rows: nothing to aggregate")
    if not np.issubdtype(f.dtype, np.integer):
        if np.issubdtype(f.dtype, np.floating) and np.all(np.isfinite(f)) and np.all(f == np.round(f)):
            f = f.astype(np.int64)
        else:
            raise InputError(f"frame_index must hold integer frame ids, got dtype {f.dtype}")
    return x, f.astype(np.int64, copy=False)


def segments_of(keys: np.ndarray) -> Segments:
    """Group rows by integer ``keys`` (any order); segments come out in ascending key order."""
    keys = np.asarray(keys, dtype=np.int64)
    d = np.diff(keys)
    if np.all(d >= 0):
        perm = None
        sorted_keys = keys
    else:
        perm = np.argsort(keys, kind="stable")
        sorted_keys = keys[perm]
        d = np.diff(sorted_keys)
    starts = np.concatenate(([0], np.flatnonzero(d != 0) + 1)).astype(np.int64)
    counts = np.diff(np.append(starts, len(sorted_keys))).astype(np.int64)
    return Segments(perm=perm, starts=starts, counts=counts, keys=sorted_keys[starts])
