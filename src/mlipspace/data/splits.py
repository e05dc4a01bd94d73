"""Train/test splits stratified by the ``subset`` tag.

- :func:`atom_split` — the study's protocol: ``n_test`` atoms drawn per subset in proportion to
  its atom count, every other atom trains. Symmetry-equivalent atoms of one structure then sit on
  both sides (leakage).
- :func:`grouped_split` — whole structures go to the test side until about ``n_test`` atoms, so no
  atom of a test structure trains. Returns atom indices.
- :func:`structure_split` — per-structure split for structure-level features (frame indices).

All return ``(train_idx, test_idx)`` as sorted int64 arrays. When ``n_test`` is impossible (as
many test atoms as the data holds, or no training structure left) it is clamped to 20 % of the data
with a warning; at least one training structure always remains.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from mlipspace.errors import InputError

__all__ = ["atom_split", "grouped_split", "structure_split", "seeds", "allocate"]

_FALLBACK_FRACTION = 0.2


def allocate(counts: np.ndarray, n: int) -> np.ndarray:
    """Split ``n`` draws over strata proportionally to ``counts`` (largest remainder, capped).

    Each stratum gets ``floor(n c_s / N)`` plus one for the largest remainders (ties go to the
    larger stratum, then the first); no stratum gets more than its count.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if n > total:
        raise InputError(f"cannot draw {n} from {total}")
    exact = counts * (n / total) if total else np.zeros(len(counts))
    take = np.minimum(np.floor(exact).astype(np.int64), counts)
    rest = n - int(take.sum())
    order = np.lexsort((np.arange(len(counts)), -counts, -(exact - take)))
    while rest > 0:
        for s in order:
            if rest == 0:
                break
            if take[s] < counts[s]:
                take[s] += 1
                rest -= 1
    return take


def _rows(rows: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(frame, subset)`` arrays of a row table, checked."""
    if not isinstance(rows, Mapping) or "frame" not in rows:
        raise InputError("expected a row table (dict with 'frame' and 'subset' arrays, see mlipspace.data.row_table)")
    frame = np.asarray(rows["frame"], dtype=np.int64)
    subset = np.asarray(rows.get("subset", np.full(len(frame), "", dtype=str))).astype(str)
    if subset.shape != frame.shape:
        raise InputError(f"row table: 'subset' has {subset.size} rows but 'frame' has {frame.size}")
    if frame.size and np.any(np.diff(frame) < 0):
        raise InputError("row table: 'frame' must be non-decreasing (rows of one structure together)")
    return frame, subset


def _check_n(n_test: Any, name: str = "n_test") -> int:
    if isinstance(n_test, bool) or not isinstance(n_test, (int, np.integer)) or n_test < 1:
        raise InputError(f"{name} must be a positive integer, got {n_test!r}")
    return int(n_test)


def _clamp(n_test: int, n_max: int, n_total: int, what: str) -> int:
    """``n_test`` if at most ``n_max``, else 20 % of ``n_total`` (at least 1) with a warning."""
    if n_test <= n_max:
        return n_test
    new = max(1, min(n_max, int(round(_FALLBACK_FRACTION * n_total))))
    warnings.warn(
        f"n_test={n_test} {what} cannot be drawn while leaving a training structure "
        f"(at most {n_max}); using {new} ({_FALLBACK_FRACTION:.0%} of {n_total})",
        stacklevel=3,
    )
    return new


def _result(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.sort(train).astype(np.int64), np.sort(test).astype(np.int64)


def atom_split(rows: Mapping[str, np.ndarray], n_test: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-atom split stratified by subset: ``n_test`` test atoms, all other atoms train.

    Subset ``s`` with ``N_s`` of the ``N`` atoms gives about ``n_test N_s / N`` test atoms drawn
    uniformly without replacement. Clamped (with a warning) when ``n_test >= N``.
    """
    frame, subset = _rows(rows)
    n = frame.size
    if n < 2:
        raise InputError(f"an atom split needs at least 2 atoms, got {n}")
    n_test = _clamp(_check_n(n_test), n - 1, n, "atoms")
    rng = np.random.default_rng(seed)
    names, inverse, counts = np.unique(subset, return_inverse=True, return_counts=True)
    take = allocate(counts, n_test)
    test = []
    for s in range(len(names)):
        members = np.flatnonzero(inverse == s)
        if take[s]:
            test.append(rng.choice(members, size=int(take[s]), replace=False))
    test_idx = np.concatenate(test) if test else np.zeros(0, np.int64)
    mask = np.ones(n, dtype=bool)
    mask[test_idx] = False
    return _result(np.flatnonzero(mask), test_idx)


class _element_cover:
    """Tracks, per element, how many training structures still contain it (for ``cover_elements``).

    ``allowed(f)``: moving structure ``f`` to the test side leaves each of its elements in at least
    one training structure; ``take(f)`` records that move.
    """

    def __init__(self, rows: Mapping[str, np.ndarray], frame: np.ndarray, frames: np.ndarray):
        z = np.asarray(rows["Z"], dtype=np.int64)
        position = np.searchsorted(frames, frame)
        pairs = np.unique(position * 256 + z)  # (structure, element) pairs, each once, sorted
        self._elements = np.split(pairs % 256, np.searchsorted(pairs // 256, np.arange(1, frames.size)))
        self._count = np.bincount(pairs % 256, minlength=256)

    def __call__(self, f: int) -> bool:
        return bool(np.all(self._count[self._elements[f]] >= 2))

    def take(self, f: int) -> None:
        self._count[self._elements[f]] -= 1


def grouped_split(
    rows: Mapping[str, np.ndarray], n_test: int = 1000, seed: int = 0, *, cover_elements: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Split by structure: whole structures go to the test side until about ``n_test`` atoms.

    Each subset gets an atom budget ``n_test N_s / N`` (plus what earlier subsets fell short of or
    overshot); its structures are shuffled and taken while that brings the test atom count closer
    to the budget. No atom of a test structure trains.
    ``cover_elements`` (default, needs ``rows["Z"]``): a structure goes to the test side only if
    every element in it stays present in some training structure, so the test measures how a map
    learned on training environments transfers, not how it extrapolates to elements it never saw
    (on small, element-diverse sets such as ``builtin:mad-mini`` unseen elements push GFRE above 1).
    Returns ATOM (row) indices. Needs at least 2 structures; at least one always trains.
    """
    frame, subset = _rows(rows)
    frames, first, sizes = np.unique(frame, return_index=True, return_counts=True)
    allowed = _element_cover(rows, frame, frames) if cover_elements and "Z" in rows else None
    if frames.size < 2:
        raise InputError(f"a grouped split needs at least 2 structures, got {frames.size}")
    n = frame.size
    n_test = _clamp(_check_n(n_test), n - int(sizes.min()), n, "atoms (whole structures)")
    frame_subset = subset[first]
    rng = np.random.default_rng(seed)
    names, inverse = np.unique(frame_subset, return_inverse=True)
    atoms_per_subset = np.bincount(inverse, weights=sizes).astype(np.int64)
    budget = allocate(atoms_per_subset, n_test)
    chosen = np.zeros(frames.size, dtype=bool)
    carry = 0  # atoms the previous subsets fell short of (+) or overshot (-) their budgets by
    for s in range(len(names)):
        members = rng.permutation(np.flatnonzero(inverse == s))
        target = max(int(budget[s]) + carry, 0) if budget[s] else 0
        got = 0
        for f in members:
            if got >= target:
                break
            if allowed is not None and not allowed(f):
                continue
            # take the structure unless overshooting the target is worse than stopping short
            if got + sizes[f] - target <= target - got:
                chosen[f] = True
                got += sizes[f]
                if allowed is not None:
                    allowed.take(f)
        carry += int(budget[s]) - got
    if not chosen.any():  # every structure is larger than twice its budget: take the smallest one
        chosen[int(np.argmin(sizes))] = True
    if chosen.all():  # keep a training structure
        test_frames = np.flatnonzero(chosen)
        chosen[test_frames[int(np.argmin(sizes[test_frames]))]] = False
    test_mask = np.repeat(chosen, sizes)
    return _result(np.flatnonzero(~test_mask), np.flatnonzero(test_mask))


def structure_split(
    subsets_per_frame: Sequence[Any],
    n_test: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-structure split stratified by subset; returns FRAME indices.

    ``subsets_per_frame``: one subset label per structure (or the ``Atoms`` themselves, whose
    ``info["subset"]`` is used). ``n_test`` defaults to ``round(test_fraction * n)``; it is kept
    within ``[1, n - 1]`` (clamped with a warning when larger).
    """
    labels = np.array(
        [str(x.info.get("subset", "")) if hasattr(x, "info") else str(x) for x in subsets_per_frame], dtype=str
    )
    n = labels.size
    if n < 2:
        raise InputError(f"a structure split needs at least 2 structures, got {n}")
    if n_test is None:
        if not 0 < test_fraction < 1:
            raise InputError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
        n_test = max(1, min(n - 1, int(round(test_fraction * n))))
    n_test = _clamp(_check_n(n_test), n - 1, n, "structures")
    rng = np.random.default_rng(seed)
    names, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    take = allocate(counts, n_test)
    test = [rng.choice(np.flatnonzero(inverse == s), size=int(take[s]), replace=False) for s in range(len(names)) if take[s]]
    test_idx = np.concatenate(test)
    mask = np.ones(n, dtype=bool)
    mask[test_idx] = False
    return _result(np.flatnonzero(mask), test_idx)


def seeds(split_fn: Callable[..., tuple[np.ndarray, np.ndarray]], *args: Any, seeds: Sequence[int] = (0, 1, 2), **kw: Any):
    """``[split_fn(*args, seed=s, **kw) for s in seeds]``: the same split for several seeds."""
    return [split_fn(*args, seed=int(s), **kw) for s in seeds]
