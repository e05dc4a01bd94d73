"""rank_agreement: orientation, symmetric/directed pairs, averaging, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from mlipspace.errors import InputError
from mlipspace.metrics.similarity import rank_agreement

MODELS = ["chgnet", "sevennet", "hienet", "diep", "mace"]


def _records(seed=0):
    """Directed GFRE for every ordered pair; CKA and Procrustes once per unordered pair."""
    rng = np.random.default_rng(seed)
    truth = {}
    recs = []
    for i, a in enumerate(MODELS):
        for j, b in enumerate(MODELS):
            if i < j:
                truth[(a, b)] = truth[(b, a)] = rng.uniform()
    for (a, b), t in truth.items():
        recs.append({"model_a": a, "model_b": b, "metric": "gfre", "value": 1 - t})  # lower = closer
    for (a, b), t in truth.items():
        if a < b:
            recs.append({"model_a": a, "model_b": b, "metric": "cka", "value": t**2})
            recs.append({"model_a": b, "model_b": a, "metric": "procrustes", "value": 1.5 - t})
    for a in MODELS:  # diagonal entries: trivially perfect, must be left out
        recs.append({"model_a": a, "model_b": a, "metric": "cka", "value": 1.0})
        recs.append({"model_a": a, "model_b": a, "metric": "gfre", "value": 0.0})
    return recs, truth


def _by_metrics(out):
    return {(r["metric_a"], r["metric_b"]): r for r in out}


def test_consistent_metrics_agree_perfectly_after_orientation():
    recs, _ = _records()
    out = _by_metrics(rank_agreement(recs))
    assert set(out) == {("cka", "gfre"), ("cka", "procrustes"), ("gfre", "procrustes")}
    for r in out.values():
        assert r["spearman"] == pytest.approx(1.0)
        assert r["kendall"] == pytest.approx(1.0)
    # symmetric vs directed: every ordered off-diagonal pair; symmetric vs symmetric: unordered pairs
    assert out[("cka", "gfre")]["n_pairs"] == 20
    assert out[("cka", "procrustes")]["n_pairs"] == 10


def test_rank_correlations_equal_scipy_on_noisy_values():
    rng = np.random.default_rng(1)
    recs, truth = _records()
    noisy = []
    for (a, b), t in truth.items():
        if a < b:
            noisy.append({"model_a": a, "model_b": b, "metric": "mknn", "value": t + rng.normal(0, 0.3)})
    out = _by_metrics(rank_agreement(recs + noisy, metrics=["cka", "mknn"]))
    r = out[("cka", "mknn")]
    pairs = sorted((a, b) for (a, b) in truth if a < b)
    cka = {(x["model_a"], x["model_b"]): x["value"] for x in recs if x["metric"] == "cka"}
    mk = {(x["model_a"], x["model_b"]): x["value"] for x in noisy}
    x = [cka[p] for p in pairs]
    y = [mk[p] for p in pairs]
    assert r["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic)
    assert r["kendall"] == pytest.approx(stats.kendalltau(x, y).statistic)
    assert r["n_pairs"] == 10


def test_anti_ordered_metric_gives_minus_one_and_repeats_are_averaged():
    recs, truth = _records()
    extra = []
    for (a, b), t in truth.items():
        if a < b:  # two seeds whose mean is -t: ranks pairs the opposite way
            extra.append({"model_a": a, "model_b": b, "metric": "odd", "value": -t + 0.1})
            extra.append({"model_a": a, "model_b": b, "metric": "odd", "value": -t - 0.1})
    out = _by_metrics(rank_agreement(recs + extra, metrics=["cka", "odd"], higher_is_better={"odd": True},
                                     symmetric=["odd"]))
    assert out[("cka", "odd")]["spearman"] == pytest.approx(-1.0)


def test_too_few_pairs_give_nan_and_unknown_orientation_raises():
    recs = [
        {"model_a": "a", "model_b": "b", "metric": "cka", "value": 0.5},
        {"model_a": "a", "model_b": "b", "metric": "lfre", "value": 0.2},
    ]
    (r,) = rank_agreement(recs)
    assert r["n_pairs"] == 1 and math.isnan(r["spearman"])
    with pytest.raises(InputError, match="orientation of metric 'mystery'"):
        rank_agreement(recs + [{"model_a": "a", "model_b": "b", "metric": "mystery", "value": 1}])
    with pytest.raises(InputError, match="lacks the key 'value'"):
        rank_agreement([{"model_a": "a", "model_b": "b", "metric": "cka"}])
