"""GFRE / GFRD / LFRE agree with scikit-matter (<= 1e-8) on several kinds of data."""

from __future__ import annotations

import numpy as np
import pytest

import mlipspace.metrics.reconstruction as rec
from mlipspace.metrics import gfrd, gfre, lfre, pairwise, pointwise_gfrd, pointwise_gfre, pointwise_lfre
from mlipspace.metrics._checks import default_split, kfold_halves

skm = pytest.importorskip("skmatter.metrics")

TOL = 1e-8


def make(kind: str, n: int = 240, seed: int = 0):
    """(X, Y) of a given structure: independent noise, correlated, low rank, different widths."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.standard_normal((n, 7)), rng.standard_normal((n, 9))
    if kind == "correlated":
        Z = rng.standard_normal((n, 4))
        X = Z @ rng.standard_normal((4, 10)) + 0.05 * rng.standard_normal((n, 10))
        Y = np.tanh(Z @ rng.standard_normal((4, 12))) + 0.02 * rng.standard_normal((n, 12)) + 3.0
        return X, Y
    if kind == "lowrank":  # X has exact rank 3 in 12 columns, Y depends on it nonlinearly
        Z = rng.standard_normal((n, 3))
        X = Z @ rng.standard_normal((3, 12))
        Y = np.hstack([Z**2, np.sin(Z)]) @ rng.standard_normal((6, 8))
        return X, Y
    if kind == "narrow_to_wide":
        Z = rng.standard_normal((n, 3))
        return Z @ rng.standard_normal((3, 4)), np.cos(Z @ rng.standard_normal((3, 19)))
    if kind == "wide_to_narrow":
        Z = rng.standard_normal((n, 3))
        X = np.hstack([Z, rng.standard_normal((n, 15))]) @ rng.standard_normal((18, 18))
        return X, np.cos(Z @ rng.standard_normal((3, 5)))
    raise ValueError(kind)


KINDS = ["random", "correlated", "lowrank", "narrow_to_wide", "wide_to_narrow"]


def test_default_split_and_folds_are_scikit_matters():
    from sklearn.model_selection import KFold
    from skmatter.model_selection import train_test_split

    for n in (10, 11, 237):
        tr, te = train_test_split(np.arange(n), test_size=0.5, train_size=0.5, random_state=0x5F3759DF,
                                  shuffle=True, train_test_overlap=False)
        ours = default_split(n)
        np.testing.assert_array_equal(ours[0], tr)
        np.testing.assert_array_equal(ours[1], te)
        f1, f2 = next(KFold(n_splits=2, shuffle=True, random_state=0x5F3759DF).split(np.zeros((n, 1))))
        k1, k2 = kfold_halves(n)
        np.testing.assert_array_equal(k1, f1)
        np.testing.assert_array_equal(k2, f2)


@pytest.mark.parametrize("kind", KINDS)
def test_gfre_matches_skmatter(kind):
    X, Y = make(kind)
    ref = skm.pointwise_global_reconstruction_error(X, Y)
    ours = pointwise_gfre(X, Y)
    assert ours.shape == ref.shape
    assert np.max(np.abs(ours - ref)) <= TOL
    assert abs(gfre(X, Y) - skm.global_reconstruction_error(X, Y)) <= TOL
    # explicit grouped-style indices, unsorted
    rng = np.random.default_rng(1)
    test = rng.choice(len(X), 60, replace=False)
    train = rng.permutation(np.setdiff1d(np.arange(len(X)), test))
    ref = skm.global_reconstruction_error(X, Y, train_idx=train, test_idx=test)
    assert abs(gfre(X, Y, train_idx=train, test_idx=test) - ref) <= TOL
    assert abs(gfre(X, Y, test_idx=test) - skm.global_reconstruction_error(X, Y, test_idx=test)) <= TOL


@pytest.mark.parametrize("kind,swap", [("random", False), ("correlated", False), ("lowrank", True),
                                       ("narrow_to_wide", False), ("wide_to_narrow", True)])
def test_gfrd_matches_skmatter_where_it_can_compute(kind, swap):
    X, Y = make(kind)
    if swap:  # scikit-matter needs d_X <= d_Y
        X, Y = Y, X
    assert X.shape[1] <= Y.shape[1]
    ref = skm.pointwise_global_reconstruction_distortion(X, Y)
    assert np.max(np.abs(pointwise_gfrd(X, Y) - ref)) <= TOL
    assert abs(gfrd(X, Y) - skm.global_reconstruction_distortion(X, Y)) <= TOL


def test_gfrd_wider_source_is_defined_by_zero_padding():
    """scikit-matter fails for d_X > d_Y (issue #269); ours is the zero-padded Procrustes distortion."""
    from scipy.linalg import orthogonal_procrustes
    from skmatter.linear_model import Ridge2FoldCV
    from skmatter.preprocessing import StandardFlexibleScaler

    X, Y = make("wide_to_narrow")
    with pytest.raises(ValueError):
        skm.global_reconstruction_distortion(X, Y)
    train, test = default_split(len(X))
    sx, sy = StandardFlexibleScaler().fit(X[train]), StandardFlexibleScaler().fit(Y[train])
    Xtr, Xte, Ytr = sx.transform(X[train]), sx.transform(X[test]), sy.transform(Y[train])
    ridge = Ridge2FoldCV(alphas=np.geomspace(1e-9, 0.9, 20), alpha_type="relative", regularization_method="cutoff",
                         random_state=0x5F3759DF, shuffle=True, scoring="neg_root_mean_squared_error").fit(Xtr, Ytr)
    m = X.shape[1]
    pad = lambda A: np.pad(A, [(0, 0), (0, m - A.shape[1])])  # noqa: E731
    Q = orthogonal_procrustes(Xtr, pad(ridge.predict(Xtr)))[0]
    ref = np.linalg.norm(pad(ridge.predict(Xte)) - Xte @ Q, axis=1)
    ours = pointwise_gfrd(X, Y)
    assert np.max(np.abs(ours - ref)) <= TOL
    assert np.all(np.isfinite(ours)) and gfrd(X, Y) > 0


@pytest.mark.parametrize("kind,k", [("random", 12), ("correlated", 20), ("lowrank", 15), ("narrow_to_wide", 9),
                                    ("wide_to_narrow", 25), ("correlated", 2), ("correlated", 7)])
@pytest.mark.parametrize("eigensolver", ["numpy", "torch"])
def test_lfre_matches_skmatter(kind, k, eigensolver, monkeypatch):
    """Exact mode with NumPy's (OpenBLAS) or torch's (MKL) eigensolver in the Gram engine."""
    if eigensolver == "torch":
        torch = pytest.importorskip("torch")
        monkeypatch.setattr(rec, "_torch_eigh", lambda n_rows=None: torch)
    else:
        monkeypatch.setattr(rec, "_torch_eigh", lambda n_rows=None: None)
    X, Y = make(kind, n=200)
    rng = np.random.default_rng(2)
    test = rng.choice(len(X), 40, replace=False)
    train = np.setdiff1d(np.arange(len(X)), test)
    ref = skm.pointwise_local_reconstruction_error(X, Y, k, train_idx=train, test_idx=test)
    ours = pointwise_lfre(X, Y, k=k, train_idx=train, test_idx=test, device="cpu")
    assert ours.shape == (40,)
    assert np.max(np.abs(ours - ref)) <= TOL
    assert abs(lfre(X, Y, k=k, train_idx=train, test_idx=test, device="cpu") - np.sqrt(np.mean(ref**2))) <= TOL


def test_lfre_default_split_matches_skmatter():
    X, Y = make("correlated", n=120)
    ref = skm.local_reconstruction_error(X, Y, 15)
    assert abs(lfre(X, Y, k=15, device="cpu", batch_size=7, n_jobs=2) - ref) <= TOL


def test_lfre_torch_code_path_equals_numpy():
    pytest.importorskip("torch")
    X, Y = make("correlated", n=200)
    test = np.arange(0, 200, 5)
    a = pointwise_lfre(X, Y, k=16, test_idx=test, device="cpu")
    b = pointwise_lfre(X, Y, k=16, test_idx=test, device="torch-cpu", batch_size=13)
    assert np.max(np.abs(a - b)) <= 1e-10


@pytest.mark.parametrize("method", ["jacobi", "jacobi-eigh"])
@pytest.mark.parametrize("kind,k", [("correlated", 16), ("lowrank", 25)])
def test_lfre_torch_jacobi_svd_equals_numpy(method, kind, k):
    """The batched Jacobi SVD (an option for CUDA) gives the LAPACK path's values."""
    pytest.importorskip("torch")
    X, Y = make(kind, n=160)
    test = np.arange(0, 160, 8)
    ref = pointwise_lfre(X, Y, k=k, test_idx=test, device="cpu")
    got = pointwise_lfre(X, Y, k=k, test_idx=test, device="torch-cpu", svd_driver=method)
    assert np.max(np.abs(got - ref)) <= 1e-10


def test_jacobi_svd_factorises_rank_deficient_batches():
    torch = pytest.importorskip("torch")
    from mlipspace.metrics._jacobi import jacobi_svd

    rng = np.random.default_rng(3)
    for shape in [(4, 11, 7), (3, 6, 13), (2, 9, 9)]:
        A = rng.standard_normal(shape)
        A[0] = rng.standard_normal((shape[1], 2)) @ rng.standard_normal((2, shape[2]))
        for pre in (False, True):
            U, s, Vt = (t.numpy() for t in jacobi_svd(torch.as_tensor(A), precondition=pre))
            np.testing.assert_allclose(s, np.linalg.svd(A, compute_uv=False), rtol=0, atol=1e-13)
            np.testing.assert_allclose((U * s[:, None, :]) @ Vt, A, rtol=0, atol=1e-12)


def test_lfre_fast_mode_is_close_on_well_conditioned_data():
    X, Y = make("correlated", n=200)
    test = np.arange(0, 200, 5)
    a = pointwise_lfre(X, Y, k=16, test_idx=test, device="cpu")
    b = pointwise_lfre(X, Y, k=16, test_idx=test, device="cpu", mode="fast")
    assert np.max(np.abs(a - b)) <= 1e-6


def test_pairwise_records_equal_single_calls():
    rng = np.random.default_rng(5)
    Z = rng.standard_normal((150, 3))
    feats = {"a": Z @ rng.standard_normal((3, 6)), "b": np.tanh(Z @ rng.standard_normal((3, 9))),
             "c": rng.standard_normal((150, 4))}
    test = np.arange(0, 150, 3)
    recs = pairwise(feats, ["gfre", "lfre", "gfrd"], test_idx=test, device="cpu")
    assert len(recs) == 27
    assert {(r["source"], r["target"]) for r in recs if r["metric"] == "gfre"} == {(s, t) for s in feats for t in feats}
    for r in recs:
        X, Y = feats[r["source"]], feats[r["target"]]
        assert r["n_test"] == 50 and r["n_train"] == 100
        if r["metric"] == "lfre":
            assert r["k"] == min(X.shape[1], Y.shape[1])
            ref = lfre(X, Y, k=r["k"], test_idx=test, device="cpu")
        else:
            ref = {"gfre": gfre, "gfrd": gfrd}[r["metric"]](X, Y, test_idx=test)
        assert abs(r["value"] - ref) <= 1e-12
    diag = [r["value"] for r in recs if r["source"] == r["target"] and r["metric"] == "gfre"]
    assert max(diag) < 1e-10
    off = pairwise(feats, "lfre", k=5, diagonal=False, pointwise=True, test_idx=test, device="cpu")
    assert len(off) == 6 and all(r["pointwise"].shape == (50,) and r["k"] == 5 for r in off)
