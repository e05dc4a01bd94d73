"""Shared pieces of the study's analyses: tidy records, seeded splits, structure features, one FRE.

Every analysis returns a list of *records*: flat dicts with one number each (``value``, with its
``spread`` over split seeds) and the context needed to read it (analysis, source, target, metric,
level, layer, sizes, dataset, model fingerprints). Records are plain JSON types so that
``results.json`` is a faithful, deterministic dump of them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

import numpy as np

from mlipspace.errors import InputError

#: Keys every record carries, in this order (extra keys follow, sorted).
RECORD_KEYS = (
    "analysis",
    "source",
    "target",
    "metric",
    "level",
    "layer",
    "value",
    "spread",
    "n_train",
    "n_test",
    "n_seeds",
    "dataset",
    "source_fingerprint",
    "target_fingerprint",
)

#: Metrics the analyses know how to compute (name -> function in :mod:`mlipspace.metrics`).
FRE_METRICS = ("gfre", "lfre", "gfrd")
#: Similarity measures of :data:`mlipspace.metrics.similarity.SIMILARITY_MEASURES` (no fit: computed
#: on the test rows of each split, with a permutation null).
SIMILARITY_METRICS = ("cka", "cka_debiased", "rbf_cka", "mknn", "procrustes")
#: Everything a cross-model comparison accepts.
COMPARE_METRICS = FRE_METRICS + SIMILARITY_METRICS


def fingerprint_id(fingerprint: Mapping | None) -> str:
    """A short, stable id (12 hex digits of a sha256) of a model's fingerprint dict ("" if none)."""
    if not fingerprint:
        return ""
    blob = json.dumps(_jsonable(fingerprint), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _jsonable(obj):
    """Plain-JSON copy of ``obj`` (numpy scalars/arrays, tuples, sets made serialisable)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(_jsonable(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def record(
    analysis: str,
    source: str,
    target: str,
    metric: str,
    values: Sequence[float] | float,
    *,
    level: str = "atom",
    layer: str = "last",
    n_train: int = 0,
    n_test: int = 0,
    dataset: str = "",
    fingerprints: Mapping[str, Mapping] | None = None,
    **extra,
) -> dict:
    """One tidy record: ``value`` = mean of ``values`` (one per seed), ``spread`` = their sample std.

    ``spread`` is 0.0 for a single value. ``fingerprints`` maps model name -> fingerprint dict; the
    record keeps a short id of the source's and target's (see :func:`fingerprint_id`).
    """
    vals = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if vals.size == 0:
        raise InputError(f"{analysis}: no values for {source} -> {target} ({metric})")
    fps = fingerprints or {}
    rec = {
        "analysis": analysis,
        "source": source,
        "target": target,
        "metric": metric,
        "level": level,
        "layer": layer,
        "value": float(vals.mean()),
        "spread": float(vals.std(ddof=1)) if vals.size > 1 else 0.0,
        "n_train": int(n_train),
        "n_test": int(n_test),
        "n_seeds": int(vals.size),
        "dataset": dataset,
        "source_fingerprint": fingerprint_id(fps.get(source)),
        "target_fingerprint": fingerprint_id(fps.get(target)),
    }
    for key in sorted(extra):
        rec[key] = _jsonable(extra[key])
    return rec


def select(records: Sequence[Mapping], **where) -> list[Mapping]:
    """The records whose fields equal every ``where`` item (a tuple/list value means "one of")."""
    out = []
    for rec in records:
        ok = True
        for key, want in where.items():
            have = rec.get(key)
            if isinstance(want, (tuple, list, set, frozenset)):
                ok = have in want
            else:
                ok = have == want
            if not ok:
                break
        if ok:
            out.append(rec)
    return out


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


def structure_features(X: np.ndarray, rows: Mapping[str, np.ndarray], order: int) -> np.ndarray:
    """Progressive cumulants κ1..κ``order`` of each structure's atom features (one row per frame).

    Rows come out in sorted frame-id order, the order :func:`frame_subsets` uses.
    """
    from mlipspace.aggregate import cumulants

    frames = np.asarray(rows["frame"])
    out = cumulants(np.asarray(X), frames, order=int(order), root=True)
    return np.asarray(out[0] if isinstance(out, tuple) else out, dtype=np.float64)


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
    (a seeded subsample) and with k = min(d_X, d_Y, n_train - 1) neighbours (the study's k, bounded
    by the training size), as :func:`mlipspace.metrics.pairwise` does.
    """
    from mlipspace import metrics

    if metric not in FRE_METRICS:
        raise InputError(f"unknown metric {metric!r}; choose from {', '.join(FRE_METRICS)}")
    test = np.asarray(test_idx)
    if metric == "lfre":
        from mlipspace.experiments.cross_model import subsample

        test = subsample(test, lfre_max_test, seed)
        k = int(min(X.shape[1], Y.shape[1], len(train_idx)))
        value = metrics.lfre(X, Y, k, train_idx=train_idx, test_idx=test)
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
