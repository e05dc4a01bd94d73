"""Shared pieces of the study's analyses: seeded splits, structure features, one FRE, outliers.

The records the analyses return are built with :mod:`mlipspace.records`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mlipspace.errors import InputError
from mlipspace.records import FRE_METRICS


def pin_eigensolver() -> None:
    """Import torch when it is installed, so that LFRE's Gram engine always uses torch's eigensolver.

    The engine takes torch's ``eigh`` when torch is imported and LAPACK's otherwise; the two differ in
    the last digits, so without this a record's last digit depended on whether some earlier step
    happened to import torch (seen between two runs of the same study).
    """
    import importlib.util

    if importlib.util.find_spec("torch") is not None:
        import torch  # noqa: F401



# --- splits -------------------------------------------------------------------------------------


def default_n_test(n: int, *, fraction: float = 0.25, cap: int = 1000) -> int:
    """Test size used when none is given: ``fraction`` of ``n`` items, at most ``cap`` (study: 1000)."""
    return int(max(1, min(cap, round(fraction * n))))


def atom_splits(rows: Mapping[str, np.ndarray], seeds: Sequence[int], n_test: int | None = None, *,
                grouped: bool = True):
    """``[(train_idx, test_idx), ...]`` atom-row splits grouped by structure, one per seed.

    Whole structures go to one side (:func:`mlipspace.data.splits.grouped_split`), so symmetry-
    equivalent atoms of one structure never sit on both sides of the split. ``grouped=False`` gives
    the study's protocol instead (:func:`mlipspace.data.splits.atom_split`: test atoms drawn one by
    one, their structure-mates train), kept for comparison.
    """
    from mlipspace.data.splits import atom_split, grouped_split

    if not grouped:
        grouped_split = atom_split  # noqa: F811  (same signature)

    n = len(rows["frame"])
    n_frames = len(np.unique(rows["frame"]))
    if n_frames < 2:
        raise InputError(f"a grouped split needs at least 2 structures, got {n_frames}")
    n_test = default_n_test(n) if n_test is None else int(n_test)
    out = []
    for seed in seeds:
        train, test = grouped_split(rows, n_test, seed=int(seed))
        out.append((np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(test, dtype=np.int64))))
    return out


def frame_subsets(rows: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique frame ids of ``rows`` and the ``subset`` tag of each (for stratified splits)."""
    frames, first = np.unique(np.asarray(rows["frame"]), return_index=True)
    subset = np.asarray(rows.get("subset", np.full(len(rows["frame"]), "")))[first]
    return frames, subset.astype(str)


def structure_splits(rows: Mapping[str, np.ndarray], seeds: Sequence[int], test_fraction: float = 0.25):
    """``[(train_idx, test_idx), ...]`` over the structures (positions in the sorted frame ids)."""
    from mlipspace.data.splits import structure_split

    _, subsets = frame_subsets(rows)
    if len(subsets) < 4:
        raise InputError(f"a structure-level split needs at least 4 structures, got {len(subsets)}")
    out = []
    for seed in seeds:
        train, test = structure_split(list(subsets), test_fraction=test_fraction, seed=int(seed))
        out.append((np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(test, dtype=np.int64))))
    return out


#: Most principal components kept per model before structure-level cumulants (cost bound; the
#: regime rule usually binds first: order x components <= n_train / 2).
STRUCTURE_COMPONENTS_MAX = 32


def structure_width(n_train: int, order: int, d: int) -> int:
    """Principal components m per model so that the cumulant width ``order * m`` admits a ridge fit
    on ``n_train`` structures (:func:`mlipspace.intervals.ridge_regime`), at most ``d`` and
    :data:`STRUCTURE_COMPONENTS_MAX`; 0 when not even one component fits."""
    from mlipspace.intervals import RIDGE_ROWS_PER_COLUMN

    return int(max(0, min(d, STRUCTURE_COMPONENTS_MAX, (n_train // RIDGE_ROWS_PER_COLUMN) // int(order))))


def cumulant_features(X: np.ndarray, rows: Mapping[str, np.ndarray], order: int, *,
                      n_components: int | None = None, train: np.ndarray | None = None, root: bool = True
                      ) -> np.ndarray:
    """Progressive cumulants κ1..κ``order`` of each structure's atom features (one row per frame).

    With ``n_components`` the atom features are first projected on their leading principal
    components, fitted on the atoms of the structures at positions ``train`` of the sorted frame ids
    (all structures when None), so that the structure features stay narrower than the training set
    (``order * n_components`` columns). Rows come out in sorted frame-id order, the order
    :func:`frame_subsets` uses; ``root=False`` keeps the raw cumulants (no signed k-th root).
    """
    from mlipspace.aggregate import structure_features

    frames = np.asarray(rows["frame"])
    X = np.asarray(X, dtype=np.float64)
    if n_components is not None and n_components < X.shape[1]:
        fit = np.isin(frames, np.unique(frames)[train]) if train is not None else np.ones(len(frames), bool)
        mean = X[fit].mean(axis=0)
        _, _, vt = np.linalg.svd(X[fit] - mean, full_matrices=False)
        X = (X - mean) @ vt[: int(n_components)].T
    return np.asarray(structure_features((X, {"frame": frames}), order=int(order), root=root), dtype=np.float64)


def subsample(test: np.ndarray, max_rows: int | None, seed: int) -> np.ndarray:
    """At most ``max_rows`` of ``test`` (sorted, seeded draw without replacement)."""
    test = np.asarray(test)
    if max_rows is None or len(test) <= max_rows:
        return test
    return np.sort(np.random.default_rng(seed).choice(test, size=int(max_rows), replace=False))



# --- where test atoms sit relative to the training atoms ----------------------------------------------

#: A training atom closer than this (in the source's scaled space) is a symmetry twin of a test atom.
TWIN_DISTANCE = 1e-6
#: Coverage: a test atom is outside when its nearest training atom is farther than this percentile
#: of the training atoms' own nearest-neighbour distances (to atoms of other structures).
COVERAGE_PERCENTILE = 99.0


def test_neighbourhood(X: np.ndarray, train: np.ndarray, test: np.ndarray, groups: np.ndarray, seed: int, *,
                       max_reference: int = 1000) -> dict[str, np.ndarray]:
    """Per test row of ``X`` (scaled on the training rows, as the FREs are): ``twin`` (a training row
    within :data:`TWIN_DISTANCE`) and ``outside`` (nearest training row farther than the
    :data:`COVERAGE_PERCENTILE` of the training rows' nearest distances to other structures,
    estimated on at most ``max_reference`` seeded training rows)."""
    X = np.asarray(X, dtype=np.float64)
    Xtr = X[train]
    mean = Xtr.mean(axis=0)
    scale = np.sqrt(np.mean(np.einsum("ij,ij->i", Xtr - mean, Xtr - mean))) or 1.0
    Xtr, Xte = (Xtr - mean) / scale, (X[test] - mean) / scale
    from mlipspace.metrics import nearest_distance

    d_test = nearest_distance(Xte, Xtr)
    ref = subsample(np.arange(len(train)), max_reference, seed)
    d_ref = nearest_distance(Xtr[ref], Xtr, groups[train][ref], groups[train])
    cut = float(np.percentile(d_ref[np.isfinite(d_ref)], COVERAGE_PERCENTILE)) if np.isfinite(d_ref).any() else np.inf
    return {"twin": d_test < TWIN_DISTANCE, "outside": d_test > cut}


# --- one reconstruction error -----------------------------------------------------------------------


def fre(
    metric: str,
    X: np.ndarray,
    Y: np.ndarray,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    *,
    lfre_max_test: int | None = None,
    seed: int = 0,
) -> tuple[float, int]:
    """One feature reconstruction error of ``Y`` from ``X`` and the number of test rows used.

    LFRE fits one local ridge per test row, so it is evaluated on at most ``lfre_max_test`` test rows
    (a seeded subsample) and with :func:`mlipspace.metrics.default_k` neighbours, as
    :func:`mlipspace.metrics.pairwise` does.
    """
    from mlipspace import metrics

    if metric not in FRE_METRICS:
        raise InputError(f"unknown metric {metric!r}; choose from {', '.join(FRE_METRICS)}")
    test = np.asarray(test_idx)
    if metric == "lfre":
        test = subsample(test, lfre_max_test, seed)
        k = metrics.default_k(X.shape[1], Y.shape[1], len(train_idx))
        value = metrics.lfre(X, Y, k=k, train_idx=train_idx, test_idx=test)
    else:
        value = getattr(metrics, metric)(X, Y, train_idx=train_idx, test_idx=test)
    return float(value), int(len(test))


# --- feature outliers -----------------------------------------------------------------------------


def outlier_frames(features: Mapping[str, np.ndarray], rows: Mapping[str, np.ndarray], threshold: float = 20.0
                   ) -> dict[int, str]:
    """Structures with atoms whose features lie far outside every other atom's, in any model.

    Score of an atom in one model: ``||x_i - median(X)|| / median_j ||x_j - median(X)||`` (robust, no
    mean or variance that the outlier itself inflates). Frames with any atom scoring above
    ``threshold`` are returned as ``{frame id: reason}``. Such atoms (e.g. unphysically close
    neighbours that a model never saw in training) would dominate every root-mean-square error:
    one structure can move a GFRE from 0.4 to 6.
    """
    out: dict[int, str] = {}
    frame = np.asarray(rows["frame"])
    for name, X in features.items():
        X = np.asarray(X, dtype=np.float64)
        r = np.linalg.norm(X - np.median(X, axis=0), axis=1)
        scale = np.median(r)
        if not np.isfinite(scale) or scale <= 0:
            continue
        score = r / scale
        for i in np.flatnonzero(score > threshold):
            f = int(frame[i])
            if f not in out:
                out[f] = f"{name}: atom {int(rows['atom'][i]) if 'atom' in rows else i} scores {score[i]:.0f}"
    return dict(sorted(out.items()))


def drop_frames(rows: Mapping[str, np.ndarray], frames: Sequence[int]) -> np.ndarray:
    """Boolean mask of the rows NOT in ``frames``."""
    return ~np.isin(np.asarray(rows["frame"]), np.asarray(list(frames), dtype=np.int64))
