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


def matrix(records: Sequence[Mapping], metric: str, level: str = "atom", *, analysis: str = "cross-model",
           names: Sequence[str] | None = None, layer: str | None = None):
    """``(names, M, S)``: value and spread matrices (rows = source, columns = target, NaN diagonal)."""
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
    M = np.full((len(names), len(names)), np.nan)
    S = np.full_like(M, np.nan)
    for r in recs:
        if r["source"] in index and r["target"] in index:
            M[index[r["source"]], index[r["target"]]] = r["value"]
            S[index[r["source"]], index[r["target"]]] = r["spread"]
    return list(names), M, S


def mean_off_diagonal(
    records: Sequence[Mapping],
    metric: str,
    level: str = "atom",
    *,
    analysis: str = "cross-model",
    families: Mapping[str, str] | None = None,
    across_families: bool = False,
) -> float:
    """Mean of the off-diagonal entries; with ``across_families`` only pairs of different families.

    NaN if there is no such pair.
    """
    vals = []
    for r in select(records, analysis=analysis, metric=metric, level=level):
        if r["source"] == r["target"]:
            continue
        if across_families and families is not None:
            if families.get(r["source"], r["source"]) == families.get(r["target"], r["target"]):
                continue
        vals.append(r["value"])
    return float(np.mean(vals)) if vals else float("nan")
