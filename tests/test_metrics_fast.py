"""LFRE ``mode="fast"``: the mixed-precision Gram engine (k <= d: float64 CV, float32 refit where
well conditioned) stays within 1e-4 of exact mode on structured data, refits small-cutoff rows in
float64, works without torch and for several targets."""

from __future__ import annotations

import numpy as np
import pytest

import mlipspace.metrics._gram as gram
import mlipspace.metrics.reconstruction as rec
from mlipspace.metrics import config_context, pairwise, pointwise_lfre, rms


def structured(n=900, dx=40, dy=60, latent=12, seed=0):
    """The benchmark's model at a small size: X linear in a latent set + noise, Y nonlinear + noise."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, latent))
    X = Z @ rng.standard_normal((latent, dx)) / np.sqrt(latent) + 0.3 * rng.standard_normal((n, dx))
    Y = np.tanh(Z @ rng.standard_normal((latent, dy)) / np.sqrt(latent)) + 0.1 * rng.standard_normal((n, dy))
    return X, Y


def fast_problem(X, Y, k, test, n_jobs=1):
    train = np.setdiff1d(np.arange(len(X)), test)
    Xtr, mx, sx = rec._scale(X, train, "X")
    Ytr, my, sy = rec._scale(Y, train, "Y")
    prob = rec.LocalProblem(Xtr, (X[test] - mx) / sx, train, k, device="cpu", mode="fast", n_jobs=n_jobs)
    assert prob.fast_gram
    return prob.run([(Ytr, (Y[test] - my) / sy)])[0], prob.n_fallback


@pytest.mark.parametrize("k,max_redo", [(16, 150), (40, 0)])
def test_fast_float32_engine_agrees_with_exact_mode(k, max_redo):
    """k = 40: every refit in float32; k = 16 (8-row folds, 40 columns): the CV picks small
    cutoffs and most rows are refitted in float64."""
    X, Y = structured()
    test = np.arange(0, 900, 6)
    exact = pointwise_lfre(X, Y, k=k, test_idx=test, device="cpu")
    fast, n_redo = fast_problem(X, Y, k, test, n_jobs=2)
    assert n_redo <= max_redo
    assert np.max(np.abs(fast - exact)) <= 1e-4
    assert abs(rms(fast) - rms(exact)) <= 1e-5


def test_fast_without_torch_uses_numpy(monkeypatch):
    X, Y = structured(seed=1)
    test = np.arange(0, 900, 9)
    with_torch = pointwise_lfre(X, Y, k=32, test_idx=test, device="cpu", mode="fast")
    monkeypatch.setattr(rec, "_torch_eigh", lambda n_rows=None: None)
    numpy_only = pointwise_lfre(X, Y, k=32, test_idx=test, device="cpu", mode="fast")
    exact = pointwise_lfre(X, Y, k=32, test_idx=test, device="cpu")
    assert np.max(np.abs(numpy_only - exact)) <= 1e-4
    assert np.max(np.abs(numpy_only - with_torch)) <= 1e-4


def test_fast_small_cutoff_rows_are_redone_in_float64():
    """Y (nearly) linear in X: the CV picks tiny cutoffs, below what float32 resolves; those rows are
    refitted in float64 and agree with exact mode."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((400, 30))
    Y = X @ rng.standard_normal((30, 8)) + 1e-6 * rng.standard_normal((400, 8))
    test = np.arange(0, 400, 8)
    fast, n_redo = fast_problem(X, Y, 20, test)
    assert n_redo > 0
    exact = pointwise_lfre(X, Y, k=20, test_idx=test, device="cpu")
    assert np.max(np.abs(fast - exact)) <= 1e-6


def test_fast_guard_off_shows_why_it_exists(monkeypatch):
    """Without the guard those rows keep a float32 refit (documents the guard's purpose)."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((400, 30))
    Y = X @ rng.standard_normal((30, 8)) + 1e-6 * rng.standard_normal((400, 8))
    test = np.arange(0, 400, 8)
    monkeypatch.setattr(gram, "FAST32_GUARD", 0.0)
    fast, n_redo = fast_problem(X, Y, 20, test)
    assert n_redo == 0
    assert np.all(np.isfinite(fast))


def test_fast_pairwise_targets_share_the_source():
    X, Y = structured(n=500, seed=2)
    feats = {"x": X, "y": Y, "y2": np.cos(Y[:, :45])}
    test = np.arange(0, 500, 5)
    recs = pairwise(feats, "lfre", k=30, test_idx=test, device="cpu", mode="fast", pointwise=True)
    for r in recs:
        if r["source"] != "x" or r["target"] == "x":
            continue
        one = pointwise_lfre(X, feats[r["target"]], k=30, test_idx=test, device="cpu")
        assert np.max(np.abs(r["pointwise"] - one)) <= 1e-4


def test_fast_float64_engine_switch():
    """``fast_precision="float64"`` keeps the previous fast path (Gram engine without certificate)."""
    X, Y = structured(n=400, seed=4)
    test = np.arange(0, 400, 10)
    a = pointwise_lfre(X, Y, k=20, test_idx=test, device="cpu", mode="fast", fast_precision="float64")
    with config_context(fast_precision="float64"):
        assert np.array_equal(a, pointwise_lfre(X, Y, k=20, test_idx=test, device="cpu", mode="fast"))
    exact = pointwise_lfre(X, Y, k=20, test_idx=test, device="cpu")
    assert np.max(np.abs(a - exact)) <= 1e-6


def test_torch_is_imported_only_when_it_pays(monkeypatch):
    import sys

    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert gram._torch_eigh(100) is None  # small problem: no import
    assert "torch" not in sys.modules
