"""Every measure in mlipspace.metrics.MEASURES behaves as its declaration says, on random data."""

from __future__ import annotations

import numpy as np
import pytest

import mlipspace.metrics as metrics
from mlipspace.metrics import MEASURES, TRANSFORMATIONS


def _orthogonal(d, seed):
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def transform(name: str, A: np.ndarray, seed: int) -> np.ndarray:
    """``A`` under the named transformation of :data:`TRANSFORMATIONS` (random but seeded)."""
    rng = np.random.default_rng(seed)
    d = A.shape[1]
    if name in ("rotation", "rotation_of_source"):
        return A @ _orthogonal(d, seed)
    if name == "isotropic_scale":
        return 3.7 * A
    if name == "shift":
        return A + rng.normal(scale=5.0, size=d)
    if name == "permutation_of_features":
        return A[:, rng.permutation(d)]
    if name == "invertible_linear":
        return A @ (np.diag(np.geomspace(0.05, 20, d)) @ _orthogonal(d, seed))
    raise AssertionError(name)


def data(seed=0, n=90, dx=6, dy=5):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, 4))
    X = np.tanh(Z @ rng.normal(size=(4, dx))) + 0.3 * rng.normal(size=(n, dx))
    Y = Z @ rng.normal(size=(4, dy)) + 0.3 * rng.normal(size=(n, dy)) + 2.0
    return X, Y


def two_samples(X, Y):
    """X and Y cut to their common width: two samples of one space for ``samples=True`` measures."""
    d = min(X.shape[1], Y.shape[1])
    return X[:, :d], Y[:, :d]


def value(m, X, Y):
    kw = {"k": 6} if m.name in ("lfre", "mknn", "cknna") else {}
    return float(m.func(X, Y, **kw))


def test_every_measure_is_exported_with_a_complete_declaration():
    assert set(MEASURES) >= {"gfre", "gfrd", "lfre", "cka", "cka_debiased", "rbf_cka", "mknn", "procrustes",
                             "cknna", "mmd"}
    for name, m in MEASURES.items():
        assert m.name == name and callable(m.func)
        assert m.invariant_to and m.invariant_to <= set(TRANSFORMATIONS)
        assert not (m.invariant_to & m.not_invariant_to)
        assert getattr(metrics, m.func.__name__, None) is m.func or m.func.__name__.startswith("_")


def test_similarity_measures_are_importable_from_the_package():
    for name in ("linear_cka", "rbf_cka", "mutual_knn", "pointwise_mutual_knn", "procrustes_distance",
                 "similarity_with_uncertainty", "rank_agreement", "config_context", "default_k", "cknna", "mmd",
                 "mmd_permutation_test"):
        assert callable(getattr(metrics, name))
    import importlib

    assert callable(importlib.import_module("mlipspace.metrics").pairwise)  # the function, not a module


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_declared_invariances_hold(name):
    m = MEASURES[name]
    X, Y = data()
    if m.samples:
        X, Y = two_samples(X, Y)
    base = value(m, X, Y)
    for i, t in enumerate(sorted(m.invariant_to)):
        if m.samples:  # two samples of one space: the same map on both
            S = transform(t, np.vstack([X, Y]), seed=i)
            moved = [(S[: len(X)], S[len(X):])]
        elif t.endswith("_of_source"):
            moved = [(transform(t, X, seed=i), Y)]
        else:
            moved = [(transform(t, X, seed=i), Y), (X, transform(t, Y, seed=i + 10))]
        for A, B in moved:
            assert abs(value(m, A, B) - base) <= 1e-8, (name, t)


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_declared_non_invariances_are_real(name):
    m = MEASURES[name]
    X, Y = data(seed=1)
    for i, t in enumerate(sorted(m.not_invariant_to)):
        if m.samples:
            X, Y = two_samples(X, Y)
            S = transform(t, np.vstack([X, Y]), seed=i)
            changes = [abs(value(m, S[: len(X)], S[len(X):]) - value(m, X, Y))]
        else:
            base = value(m, X, Y)
            changes = [abs(value(m, transform(t, X, seed=i), Y) - base),
                       abs(value(m, X, transform(t, Y, seed=i)) - base)]
        assert max(changes) > 1e-3, (name, t, changes)


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_symmetry_is_as_declared(name):
    m = MEASURES[name]
    X, Y = data(seed=2)
    if m.samples:
        X, Y = two_samples(X, Y)
    diff = abs(value(m, X, Y) - value(m, Y, X))
    if m.symmetric:
        assert diff <= 1e-8
    else:
        assert diff > 1e-3  # declared asymmetric: shown on these data
