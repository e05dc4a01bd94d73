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
from mlipspace.experiments._common import (
    atom_splits,
    cumulant_features,
    pin_eigensolver,
    structure_splits,
    structure_width,
    subsample,
    test_neighbourhood,
)
from mlipspace.intervals import (
    LFRE_ROWS_PER_NEIGHBOUR,
    cka_replicates,
    MIN_TEST_GROUPS,
    Estimate,
    first_reason,
    lfre_regime,
    not_enough,
    ridge_regime,
    test_regime,
)
from mlipspace.metrics import default_k
from mlipspace.records import COMPARE_METRICS, SIMILARITY_METRICS, record, select


class TestSubsets:
    """Subsets of each split's test atoms, defined in the source's space (see
    :func:`~mlipspace.experiments._common.test_neighbourhood`), whose FREs are reported apart.

    ``kinds`` maps an analysis name to ``"covered"`` (test atoms inside the training coverage: the
    FRE without extrapolated atoms) or ``"no-twins"`` (test atoms with no symmetry twin among the
    training atoms: the FRE without leaked atoms). Per source it also records the share of test
    atoms *outside* the subset (``outside_share``, ``twin_share``), with its interval.
    """

    SHARE = {"covered": ("outside", "outside_share"), "no-twins": ("twin", "twin_share")}

    def __init__(self, kinds: Mapping[str, str], groups: np.ndarray):
        for kind in kinds.values():
            if kind not in self.SHARE:
                raise InputError(f"unknown test subset {kind!r}; choose from {', '.join(self.SHARE)}")
        self.kinds = dict(kinds)
        self.names = list(kinds)
        self.groups = np.asarray(groups)
        self._cache: dict[tuple[int, str], dict[str, np.ndarray]] = {}
        self._shares: dict[tuple[str, str], Estimate] = {}
        self._sizes: dict[str, tuple[int, int]] = {}

    def masks(self, seed: int, source: str, features, train, test, rows) -> dict[str, np.ndarray]:
        """``{analysis: boolean mask over rows}`` for the test ``rows`` (all or some of ``test``) of one
        split and source; the neighbourhoods are found once per split and source, on all of ``test``."""
        key = (seed, source)
        if key not in self._cache:
            nb = test_neighbourhood(features[source], train, test, self.groups, seed)
            self._cache[key] = (np.asarray(test), nb)
            for name, kind in self.kinds.items():
                flag = self.SHARE[kind][0]
                self._shares.setdefault((source, name), Estimate("mean")).add(
                    nb[flag].astype(float), self.groups[test], seed)
            self._sizes[source] = (len(train), len(test))
        full, nb = self._cache[key]
        pos = np.searchsorted(full, rows)
        return {name: ~nb[self.SHARE[kind][0]][pos] for name, kind in self.kinds.items()}

    def share_records(self, common: Mapping) -> list[dict]:
        """Per source and subset, the share of test atoms outside it (e.g. ``outside_share``)."""
        out = []
        for (source, name), e in self._shares.items():
            f = e.fields()
            n_train, n_test = self._sizes[source]
            out.append(record(name, source, source, self.SHARE[self.kinds[name]][1], f.pop("values"), **f,
                              n_train=n_train, n_test=n_test, **common))
        return out


def pair_errors(
    features: Mapping[str, np.ndarray],
    pairs: Sequence[tuple[str, str]],
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    groups: np.ndarray | None = None,
    metrics: Sequence[str] = ("gfre", "lfre"),
    analysis: str = "cross-model",
    level: str = "atom",
    layer: str = "last",
    dataset: str = "",
    fingerprints: Mapping[str, Mapping] | None = None,
    lfre_max_test: int | None = 500,
    lfre_mode: str = "exact",
    extra: Mapping[tuple[str, str], Mapping] | None = None,
    progress=None,
    k: int | None = None,
    subsets: TestSubsets | None = None,
    client=None,
    pointwise: dict | None = None,
    n_jobs: int | None = None,
) -> list[dict]:
    """Records of ``metric(source -> target)`` for each ordered pair, over the given splits.

    ``features``: name -> matrix whose rows the splits index (a split may carry its own as a third
    item); ``groups``: the structure of each row (default: each row its own), the unit the intervals
    resample (:mod:`mlipspace.intervals`); ``extra``: ``(source, target)`` -> more record fields.
    FREs come from :func:`mlipspace.metrics.pairwise` (LFRE: :func:`~mlipspace.metrics.default_k`
    unless ``k`` is given, on at most ``lfre_max_test`` seeded test rows); similarity measures
    (:data:`SIMILARITY_METRICS`) are computed on each split's test rows with a shuffled-target
    ``null_mean``. A pair outside its valid regime gets ``value: None`` and a ``reason``. ``subsets``
    (:class:`TestSubsets`) adds the FREs over subsets of the test atoms as records of their own
    analysis. ``client``: a Dask client; the (seed, metric, pair or source) units then run as tasks
    reading their features from the store (``features`` a
    :class:`~mlipspace.experiments.distributed.StoreFeatures`), with identical records. Without a
    client, ``n_jobs`` threads (:func:`mlipspace.metrics.effective_n_jobs`: None = every core) share
    the same units (GFRE/GFRD per unordered pair, similarity per pair; LFRE, threaded itself, alone).
    ``pointwise``: a dict that receives, per ``(metric, split index)`` of a GFRE/GFRD/LFRE, the
    split's ``(train, test rows, {(source, target): errors})`` (for analyses that regroup the same
    errors, e.g. :mod:`mlipspace.experiments.per_atom`, instead of refitting them).
    ``progress`` is called once per (split, metric).
    """
    from mlipspace.experiments.distributed import run_units
    from mlipspace.metrics import effective_n_jobs

    jobs = 1 if client is not None else effective_n_jobs(n_jobs)
    split_up = client is not None or jobs > 1
    _check_plan(features, splits, metrics, client)
    pairs = list(dict.fromkeys(pairs))
    est: dict[tuple[str, str, str], Estimate | list] = {}
    nulls: dict[tuple[str, str, str], list[float]] = {}
    info: dict[tuple[str, str, str], dict] = {}
    reasons: dict[tuple[str, str, str], str] = {}
    blocks, units = [], []  # per (seed, metric): how to accumulate its units' results, in serial order
    for seed, split in enumerate(splits):
        todo, more = _split_units(seed, split, features, pairs, groups, metrics, lfre_max_test, lfre_mode, k,
                                  subsets, client is not None, split_up, pointwise, (est, nulls, info, reasons))
        units += todo
        blocks += more
    results = run_units(units, client, jobs)
    for size, accumulate in blocks:
        accumulate([next(results) for _ in range(size)])
        if progress is not None:
            progress()
    return _pair_records(pairs, metrics, est, nulls, info, reasons, analysis=analysis, level=level, layer=layer,
                         dataset=dataset, fingerprints=fingerprints, extra=extra, subsets=subsets)


def _split_units(seed, split, features, pairs, groups, metrics, lfre_max_test, lfre_mode, k, subsets, on_cluster,
                 split_up, pointwise, acc) -> tuple[list, list]:
    """The units of one split of :func:`pair_errors` and, per metric, ``(unit count, accumulate)``
    that folds their results into ``acc`` = ``(est, nulls, info, reasons)``."""
    from mlipspace.experiments.distributed import ON_WORKER

    est, nulls, info, reasons = acc
    train, test = split[0], split[1]
    feats = split[2] if len(split) > 2 else features  # per-split features (e.g. fitted compressions)
    n_rows = len(feats[next(iter(feats))]) if groups is None else len(groups)
    rows_groups = np.arange(n_rows) if groups is None else np.asarray(groups)
    units, blocks = [], []
    for metric in metrics:
        te = subsample(test, lfre_max_test, seed) if metric == "lfre" else test
        why_test = test_regime(len(np.unique(rows_groups[te])))
        if metric in SIMILARITY_METRICS:
            todo = _similarity_units(feats, pairs, metric, te, rows_groups[te], seed, split_up)
            blocks.append((len(todo), lambda res, a=(pairs, metric, te, rows_groups[te], seed, why_test):
                           _similarity_split(res, *a, est, nulls, info, reasons)))
        else:
            masks = (lambda src, tr=train, t=test, r=te, f=feats, s=seed: subsets.masks(s, src, f, tr, t, r)) \
                if subsets is not None else None
            calls = _fre_plan(feats, pairs, metric, train, te, k, info, reasons, why_test)
            apart = on_cluster if metric == "lfre" else split_up
            shared = ON_WORKER if on_cluster else {} if apart else None  # the split's scaled spaces
            todo = [u for use, wanted in calls
                    for u in _fre_units(feats, use, wanted, metric, train, te, k, lfre_mode, apart, shared)]
            kept = None if pointwise is None else pointwise.setdefault((metric, seed), (train, te, {}))[2]
            blocks.append((len(todo), lambda res, a=(calls, metric, rows_groups[te], seed, masks, kept, shared):
                           _fre_accumulate(res, *a, est)))
        units += todo
    return units, blocks


def _check_plan(features, splits, metrics, client) -> None:
    """InputError for an unknown metric, or a distributed run whose features are not in the store."""
    from mlipspace.experiments.distributed import StoreFeatures

    for m in metrics:
        if m not in COMPARE_METRICS:
            raise InputError(f"unknown metric {m!r}; choose from {', '.join(COMPARE_METRICS)}")
    if client is not None and not isinstance(features, StoreFeatures) and any(len(s) < 3 for s in splits):
        raise InputError("a distributed comparison reads its features from the store: pass them as "
                         "mlipspace.experiments.distributed.StoreFeatures")


def _pair_records(pairs, metrics, est, nulls, info, reasons, *, analysis, level, layer, dataset, fingerprints,
                  extra, subsets) -> list[dict]:
    """The records of :func:`pair_errors` from its accumulated estimates (pairs, then metrics, in order)."""
    out = []
    common = dict(level=level, layer=layer, dataset=dataset, fingerprints=fingerprints)
    for source, target in pairs:
        for metric in metrics:
            key = (source, target, metric)
            more = dict(extra.get((source, target), {})) if extra else {}
            if info[key].get("k") is not None:
                more["k"] = int(info[key]["k"])
            for name in subsets.names if subsets is not None and key not in reasons else ():
                out.append(_subset_record(name, key, est.get(key + (name,)), info[key], more, common))
            if key in reasons:
                out.append(record(analysis, source, target, metric, [], level=level, layer=layer,
                                  n_train=info[key]["n_train"], n_test=info[key]["n_test"], dataset=dataset,
                                  fingerprints=fingerprints, reason=reasons[key], **more))
                continue
            if key in nulls:
                more["null_mean"] = float(np.mean(nulls[key]))
            e = est[key]
            if not isinstance(e, Estimate) and len(e) < 2:  # t interval over seeds: needs two
                out.append(record(analysis, source, target, metric, [], reason=not_enough(
                    f"seeds for an interval of {metric} (no per-structure bootstrap for it; use --seeds 2 or more)",
                    2, len(e)), n_train=info[key]["n_train"], n_test=info[key]["n_test"], **common, **more))
                continue
            fields = e.fields() if isinstance(e, Estimate) else {"values": e}
            out.append(record(
                analysis, source, target, metric, fields.pop("values"), level=level, layer=layer,
                n_train=info[key]["n_train"], n_test=info[key]["n_test"], dataset=dataset,
                fingerprints=fingerprints, **fields, **more,
            ))
    if subsets is not None:
        out += subsets.share_records(common)
    return out


def _subset_record(name: str, key, e: Estimate | None, info: Mapping, more: Mapping, common: Mapping) -> dict:
    """The FRE of one pair over the test atoms of subset ``name`` (a record of analysis ``name``)."""
    source, target, metric = key
    sizes = dict(n_train=info["n_train"], n_test=info["n_test"])
    if e is None or len(e.values) == 0:
        return record(name, source, target, metric, [], reason=not_enough("test structures in the subset",
                      MIN_TEST_GROUPS, 0), **sizes, **common, **more)
    f = e.fields()
    return record(name, source, target, metric, f.pop("values"), **f, **sizes, **common, **more)


def fre_pointwise(features: Mapping[str, np.ndarray], names: Sequence[str], metric: str, train: np.ndarray,
                  test: np.ndarray, *, pairs: Sequence[tuple[str, str]] | None = None, k: int | None = None,
                  lfre_mode: str = "exact", scaled=None) -> dict[tuple[str, str], np.ndarray]:
    """``{(source, target): pointwise errors}`` of ``metric`` for ``pairs`` of ``names`` (default: all
    ordered pairs) on one split: the unit of work of :func:`pair_errors`, run here or as a Dask task
    (:mod:`mlipspace.experiments.distributed`). ``scaled``: the split's scaled spaces shared by its
    units (a dict; ``distributed.ON_WORKER``: the worker's cache), see :func:`mlipspace.metrics.pairwise`."""
    from mlipspace.experiments.distributed import scaled_spaces
    from mlipspace.metrics import pairwise

    pin_eigensolver()  # here, so that serial runs and every worker use the same eigensolver
    recs = pairwise(_Names(features, names), metric, train_idx=train, test_idx=test, diagonal=False,
                    k=k if metric == "lfre" else None, pointwise=True,
                    mode=lfre_mode if metric == "lfre" else "exact", pairs=pairs,
                    scaled=scaled_spaces(features, train, scaled))
    return {(r["source"], r["target"]): r["pointwise"] for r in recs}


class _Names(Mapping):
    """``names`` of ``features``, read on access (a space found scaled in a cache is never read)."""

    def __init__(self, features: Mapping, names: Sequence[str]):
        self.features, self.names = features, list(names)

    def __getitem__(self, name):
        if name not in self.names:
            raise KeyError(name)
        return self.features[name]

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def _fre_plan(features, pairs, metric, train, test, k, info, reasons, why_test) -> list[tuple[list, list]]:
    """The GFRE/GFRD/LFRE call of one split: ``[(names, wanted pairs)]`` (one call: each space scaled
    once, LFRE's neighbours found once per source); pairs outside the valid regime get their reason in
    ``reasons`` instead."""
    todo = []
    for s, t in pairs:
        key = (s, t, metric)
        ks = None
        if metric == "lfre":  # the one k policy; too few training rows are caught by the regime rule below
            ks = k if k is not None else default_k(features[s].shape[1], features[t].shape[1],
                                                     max(len(train), 2 * LFRE_ROWS_PER_NEIGHBOUR))
        info[key] = {"n_train": len(train), "n_test": len(test), "k": ks}
        why = first_reason(why_test, lfre_regime(len(train), ks) if metric == "lfre"
                           else ridge_regime(len(train), features[s].shape[1]))
        if why:
            reasons[key] = why
        elif key not in reasons:
            todo.append((s, t))
    return [(list(dict.fromkeys(n for p in todo for n in p)), todo)] if todo else []


def _fre_units(features, use, wanted, metric, train, test, k, lfre_mode, split_up: bool, scaled=None) -> list:
    """The units of one pairwise call: the call itself, or (``split_up``, for a cluster or threads) one
    unit per unordered pair (GFRE/GFRD: a pair reads two matrices) or per source (LFRE: its neighbour
    search serves all its targets), sharing the split's ``scaled`` spaces. Every pair's errors are the
    same either way."""
    from mlipspace.experiments.distributed import Unit

    kw = dict(k=k, lfre_mode=lfre_mode, scaled=scaled)
    threaded = metric != "lfre"  # LFRE runs its own threads over test batches: not in the pool
    if not split_up:
        return [Unit(fre_pointwise, features, use, (use, metric, train, test), dict(kw, pairs=wanted), threaded)]
    if metric == "lfre":
        return [Unit(fre_pointwise, features, use, (use, metric, train, test),
                     dict(kw, pairs=[p for p in wanted if p[0] == s]), threaded)
                for s in dict.fromkeys(p[0] for p in wanted)]
    units, done = [], set()
    for s, t in wanted:
        if frozenset((s, t)) in done:
            continue
        done.add(frozenset((s, t)))
        names = [n for n in use if n in (s, t)]
        both = [p for p in ((s, t), (t, s)) if p in wanted]
        width = features[s].shape[1] + features[t].shape[1]  # a fit costs ~ n (d_s + d_t)^2
        units.append(Unit(fre_pointwise, features, names, (names, metric, train, test), dict(kw, pairs=both),
                          cost=float(len(both) * width ** 2)))
    return units


def _fre_accumulate(results, calls, metric, test_groups, seed, masks, kept, shared, est) -> None:
    """Add one split's pointwise errors to ``est``, pair by pair in the order of the pairwise calls
    (and to ``kept``, a dict, when given); the split's ``shared`` scaled spaces are no longer needed."""
    if isinstance(shared, dict):
        shared.clear()
    got = {}
    for r in results:
        got.update(r)
    if kept is not None:
        kept.update(got)
    for use, wanted in calls:
        for s, t in ((s, t) for s in use for t in use if s != t and (s, t) in wanted):
            pw = got[(s, t)]
            key = (s, t, metric)
            est.setdefault(key, Estimate("rms")).add(pw, test_groups, seed)
            for name, mask in (masks(s) if masks is not None else {}).items():
                if len(np.unique(test_groups[mask])) >= MIN_TEST_GROUPS:
                    est.setdefault(key + (name,), Estimate("rms")).add(pw[mask], test_groups[mask], seed)


def _similarity_units(features, pairs, metric, rows, row_groups, seed, split_up: bool) -> list:
    """One unit for all pairs, or (``split_up``) one per unordered pair: the measures are symmetric."""
    from mlipspace.experiments.distributed import Unit

    names = list(dict.fromkeys(n for p in pairs for n in p))
    if not split_up:
        return [Unit(similarity_values, features, names, (pairs, metric, rows, seed, row_groups))]
    first: list[tuple[str, str]] = []  # as similarity_values: a pair whose reverse came earlier reuses it
    for a, b in pairs:
        if (b, a) not in first:
            first.append((a, b))
    return [Unit(similarity_values, features, list(dict.fromkeys(p)), ([p], metric, rows, seed, row_groups))
            for p in first]


def _similarity_split(results, pairs, metric, rows, row_groups, seed, why_test, est, nulls, info, reasons):
    """A similarity measure of every pair on one split's test rows, into ``est`` (or a reason)."""
    got = {}
    for r in results:
        got.update(r)
    for a, b in pairs:
        value, null, e = got[(a, b)] if (a, b) in got else got[(b, a)]
        key = (a, b, metric)
        info[key] = {"n_train": 0, "n_test": len(rows), "k": None}
        if why_test:
            reasons[key] = why_test
            continue
        if e is not None:
            acc = est.setdefault(key, Estimate("mean"))
            for value, reps in zip(e.values, e.reps):
                acc.add_replicates(value, reps)
        else:
            est.setdefault(key, []).append(value)
        nulls.setdefault(key, []).append(null)


def similarity_values(
    features: Mapping[str, np.ndarray],
    pairs: Sequence[tuple[str, str]],
    measure: str,
    rows: np.ndarray,
    seed: int,
    groups: np.ndarray | None = None,
) -> dict[tuple[str, str], tuple[float, float, Estimate | None]]:
    """``(source, target) -> (value, null, estimate)`` of a similarity measure on ``rows`` of both spaces.

    The measures are symmetric, so each unordered pair is computed once and serves both orders.
    ``null`` is the measure after a seeded shuffle of the target's rows (same shuffle for every pair).
    With ``groups`` (the structure of each of ``rows``), ``estimate`` holds this split's cluster-
    bootstrap replicates where the measure allows them: mutual kNN (a mean over rows) and linear
    CKA (:func:`mlipspace.intervals.cka_replicates`); ``None`` for the others.
    """
    from mlipspace.metrics.similarity import SIMILARITY_MEASURES, pointwise_mutual_knn

    func = SIMILARITY_MEASURES[measure].func
    shuffle = np.random.default_rng(seed).permutation(len(rows))
    out: dict[tuple[str, str], tuple[float, float, Estimate | None]] = {}
    for a, b in pairs:
        if (b, a) in out:
            out[(a, b)] = out[(b, a)]
            continue
        X = np.asarray(features[a][rows], dtype=np.float64)
        Y = np.asarray(features[b][rows], dtype=np.float64)
        est = None
        if measure == "mknn":
            pw = pointwise_mutual_knn(X, Y)
            value = float(np.mean(pw))
            if groups is not None:
                est = Estimate("mean")
                est.add(pw, groups, seed)
        else:
            value = float(func(X, Y))
            if measure == "cka" and groups is not None:
                est = Estimate("mean")
                est.add_replicates(value, cka_replicates(X, Y, groups, seed))
        out[(a, b)] = (value, float(func(X, Y[shuffle])), est)
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
    """``(features, splits, groups)`` for ``level``.

    "atom": rows as given, splits grouped by structure; "atom-ungrouped": the study's per-atom split;
    "structure": progressive cumulants of each model's atom features compressed to
    :func:`~mlipspace.experiments._common.structure_width` principal components fitted on the
    training structures' atoms, so each split carries its own features (``(train, test, features)``).
    ``groups`` is the structure of each row (the unit the intervals resample).
    """
    from mlipspace.experiments.distributed import StoreFeatures

    if level in ("atom", "atom-ungrouped"):  # StoreFeatures stay as they are: tasks read them from the store
        return features if isinstance(features, StoreFeatures) else dict(features), atom_splits(rows, seeds, n_test, grouped=level == "atom"), np.asarray(rows["frame"])
    if level == "structure":
        splits = []
        for train, test in structure_splits(rows, seeds):
            feats = {name: cumulant_features(X, rows, order, train=train,
                                             n_components=max(1, structure_width(len(train), order, X.shape[1])))
                     for name, X in features.items()}
            splits.append((train, test, feats))
        return dict(features), splits, None
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
    lfre_max_test: int | None = 500,
    lfre_mode: str = "exact",
    subsets: Mapping[str, str] | None = None,
    progress=None,
    client=None,
    pointwise: dict | None = None,
    n_jobs: int | None = None,
) -> list[dict]:
    """GFRE/LFRE of every ordered pair of models (source ≠ target) on ``layer`` features.

    ``features`` maps model name -> (n_atoms, d) matrix, all rows described by ``rows``; when the
    models' own row tables are given in ``row_tables`` they are checked against ``rows`` first.
    ``level="atom-ungrouped"`` uses the study's per-atom split instead of the grouped one (test atoms'
    structure-mates train: optimistic, for comparison). ``level="structure"`` compares progressive
    cumulants of order ``order`` per structure of each model's leading principal components
    (``components`` in the record; see :func:`level_features`). LFRE's k is
    :func:`mlipspace.metrics.default_k` at both levels.
    ``subsets`` (atom levels) maps an analysis name to a test subset of :class:`TestSubsets`
    (``"covered"``, ``"no-twins"``): the FREs over it and the share of test atoms outside it are
    added as records of that analysis.
    ``client``: run on a Dask cluster (``features`` a
    :class:`~mlipspace.experiments.distributed.StoreFeatures`; see :func:`pair_errors`).
    ``pointwise``: a dict that receives each split's pointwise errors; ``n_jobs``: threads without a
    client (see :func:`pair_errors`).
    Returns one record per (source, target, metric), ``analysis="cross-model"``.
    """
    names = list(features)
    if subsets and level == "structure":
        raise InputError("test subsets (coverage, twins) are defined for atom-level comparisons only")
    if len(names) < 2:
        raise InputError(f"cross-model comparison needs at least 2 models, got {names}")
    for name, table in (row_tables or {}).items():
        check_aligned(rows, table, ("dataset", name))
    check_features(features, rows)
    feats, splits, groups = level_features(features, rows, level=level, order=order, seeds=seeds, n_test=n_test)
    pairs = [(a, b) for a in names for b in names if a != b]
    extra = None
    if level == "structure":
        extra = {p: {"order": int(order), "components": int(splits[0][2][p[0]].shape[1] // order)} for p in pairs}
    return pair_errors(
        feats, pairs, splits, groups=groups, metrics=metrics, level=level, layer=layer, dataset=dataset,
        fingerprints=fingerprints, lfre_max_test=lfre_max_test, lfre_mode=lfre_mode, extra=extra,
        progress=progress,
        subsets=TestSubsets(subsets, rows["frame"]) if subsets else None, client=client, pointwise=pointwise,
        n_jobs=n_jobs,
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
