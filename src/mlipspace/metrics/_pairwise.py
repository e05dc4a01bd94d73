"""All ordered pairs of feature spaces in one call, as a tidy list of records.

Each space is validated and scaled (on the shared training rows) once; for LFRE the neighbours and
the source-side SVDs of every test batch are computed once per source and reused for all its
targets, so N spaces cost N neighbour searches and N x (batches) decompositions instead of N^2.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence

import numpy as np

from mlipspace.errors import InputError
from mlipspace.metrics._checks import as_matrix, resolve_split
from mlipspace.metrics._config import resolve
from mlipspace.metrics._global import global_measure
from mlipspace.metrics.reconstruction import LocalProblem, _scale, check_lfre_k, default_k, rms

METRICS = ("gfre", "gfrd", "lfre")


def pairwise(features: Mapping[str, np.ndarray], metric: str | Sequence[str] = "gfre", *,
             k: int | None = None, train_idx=None, test_idx=None, diagonal: bool = True,
             device: str = "auto", mode: str = "exact", n_jobs: int | None = None,
             pointwise: bool = False, pairs: Sequence[tuple[str, str]] | None = None,
             scaled: MutableMapping[str, np.ndarray] | None = None, **engines) -> list[dict]:
    """Reconstruction measures between every ordered pair (source -> target) of ``features``.

    ``features``: name -> (n, d) array, rows aligned across spaces. ``metric``: one of
    ``"gfre"``, ``"gfrd"``, ``"lfre"`` or a list of them. ``k``: LFRE's neighbour count; None uses
    :func:`~mlipspace.metrics.default_k` per pair. Same split for all pairs (scikit-matter default
    when no indices are given). ``engines``: ``engine``, ``fast_precision``, ``knn_precision``,
    ``svd_driver`` (see :mod:`mlipspace.metrics._config`). ``pairs`` restricts the work to those
    ordered pairs (default: all, diagonal included unless ``diagonal=False``). ``scaled``: a dict the
    caller keeps for one set of features and one training split; each space's checked and scaled
    copy is stored there, and later calls take it from there instead of reading ``features[name]``
    (calls over a few pairs each, e.g. on a cluster, then scale each space once; same results).

    Returns records ``{"source", "target", "metric", "value", "n_train", "n_test"}`` (plus ``"k"``
    for LFRE and ``"pointwise"`` when ``pointwise=True``), diagonal included unless
    ``diagonal=False``.
    """
    settings = resolve(**engines)
    metrics = [metric] if isinstance(metric, str) else list(metric)
    for m in metrics:
        if m not in METRICS:
            raise InputError(f"unknown metric {m!r}; choose from {', '.join(METRICS)}")
    if not isinstance(features, Mapping) or len(features) == 0:
        raise InputError("features must be a non-empty dict of name -> (n, d) array")
    names = [str(k) for k in features]
    cache = {} if scaled is None else scaled
    got = {name: cache.get(name) for name in names}  # read once: a bounded cache may drop entries meanwhile
    arrays = {name: as_matrix(features[key], name) for name, key in zip(names, features) if got[name] is None}
    shapes = {name: (A if A is not None else arrays[name]).shape for name, A in got.items()}
    if len({sh[0] for sh in shapes.values()}) != 1:
        sizes = ", ".join(f"{k}: {sh[0]}" for k, sh in shapes.items())
        raise InputError(f"feature spaces have different row counts ({sizes}); rows must be aligned")
    train, test = resolve_split(shapes[names[0]][0], train_idx, test_idx)
    for name, A in arrays.items():
        _, mean, scale = _scale(A, train, name)
        got[name] = cache[name] = (A - mean) / scale
    scaled = got
    every = [(s, t) for s in names for t in names if diagonal or s != t]
    if pairs is None:
        pairs = every
    else:
        pairs = [(str(s), str(t)) for s, t in pairs]
        unknown = sorted({n for p in pairs for n in p} - set(names))
        if unknown:
            raise InputError(f"pairs name spaces not in features: {', '.join(unknown)}")

    records = []
    for m in metrics:
        if m in ("gfre", "gfrd"):
            for s, t in pairs:
                pw, n_train = global_measure(scaled[s], scaled[t], train, test, kind=m, names=(s, t), scaled=True,
                                             engine=settings["engine"])
                records.append(_record(s, t, m, pw, n_train, test.size, pointwise))
        else:
            for s in names:
                Xs = scaled[s]
                targets = [t for (ss, t) in pairs if ss == s]
                if not targets:
                    continue
                by_k: dict[int, list[str]] = {}
                for t in targets:
                    kt = default_k(Xs.shape[1], scaled[t].shape[1], train.size) if k is None else k
                    by_k.setdefault(check_lfre_k(kt, train.size), []).append(t)
                for kt, ts in by_k.items():
                    prob = LocalProblem(Xs[train], Xs[test], train, kt, device=device, mode=mode, n_jobs=n_jobs,
                                        settings=settings)
                    outs = prob.run([(scaled[t][train], scaled[t][test]) for t in ts])
                    for t, pw in zip(ts, outs):
                        rec = _record(s, t, "lfre", pw, train.size, test.size, pointwise)
                        rec["k"] = kt
                        records.append(rec)
    order = {(s, t): i for i, (s, t) in enumerate(pairs)}
    records.sort(key=lambda r: (metrics.index(r["metric"]), order[(r["source"], r["target"])]))
    return records


def _record(s, t, m, pw, n_train, n_test, pointwise):
    rec = {"source": s, "target": t, "metric": m, "value": rms(pw), "n_train": int(n_train), "n_test": int(n_test)}
    if pointwise:
        rec["pointwise"] = pw
    return rec
