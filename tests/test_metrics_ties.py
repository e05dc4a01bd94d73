"""Exact neighbour-distance ties (duplicated rows) are broken by row index; LFRE is order independent."""

from __future__ import annotations

import numpy as np
import pytest

from mlipspace.metrics import pointwise_lfre
from mlipspace.metrics._knn import knn_indices


def brute_knn(Xtr, Xte, k, key):
    out = []
    for x in Xte:
        d = ((Xtr - x) ** 2).sum(1)
        out.append(np.lexsort((key, d))[:k])
    return np.array(out)


def duplicated(seed=0, n_unique=40, copies=4, x_only=False, d=5):
    """Rows repeated ``copies`` times (symmetry-equivalent atoms); with ``x_only`` Y rows differ."""
    rng = np.random.default_rng(seed)
    Xu = rng.standard_normal((n_unique, d))
    Yu = np.tanh(Xu @ rng.standard_normal((d, 6)))
    X = np.repeat(Xu, copies, axis=0)
    Y = np.repeat(Yu, copies, axis=0)
    if x_only:
        Y = Y + 0.1 * rng.standard_normal(Y.shape)
    return X, Y


def test_knn_matches_brute_force_with_ties():
    X, _ = duplicated()
    rng = np.random.default_rng(1)
    key = rng.permutation(len(X))
    Xte = np.vstack([X[:10], rng.standard_normal((10, 5))])
    for k in (1, 3, 4, 9, 30):
        got = knn_indices(X, Xte, k, key, chunk=17)
        np.testing.assert_array_equal(got, brute_knn(X, Xte, k, key))


@pytest.mark.parametrize("copies, extra", [(4, 32), (40, 8)])
def test_knn_float32_preselection_matches_brute_force_with_ties(copies, extra):
    """One float32 pass plus exact float64 re-ranking: identical rows still tie and go lowest key
    first; rows with more ties than ``extra`` at the boundary take the float64 passes."""
    X, _ = duplicated(n_unique=30, copies=copies)
    rng = np.random.default_rng(1)
    key = rng.permutation(len(X))
    Xte = np.vstack([X[: 3 * copies : copies], rng.standard_normal((10, 5))])
    X32 = X.astype(np.float32)
    for k in (1, 3, 9, 30):
        got = knn_indices(X, Xte, k, key, chunk=17, train_f32=X32, extra=extra)
        np.testing.assert_array_equal(got, brute_knn(X, Xte, k, key))


def test_knn_torch_twin_agrees():
    torch = pytest.importorskip("torch")
    from mlipspace.metrics._knn import knn_indices_torch

    X, _ = duplicated(seed=3)
    key = np.random.default_rng(2).permutation(len(X))
    Xte = X[::7] + 0.0
    got = knn_indices_torch(torch.as_tensor(X), torch.as_tensor(Xte), 6, torch.as_tensor(key), chunk=23)
    np.testing.assert_array_equal(got.numpy(), knn_indices(X, Xte, 6, key))


@pytest.mark.parametrize("x_only", [False, True])
def test_lfre_does_not_depend_on_training_order(x_only):
    # 2-D features and k = 14 > groups of 4: the local fit cannot interpolate the group means, so
    # both the choice among tied rows and their order (the CV folds) change the values
    X, Y = duplicated(x_only=x_only, d=2)
    rng = np.random.default_rng(4)
    test = rng.choice(len(X), 30, replace=False)
    train = np.setdiff1d(np.arange(len(X)), test)
    ref = pointwise_lfre(X, Y, k=14, train_idx=train, test_idx=test, device="cpu")
    for seed in range(3):
        shuffled = np.random.default_rng(seed).permutation(train)
        got = pointwise_lfre(X, Y, k=14, train_idx=shuffled, test_idx=test, device="cpu")
        # only the rounding of the scaler's sums changes; another neighbour choice would move values by ~1e-2
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


def test_fast_lfre_does_not_depend_on_training_order():
    """mode="fast" with k <= d (mixed-precision engine): tied rows are still chosen by row index,
    so shuffling ``train_idx`` changes nothing beyond float32 rounding."""
    Xd, Yd = duplicated(seed=8, d=16, x_only=True)
    rng = np.random.default_rng(9)
    # test rows of their own (a test row with copies among its neighbours would be interpolated
    # from those copies whatever else is chosen)
    X = np.vstack([Xd, rng.standard_normal((30, 16))])
    Y = np.vstack([Yd, np.tanh(X[len(Xd):, :6]) + 0.1 * rng.standard_normal((30, 6))])
    test = np.arange(len(Xd), len(X))
    train = np.arange(len(Xd))
    ref = pointwise_lfre(X, Y, k=14, train_idx=train, test_idx=test, device="cpu", mode="fast")
    exact = pointwise_lfre(X, Y, k=14, train_idx=train, test_idx=test, device="cpu")
    np.testing.assert_allclose(ref, exact, rtol=0, atol=1e-4)
    for seed in range(3):
        shuffled = np.random.default_rng(seed).permutation(train)
        got = pointwise_lfre(X, Y, k=14, train_idx=shuffled, test_idx=test, device="cpu", mode="fast")
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


def test_lfre_of_duplicated_rows_does_not_depend_on_row_order():
    """Permuting the dataset (indices mapped along, training rows kept in ascending order) leaves
    every pointwise value unchanged when tied rows are identical in X and Y."""
    X, Y = duplicated(seed=5)
    n = len(X)
    rng = np.random.default_rng(6)
    test = rng.choice(n, 25, replace=False)
    train = np.setdiff1d(np.arange(n), test)
    ref = pointwise_lfre(X, Y, k=12, train_idx=train, test_idx=test, device="cpu")
    for seed in range(3):
        perm = np.random.default_rng(10 + seed).permutation(n)  # new row r holds old row perm[r]
        inv = np.argsort(perm)
        # same training sequence as before (so the same CV folds), new row labels
        got = pointwise_lfre(X[perm], Y[perm], k=12, train_idx=inv[train], test_idx=inv[test], device="cpu")
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


def test_duplicated_test_rows_get_identical_errors():
    X, Y = duplicated(seed=7)
    test = np.arange(0, 40)  # ten unique rows, four copies each, all on the test side
    vals = pointwise_lfre(X, Y, k=8, test_idx=test, device="cpu")
    np.testing.assert_array_equal(vals.reshape(10, 4), np.repeat(vals.reshape(10, 4)[:, :1], 4, axis=1))


def test_neighbourhood_of_identical_rows_predicts_their_mean():
    """k identical neighbours (k <= multiplicity of a duplicated row): the centred neighbourhood is
    exactly zero, nothing is fitted, the prediction is the mean Y of the k lowest-index copies.
    (Rounding noise from a naive mean could otherwise be 'fitted' into arbitrarily large errors.)"""
    rng = np.random.default_rng(0)
    X = np.repeat(rng.standard_normal((20, 3)), 10, axis=0)
    Y = np.repeat(rng.standard_normal((20, 4)), 10, axis=0) + 0.01 * rng.standard_normal((200, 4))
    test = np.arange(0, 200, 7)
    train = np.setdiff1d(np.arange(200), test)
    got = pointwise_lfre(X, Y, k=5, train_idx=train, test_idx=test, device="cpu")
    # the scaler is affine per space, so errors in scaled units = raw errors / Y's global scale
    Yt = Y[train]
    scale = np.sqrt(((Yt - Yt.mean(0)) ** 2).mean(0).sum())
    for t, val in zip(test, got):
        group = train[train // 10 == t // 10][:5]
        expected = np.linalg.norm(Y[t] - Y[group].mean(0)) / scale
        assert abs(val - expected) < 1e-12


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_knn_float32_near_ties_at_mixed_scales_match_brute_force(seed):
    """Near-duplicate rows (distances equal to ~1e-9, far below float32 resolution) around centres
    whose norms span four decades: the float32 values decide only separated neighbours, every
    overlapping group is ranked exactly, as the float64 brute force ranks it."""
    rng = np.random.default_rng(seed)
    d = 12
    centres = rng.standard_normal((30, d)) * np.geomspace(0.1, 1000.0, 30)[:, None]
    Xtr = np.repeat(centres, 12, axis=0)
    Xtr = Xtr + rng.standard_normal(Xtr.shape) * rng.choice([0.0, 1e-9, 1e-6, 1e-3], (len(Xtr), 1)) * (
        np.linalg.norm(Xtr, axis=1, keepdims=True))
    Xtr = np.vstack([Xtr, rng.standard_normal((200, d))])
    Xte = np.vstack([centres[::3] + 1e-8, rng.standard_normal((10, d)), Xtr[::37]])
    key = rng.permutation(len(Xtr))
    for k in (1, 5, 12, 40):
        got = knn_indices(Xtr, Xte, k, key, chunk=97, train_f32=Xtr.astype(np.float32), extra=16)
        np.testing.assert_array_equal(got, brute_knn(Xtr, Xte, k, key))


def test_rank_intervals_groups_by_all_earlier_bounds_not_the_previous_one():
    """A wide interval (a large-norm row's loose float32 bound) can overlap a later candidate that
    its immediate neighbour does not: the group must extend to it, or the order comes out wrong."""
    from mlipspace.metrics._knn import _rank_intervals

    X_train = np.sqrt([[2.9], [1.0], [2.5]])  # exact squared distances to 0: 2.9, 1.0, 2.5
    approx = np.array([[0.0, 1.0, 2.5]])
    tol = np.array([[3.0, 0.1, 0.1]])  # every exact value is inside its interval
    got = _rank_intervals(X_train, np.zeros((1, 1)), approx, np.array([[0, 1, 2]]), tol,
                          np.ones((1, 3), dtype=bool), np.arange(3), 3)
    np.testing.assert_array_equal(got, [[1, 2, 0]])


def test_nearest_distance_matches_brute_force_and_skips_same_group_rows():
    from mlipspace.metrics import nearest_distance

    rng = np.random.default_rng(5)
    R = rng.normal(size=(300, 6))
    Q = np.vstack([R[:5], rng.normal(size=(40, 6))])  # exact copies first: distance 0 (a twin)
    D = np.sqrt(((Q[:, None, :] - R[None, :, :]) ** 2).sum(-1))
    got = nearest_distance(Q, R, chunk=16)
    np.testing.assert_allclose(got, D.min(axis=1), atol=1e-7)
    assert np.all(got[:5] < 1e-6)
    qg, rg = rng.integers(0, 20, size=len(Q)), rng.integers(0, 20, size=len(R))
    masked = np.where(qg[:, None] == rg[None, :], np.inf, D)
    np.testing.assert_allclose(nearest_distance(Q, R, qg, rg, chunk=7), masked.min(axis=1), atol=1e-7)
    assert np.isinf(nearest_distance(Q[:1], R[:3], [0], [0, 0, 0]))[0]
