"""The Gram-eigendecomposition engines (LFRE and GFRE on the CPU) and the float32 neighbour
pre-selection: same values as the SVD / TSQR paths and scikit-matter, rows that cannot be certified
fall back, and the fallback itself is exercised."""

from __future__ import annotations

import numpy as np
import pytest

import mlipspace.metrics._global as glob
import mlipspace.metrics.reconstruction as rec
from mlipspace.metrics import config_context, gfre, pairwise, pointwise_gfre, pointwise_lfre
from mlipspace.metrics._knn import knn_indices

TOL = 1e-8


def correlated(n=220, dx=10, dy=12, seed=0, noise=0.05):
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, 4))
    X = Z @ rng.standard_normal((4, dx)) + noise * rng.standard_normal((n, dx))
    Y = np.tanh(Z @ rng.standard_normal((4, dy))) + 0.02 * rng.standard_normal((n, dy))
    return X, Y


def split(n, n_test=40, seed=2):
    test = np.random.default_rng(seed).choice(n, n_test, replace=False)
    return np.setdiff1d(np.arange(n), test), test


def lfre_problem(X, Y, k, train, test, mode="exact", batch_size=None):
    """Pointwise LFRE through LocalProblem, returning the values and the number of fallback rows."""
    Xtr, mx, sx = rec._scale(X, train, "X")
    Ytr, my, sy = rec._scale(Y, train, "Y")
    prob = rec.LocalProblem(Xtr, (X[test] - mx) / sx, train, k, device="cpu", mode=mode, n_jobs=1,
                            batch_size=batch_size)
    return prob.run([(Ytr, (Y[test] - my) / sy)])[0], prob.n_fallback


def svd_engine(f, *a, **kw):
    with config_context(engine="svd"):
        return f(*a, **kw)


@pytest.mark.parametrize("k,dx", [(16, 10), (8, 30), (30, 30), (40, 12)])
def test_lfre_gram_path_certifies_well_conditioned_rows_and_matches(monkeypatch, k, dx):
    """Both Gram layouts (k <= d: kernel form; k > d: feature form) give the SVD path's values."""
    skm = pytest.importorskip("skmatter.metrics")
    X, Y = correlated(dx=dx, noise=0.3)
    train, test = split(len(X))
    got, n_fb = lfre_problem(X, Y, k, train, test)
    assert n_fb < len(test)  # the Gram path really answered rows
    ref = skm.pointwise_local_reconstruction_error(X, Y, k, train_idx=train, test_idx=test)
    assert np.max(np.abs(got - ref)) <= TOL
    svd = svd_engine(pointwise_lfre, X, Y, k=k, train_idx=train, test_idx=test, device="cpu")
    assert np.max(np.abs(got - svd)) <= 1e-10


def test_lfre_rank_deficient_rows_fall_back_to_the_svd_path(monkeypatch):
    """X of exact rank 3: no fold spectrum can be certified, every row is refitted by SVD."""
    rng = np.random.default_rng(4)
    Z = rng.standard_normal((200, 3))
    X = Z @ rng.standard_normal((3, 12))
    Y = np.hstack([Z**2, np.sin(Z)]) @ rng.standard_normal((6, 8))
    train, test = split(200)
    svd = svd_engine(pointwise_lfre, X, Y, k=15, train_idx=train, test_idx=test, device="cpu")
    # one batch, and many small ones (after two uncertifiable batches the rest skip the Gram try)
    for bs in (None, 5):
        got, n_fb = lfre_problem(X, Y, 15, train, test, batch_size=bs)
        assert n_fb == len(test)
        np.testing.assert_array_equal(got, svd)


def test_lfre_mixed_batches_and_pairwise_targets_share_the_fallback(monkeypatch):
    """Some test rows sit in a block of duplicated training rows (zero neighbourhood: fallback),
    the others are certified; several targets reuse one source (pairwise)."""
    X, Y = correlated(n=260, noise=0.3, seed=7)
    X[:40] = X[0]  # 40 identical rows
    Y2 = np.cos(Y[:, :5])
    test = np.r_[np.arange(0, 12), np.arange(100, 130)]  # rows 0..11 are copies of row 0
    train = np.setdiff1d(np.arange(len(X)), test)
    got, n_fb = lfre_problem(X, Y, 20, train, test)
    assert 0 < n_fb < len(test)
    svd = svd_engine(pointwise_lfre, X, Y, k=20, train_idx=train, test_idx=test, device="cpu")
    assert np.max(np.abs(got - svd)) <= 1e-10
    feats = {"x": X, "y": Y, "y2": Y2}
    recs = pairwise(feats, "lfre", k=20, test_idx=test, device="cpu", pointwise=True)
    ref = svd_engine(pairwise, feats, "lfre", k=20, test_idx=test, device="cpu",
                     pointwise=True)
    for a, b in zip(recs, ref):
        assert (a["source"], a["target"]) == (b["source"], b["target"])
        assert np.max(np.abs(a["pointwise"] - b["pointwise"])) <= 1e-10


def test_lfre_small_chosen_alpha_is_not_trusted_to_the_gram_matrix():
    """Y an exact linear function of X: the CV picks the smallest cutoff, which a Gram matrix cannot
    resolve, so those rows are refitted by SVD and still match scikit-matter."""
    skm = pytest.importorskip("skmatter.metrics")
    rng = np.random.default_rng(5)
    X = rng.standard_normal((200, 6)) @ np.diag([1, 1, 1, 1e-3, 1e-5, 1e-6])
    Y = X @ rng.standard_normal((6, 4)) * 1e6
    train, test = split(200)
    got, n_fb = lfre_problem(X, Y, 14, train, test)
    assert n_fb > 0
    ref = skm.pointwise_local_reconstruction_error(X, Y, 14, train_idx=train, test_idx=test)
    assert np.max(np.abs(got - ref)) <= TOL


def test_lfre_fast_mode_uses_no_fallback_and_stays_close():
    X, Y = correlated(noise=0.3)
    train, test = split(len(X))
    fast, n_fb = lfre_problem(X, Y, 16, train, test, mode="fast")
    exact, _ = lfre_problem(X, Y, 16, train, test)
    assert n_fb == 0
    assert np.max(np.abs(fast - exact)) <= 1e-6


def count_qr(monkeypatch):
    calls = []
    orig = glob._qr_fit

    def spy(*a, **kw):
        calls.append(1)
        return orig(*a, **kw)

    monkeypatch.setattr(glob, "_qr_fit", spy)
    return calls


def test_gfre_gram_path_matches_tsqr_and_skmatter(monkeypatch):
    skm = pytest.importorskip("skmatter.metrics")
    X, Y = correlated(n=400, noise=0.3)
    calls = count_qr(monkeypatch)
    got = pointwise_gfre(X, Y)
    assert not calls  # certified: no TSQR pass
    assert np.max(np.abs(got - skm.pointwise_global_reconstruction_error(X, Y))) <= TOL
    assert np.max(np.abs(got - pointwise_gfre(X, Y, engine="svd"))) <= 1e-12


def test_gfre_uncertified_fits_take_the_tsqr_path(monkeypatch):
    """Rank-deficient X (fold spectrum below resolution) and a test-error bound over GRAM_ATOL both
    refit by TSQR, with scikit-matter's values."""
    skm = pytest.importorskip("skmatter.metrics")
    rng = np.random.default_rng(6)
    Z = rng.standard_normal((300, 3))
    X, Y = Z @ rng.standard_normal((3, 9)), np.sin(Z @ rng.standard_normal((3, 5)))
    calls = count_qr(monkeypatch)
    assert abs(gfre(X, Y) - skm.global_reconstruction_error(X, Y)) <= TOL
    assert len(calls) == 1
    X, Y = correlated(n=300, noise=0.3)
    monkeypatch.setattr(glob, "GRAM_ATOL", 0.0)
    calls.clear()
    assert abs(gfre(X, Y) - skm.global_reconstruction_error(X, Y)) <= TOL
    assert len(calls) == 1


def test_float32_preselection_equals_the_exact_two_pass_neighbours():
    rng = np.random.default_rng(8)
    Xtr = rng.standard_normal((3000, 16))
    Xtr[100:160] = Xtr[100]  # 60 exact duplicates: more ties than the pre-selection keeps
    Xtr[500:503] = Xtr[7]
    Xte = np.vstack([rng.standard_normal((50, 16)), Xtr[[100, 7, 900]] + 1e-9])
    key = rng.permutation(3000)
    two_pass = knn_indices(Xtr, Xte, 20, key, chunk=700)
    one_pass = knn_indices(Xtr, Xte, 20, key, chunk=700, train_f32=Xtr.astype(np.float32), extra=8)
    np.testing.assert_array_equal(one_pass, two_pass)


def test_gfre_wider_than_its_folds_goes_straight_to_tsqr(monkeypatch):
    """Structure-level features (cumulants: K x d columns, few structures) give folds with fewer
    rows than X has columns: their Gram matrices are singular and never certifiable, so no
    d_x x d_x eigendecomposition is spent on them (values: scikit-matter's)."""
    skm = pytest.importorskip("skmatter.metrics")
    X, Y = correlated(n=90, dx=120, dy=30, noise=0.3)
    calls = count_qr(monkeypatch)
    tried = []
    gram_fit = glob._gram_fit
    monkeypatch.setattr(glob, "_gram_fit", lambda *a, **kw: tried.append(1) or gram_fit(*a, **kw))
    assert abs(gfre(X, Y) - skm.global_reconstruction_error(X, Y)) <= TOL
    assert len(calls) == 1 and not tried
