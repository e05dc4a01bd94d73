"""Records: the one currency between the analyses and the report.

Every analysis returns a list of *records*: flat dicts with one number each (``value``, with its
``spread`` over split seeds) and the context needed to read it (analysis, source, target, metric,
level, layer, sizes, dataset, model fingerprints). Records are plain JSON types so that
``results.json`` is a faithful, deterministic dump of them. Experiments build them with
:func:`record`; the report and users read them with :func:`select`, :func:`matrix` and
:func:`mean_off_diagonal`.
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
    "ci_low",
    "ci_high",
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
SIMILARITY_METRICS = ("cka", "cka_debiased", "rbf_cka", "mknn", "procrustes", "cknna")
#: Everything a cross-model comparison accepts.
COMPARE_METRICS = FRE_METRICS + SIMILARITY_METRICS


def fingerprint_id(fingerprint: Mapping | None) -> str:
    """A short, stable id (12 hex digits of a sha256) of a model's fingerprint dict ("" if none)."""
    if not fingerprint:
        return ""
    blob = json.dumps(jsonable(fingerprint), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def jsonable(obj):
    """Plain-JSON copy of ``obj`` (numpy scalars/arrays, tuples, sets made serialisable)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(jsonable(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
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
    ci: tuple[float, float] | None = None,
    ci_method: str | None = None,
    reason: str | None = None,
    **extra,
) -> dict:
    """One tidy record: ``value`` = mean of ``values`` (one per seed), ``spread`` = their sample std,
    ``ci_low``/``ci_high`` = its 95 % interval.

    ``ci`` comes from the analysis (a cluster bootstrap, :class:`mlipspace.intervals.Estimate`); when
    it is not given, a Student-t interval over the seeds is used (``ci_method="t-seeds"``), which
    needs two or more values. With a ``reason`` (the method is outside its valid regime, see
    :mod:`mlipspace.intervals`) the record carries ``value``/``spread``/``ci_*`` = ``None`` and the
    reason instead of a number. ``spread`` is 0.0 for a single value. ``fingerprints`` maps model
    name -> fingerprint dict; the record keeps a short id of the source's and target's.
    """
    from mlipspace.intervals import seeds_interval

    vals = np.atleast_1d(np.asarray([] if reason else values, dtype=np.float64))
    if vals.size == 0 and not reason:
        raise InputError(f"{analysis}: no values for {source} -> {target} ({metric})")
    if not reason and ci is None:
        ci = seeds_interval(vals)
        ci_method = "t-seeds"
        if ci is None:
            raise InputError(f"{analysis}: {source} -> {target} ({metric}) has one value and no interval")
    fps = fingerprints or {}
    value = float(vals.mean()) if vals.size else None
    rec = {
        "analysis": analysis,
        "source": source,
        "target": target,
        "metric": metric,
        "level": level,
        "layer": layer,
        "value": value,
        "spread": (float(vals.std(ddof=1)) if vals.size > 1 else 0.0) if vals.size else None,
        "ci_low": float(ci[0]) if ci is not None else None,
        "ci_high": float(ci[1]) if ci is not None else None,
        "n_train": int(n_train),
        "n_test": int(n_test),
        "n_seeds": int(vals.size),
        "dataset": dataset,
        "source_fingerprint": fingerprint_id(fps.get(source)),
        "target_fingerprint": fingerprint_id(fps.get(target)),
    }
    if reason:
        extra["reason"] = reason
    elif ci_method:
        extra["ci_method"] = ci_method
    for key in sorted(extra):
        rec[key] = jsonable(extra[key])
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


def matrix(records: Sequence[Mapping], metric: str, level: str = "atom", *, analysis: str = "cross-model",
           names: Sequence[str] | None = None, layer: str | None = None, fields: Sequence[str] = ("value", "spread")):
    """``(names, M_value, M_spread)``: one matrix per field of ``fields`` (rows = source, columns =
    target; NaN on the diagonal and where a record has no number, e.g. ``value: None`` with a reason)."""
    recs = select(records, analysis=analysis, metric=metric, level=level)
    if layer is not None:
        recs = select(recs, layer=layer)
    if names is None:
        seen = {}
        for r in recs:
            seen.setdefault(r["source"], None)
            seen.setdefault(r["target"], None)
        names = list(seen)
    index = {n: i for i, n in enumerate(names)}
    mats = [np.full((len(names), len(names)), np.nan) for _ in fields]
    for r in recs:
        if r["source"] in index and r["target"] in index:
            for M, f in zip(mats, fields):
                v = r.get(f)
                M[index[r["source"]], index[r["target"]]] = np.nan if v is None else v
    return (list(names), *mats)


def off_diagonal(
    records: Sequence[Mapping],
    metric: str,
    level: str = "atom",
    *,
    analysis: str = "cross-model",
    families: Mapping[str, str] | None = None,
    across_families: bool = False,
    within_families: bool = False,
) -> list[Mapping]:
    """The off-diagonal records with a number; only pairs of different (or, with ``within_families``,
    the same) families when asked."""
    out = []
    for r in select(records, analysis=analysis, metric=metric, level=level):
        if r["source"] == r["target"] or r.get("value") is None:
            continue
        if families is not None and (across_families or within_families):
            same = families.get(r["source"], r["source"]) == families.get(r["target"], r["target"])
            if (across_families and same) or (within_families and not same):
                continue
        out.append(r)
    return out


def mean_interval(records: Sequence[Mapping]) -> tuple[float, float, float]:
    """``(mean, low, high)`` of the records' values, the interval being the mean of their intervals.

    The mean of the bounds is the interval of the mean when the records' errors move together
    (they share test structures and splits), and wider otherwise: conservative. NaNs without records.
    """
    if not records:
        return float("nan"), float("nan"), float("nan")
    v = np.array([[r["value"], r.get("ci_low", r["value"]), r.get("ci_high", r["value"])] for r in records],
                 dtype=np.float64)
    return tuple(float(x) for x in v.mean(axis=0))


def mean_off_diagonal(records: Sequence[Mapping], metric: str, level: str = "atom", **where) -> float:
    """Mean of the off-diagonal values (``where``: the options of :func:`off_diagonal`, e.g.
    ``families=..., across_families=True``); NaN if there is no such pair."""
    return mean_interval(off_diagonal(records, metric, level, **where))[0]
