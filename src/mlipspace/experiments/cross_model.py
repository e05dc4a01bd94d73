"""Cross-model comparison: GFRE/LFRE matrices between models, both directions, atom and structure level.

For every ordered pair (source, target) of models the error of reconstructing the target's features
from the source's is computed on several seeded splits grouped by structure; the record keeps the
mean over seeds (``value``) and the sample standard deviation (``spread``). Rows are checked to
describe the same atoms in the same order before anything is fitted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mlipspace.data.rows import check_aligned
from mlipspace.errors import InputError
from mlipspace.experiments._common import atom_splits, structure_features, structure_splits, subsample
from mlipspace.records import COMPARE_METRICS, SIMILARITY_METRICS, record, select


def pair_errors(
    features: Mapping[str, np.ndarray],
    pairs: Sequence[tuple[str, str]],
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    metrics: Sequence[str] = ("gfre", "lfre"),
    analysis: str = "cross-model",
    level: str = "atom",
    layer: str = "last",
    dataset: str = "",
    fingerprints: Mapping[str, Mapping] | None = None,
    lfre_max_test: int | None = 200,
    extra: Mapping[tuple[str, str], Mapping] | None = None,
    progress=None,
    n_local_points: int | None = None,
) -> list[dict]:
    """Records of ``metric(source -> target)`` for each ordered pair, over the given splits.

    ``features`` maps a name to a matrix whose rows the splits index; ``extra`` optionally maps
    ``(source, target)`` to additional record fields. The errors come from
    :func:`mlipspace.metrics.pairwise` (scaling and, for LFRE, neighbour search shared per source);
    LFRE uses :func:`mlipspace.metrics.default_k` (k = min(d_source, d_target) capped at
    n_train // 4, which keeps structure-level neighbourhoods local) and at most ``lfre_max_test``
    test rows (seeded subsample); ``n_local_points`` overrides k.
    Similarity measures (``cka``, ``mknn``, ``procrustes``, ...; :data:`SIMILARITY_METRICS`) need no
    fit: each is computed on the test rows of every split (:func:`similarity_values`), and the record
    also carries ``null_mean``, the same measure with the target's rows shuffled (chance level at
    these widths and this n).
    ``progress`` is called once per (split, metric).
    """
    from mlipspace.metrics import pairwise

    for m in metrics:
        if m not in COMPARE_METRICS:
            raise InputError(f"unknown metric {m!r}; choose from {', '.join(COMPARE_METRICS)}")
    pairs = list(dict.fromkeys(pairs))
    names = list(dict.fromkeys(n for p in pairs for n in p))
    every = [(a, b) for a in names for b in names if a != b]
    # all ordered pairs of the names: one pairwise call; otherwise one call per unordered pair
    groups = [names] if set(pairs) == set(every) else list(dict.fromkeys(tuple(sorted(p)) for p in pairs))
    values: dict[tuple[str, str, str], list[float]] = {}
    nulls: dict[tuple[str, str, str], list[float]] = {}
    info: dict[tuple[str, str, str], dict] = {}
    for seed, (train, test) in enumerate(splits):
        for metric in metrics:
            te = subsample(test, lfre_max_test, seed) if metric == "lfre" else test
            if metric in SIMILARITY_METRICS:
                for (a, b), (value, null) in similarity_values(features, pairs, metric, te, seed).items():
                    values.setdefault((a, b, metric), []).append(value)
                    nulls.setdefault((a, b, metric), []).append(null)
                    info[(a, b, metric)] = {"n_train": 0, "n_test": len(te), "k": None}
                if progress is not None:
                    progress()
                continue
            for group in groups:
                recs = pairwise({g: features[g] for g in group}, metric, train_idx=train, test_idx=te,
                                diagonal=False, k=None if metric != "lfre" else n_local_points)
                for r in recs:
                    key = (r["source"], r["target"], metric)
                    values.setdefault(key, []).append(float(r["value"]))
                    info[key] = {"n_train": r["n_train"], "n_test": r["n_test"], "k": r.get("k")}
            if progress is not None:
                progress()
    out = []
    for source, target in pairs:
        for metric in metrics:
            key = (source, target, metric)
            more = dict(extra.get((source, target), {})) if extra else {}
            if info[key]["k"] is not None:
                more["k"] = int(info[key]["k"])
            if key in nulls:
                more["null_mean"] = float(np.mean(nulls[key]))
            out.append(record(
                analysis, source, target, metric, values[key], level=level, layer=layer,
                n_train=info[key]["n_train"], n_test=info[key]["n_test"], dataset=dataset,
                fingerprints=fingerprints, **more,
            ))
    return out


def similarity_values(
    features: Mapping[str, np.ndarray],
    pairs: Sequence[tuple[str, str]],
    measure: str,
    rows: np.ndarray,
    seed: int,
) -> dict[tuple[str, str], tuple[float, float]]:
    """``(source, target) -> (value, null)`` of a similarity measure on ``rows`` of both spaces.

    The measures are symmetric, so each unordered pair is computed once and serves both orders.
    ``null`` is the measure after a seeded shuffle of the target's rows (same shuffle for every pair).
    """
    from mlipspace.metrics.similarity import SIMILARITY_MEASURES

    func = SIMILARITY_MEASURES[measure].func
    shuffle = np.random.default_rng(seed).permutation(len(rows))
    out: dict[tuple[str, str], tuple[float, float]] = {}
    for a, b in pairs:
        if (b, a) in out:
            out[(a, b)] = out[(b, a)]
            continue
        X = np.asarray(features[a][rows], dtype=np.float64)
        Y = np.asarray(features[b][rows], dtype=np.float64)
        out[(a, b)] = (float(func(X, Y)), float(func(X, Y[shuffle])))
    return out


def level_features(
    features: Mapping[str, np.ndarray],
    rows: Mapping[str, np.ndarray],
    *,
    level: str,
    order: int,
    seeds: Sequence[int],
    n_test: int | None = None,
):
    """Feature matrices and seeded splits for ``level`` ("atom": rows as given; "structure": cumulants)."""
    if level == "atom":
        return dict(features), atom_splits(rows, seeds, n_test)
    if level == "atom-ungrouped":
        return dict(features), atom_splits(rows, seeds, n_test, grouped=False)
    if level == "structure":
        feats = {name: structure_features(X, rows, order) for name, X in features.items()}
        return feats, structure_splits(rows, seeds)
    raise InputError(f"unknown level {level!r}; choose 'atom', 'structure' (or 'atom-ungrouped')")


def check_features(features: Mapping[str, np.ndarray], rows: Mapping[str, np.ndarray]) -> None:
    """Raise unless every matrix is 2-D, finite and has one row per entry of ``rows``."""
    n = len(rows["frame"])
    for name, X in features.items():
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[0] != n:
            raise InputError(f"features of {name!r} have shape {X.shape}, expected ({n}, d) to match the row table")
        if not np.all(np.isfinite(X)):
            raise InputError(f"features of {name!r} contain NaN or infinite values")


def cross_model(
    features: Mapping[str, np.ndarray],
    rows: Mapping[str, np.ndarray],
    *,
    metrics: Sequence[str] = ("gfre", "lfre"),
    level: str = "atom",
    order: int = 3,
    seeds: Sequence[int] = (0, 1, 2),
    n_test: int | None = None,
    layer: str = "last",
    dataset: str = "",
    fingerprints: Mapping[str, Mapping] | None = None,
    row_tables: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    lfre_max_test: int | None = 200,
    progress=None,
) -> list[dict]:
    """GFRE/LFRE of every ordered pair of models (source ≠ target) on ``layer`` features.

    ``features`` maps model name -> (n_atoms, d) matrix, all rows described by ``rows``; when the
    models' own row tables are given in ``row_tables`` they are checked against ``rows`` first.
    ``level="atom-ungrouped"`` uses the study's per-atom split instead of the grouped one (test atoms'
    structure-mates train: optimistic, for comparison). ``level="structure"`` compares progressive
    cumulants of order ``order`` per structure (LFRE
    then uses k = half the training structures: the cumulant width K·d exceeds their number, and
    the study's k = min(d_X, d_Y) would make the neighbourhood the whole training set).
    Returns one record per (source, target, metric), ``analysis="cross-model"``.
    """
    names = list(features)
    if len(names) < 2:
        raise InputError(f"cross-model comparison needs at least 2 models, got {names}")
    for name, table in (row_tables or {}).items():
        check_aligned(rows, table, ("dataset", name))
    check_features(features, rows)
    feats, splits = level_features(features, rows, level=level, order=order, seeds=seeds, n_test=n_test)
    pairs = [(a, b) for a in names for b in names if a != b]
    extra = {p: {"order": int(order)} for p in pairs} if level == "structure" else None
    return pair_errors(
        feats, pairs, splits, metrics=metrics, level=level, layer=layer, dataset=dataset,
        fingerprints=fingerprints, lfre_max_test=lfre_max_test, extra=extra, progress=progress,
    )


def relabel(records: Sequence[Mapping], extra: Mapping[tuple[str, str], Mapping], analysis: str,
            level: str = "atom") -> list[dict] | None:
    """Copies of the ``cross-model`` records of the pairs in ``extra``, as ``analysis`` with its fields.

    The variant and fine-tuning comparisons are sub-matrices of the cross-model one (same features,
    splits and metrics): a study run reuses those numbers instead of recomputing them. Returns
    ``None`` when a pair is missing from ``records``.
    """
    by = {}
    for r in select(records, analysis="cross-model", level=level):
        by.setdefault((r["source"], r["target"]), []).append(r)
    out = []
    for pair, fields in extra.items():
        if pair not in by:
            return None
        for r in by[pair]:
            out.append({**r, "analysis": analysis, **dict(fields)})
    return out
