"""The LFRE Gram engine on torch (``device="torch-cpu"`` runs the code of ``device="cuda"``): the
torch path really takes it, its values are scikit-matter's and the NumPy Gram engine's row by row,
rank-deficient neighbourhoods take the SVD fallback on the device, and the certificate is one
implementation giving the same rows on NumPy arrays and torch tensors."""

from __future__ import annotations

import numpy as np
import pytest

import mlipspace.metrics._gram as gram
import mlipspace.metrics.reconstruction as rec
from mlipspace.metrics import pairwise, pointwise_lfre

torch = pytest.importorskip("torch")

from test_metrics_gram import correlated as _correlated  # noqa: E402
from test_metrics_gram import split  # noqa: E402

TOL = 1e-8  # vs scikit-matter
ROW_TOL = 1e-10  # vs the NumPy Gram engine, row by row


def correlated(n=260, dx=10, dy=12, seed=0, noise=0.3):
    """The CPU Gram tests' spaces, noisier by default (more rows near the certificate's edges)."""
    return _correlated(n=n, dx=dx, dy=dy, seed=seed, noise=noise)


def lfre_problem(X, Y, k, train, test, device, batch_size=None, engine="gram"):
    """Pointwise LFRE through LocalProblem: (values, the problem with its counters)."""
    Xtr, mx, sx = rec._scale(X, train, "X")
    Ytr, my, sy = rec._scale(Y, train, "Y")
    settings = rec.resolve(engine=engine)
    prob = rec.LocalProblem(Xtr, (X[test] - mx) / sx, train, k, device=device, n_jobs=1,
                            batch_size=batch_size, settings=settings)
    return prob.run([(Ytr, (Y[test] - my) / sy)])[0], prob


@pytest.fixture
def spy(monkeypatch):
    """Records (class name, backend name, tensor input?) of every Gram / SVD source built, by
    LocalProblem or by the Gram engine's fallback."""
    built = []
    for module, name in ((rec, "GramSource"), (rec, "LocalSource"), (gram, "LocalSource")):
        cls = getattr(module, name)

        def make(*a, _cls=cls, _name=name, **kw):
            ns = kw.get("ns") if _name == "GramSource" else a[0]
            Xn = a[0] if _name == "GramSource" else a[1]
            built.append((_name, getattr(ns, "name", "numpy"), isinstance(Xn, torch.Tensor)))
            return _cls(*a, **kw)

        monkeypatch.setattr(module, name, make)
    return built


@pytest.mark.parametrize("k,dx", [(16, 10), (8, 30), (30, 30), (40, 12)])
def test_torch_gram_engine_is_taken_and_matches_skmatter_and_numpy_rows(spy, k, dx):
    """Both Gram layouts (k <= d: kernel form; k > d: feature form), several batches."""
    skm = pytest.importorskip("skmatter.metrics")
    X, Y = correlated(dx=dx)
    train, test = split(len(X))
    got, prob = lfre_problem(X, Y, k, train, test, "torch-cpu", batch_size=16)
    assert prob.gram_batches == len(prob.batches) and prob.n_fallback < len(test)
    assert spy and all(s == ("GramSource", "torch", True) for s in spy if s[0] == "GramSource")
    assert not any(s[1] == "numpy" for s in spy)  # nothing left the device
    ref = skm.pointwise_local_reconstruction_error(X, Y, k, train_idx=train, test_idx=test)
    assert np.max(np.abs(got - ref)) <= TOL
    cpu, _ = lfre_problem(X, Y, k, train, test, "cpu", batch_size=16)
    assert np.max(np.abs(got - cpu)) <= ROW_TOL


def test_torch_duplicated_training_rows_take_the_svd_fallback_on_the_device(spy):
    """Duplicated training rows make some neighbourhoods rank deficient (a zero neighbourhood, or
    folds holding copies): those rows fail the certificate and are refitted by SVD on the device,
    the others stay on the Gram engine. Every row equals the NumPy Gram and SVD engines'; the
    rows away from the copies equal scikit-matter's (on the degenerate rows scikit-matter fits
    the rounding noise of its centring, a value no other arithmetic reproduces; exactly low-rank
    data, where scikit-matter is well defined, is compared in the next test)."""
    skm = pytest.importorskip("skmatter.metrics")
    X, Y = correlated(n=300, seed=7)
    X[:30] = X[0] + 20.0  # 30 identical rows far from the rest: rows 0..5 see a zero neighbourhood
    X[150:160] = X[150]  # 10 copies: 7 of a k = 20 neighbourhood
    test = np.r_[np.arange(0, 6), np.arange(150, 153), np.arange(100, 130)]
    train = np.setdiff1d(np.arange(len(X)), test)
    got, prob = lfre_problem(X, Y, 20, train, test, "torch-cpu")
    assert 9 <= prob.n_fallback < len(test) and prob.gram_batches == 1
    assert ("LocalSource", "torch", True) in spy  # the fallback ran on torch tensors
    cpu, cprob = lfre_problem(X, Y, 20, train, test, "cpu")
    assert cprob.n_fallback == prob.n_fallback
    assert np.max(np.abs(got - cpu)) <= ROW_TOL
    svd = pointwise_lfre(X, Y, k=20, train_idx=train, test_idx=test, device="cpu", engine="svd")
    assert np.max(np.abs(got - svd)) <= ROW_TOL
    ref = skm.pointwise_local_reconstruction_error(X, Y, 20, train_idx=train, test_idx=test)
    assert np.max(np.abs(got[9:] - ref[9:])) <= TOL


def test_torch_rank_deficient_data_goes_straight_to_the_svd_path_after_two_batches(spy):
    """X of exact rank 3: no batch can be certified; after two such batches the rest skip the
    Gram try (as on the CPU), and every row carries scikit-matter's value."""
    skm = pytest.importorskip("skmatter.metrics")
    rng = np.random.default_rng(4)
    Z = rng.standard_normal((200, 3))
    X = Z @ rng.standard_normal((3, 12))
    Y = np.hstack([Z**2, np.sin(Z)]) @ rng.standard_normal((6, 8))
    train, test = split(200)
    got, prob = lfre_problem(X, Y, 15, train, test, "torch-cpu", batch_size=5)
    assert prob.n_fallback == len(test) and prob.gram_batches == 0
    assert sum(s[0] == "GramSource" for s in spy) == 2
    ref = skm.pointwise_local_reconstruction_error(X, Y, 15, train_idx=train, test_idx=test)
    assert np.max(np.abs(got - ref)) <= TOL


def test_torch_svd_engine_setting_keeps_the_svd_path(spy):
    X, Y = correlated()
    train, test = split(len(X))
    svd, prob = lfre_problem(X, Y, 16, train, test, "torch-cpu", engine="svd")
    assert {s[0] for s in spy} == {"LocalSource"} and prob.gram_batches == 0
    got = pointwise_lfre(X, Y, k=16, train_idx=train, test_idx=test, device="torch-cpu")
    assert np.max(np.abs(got - svd)) <= ROW_TOL


def test_torch_pairwise_targets_share_one_gram_source():
    X, Y = correlated(n=260, seed=3)
    X[:30] = X[0]
    test = np.r_[np.arange(0, 8), np.arange(100, 130)]
    feats = {"x": X, "y": Y, "y2": np.cos(Y[:, :5])}
    dev = pairwise(feats, "lfre", k=20, test_idx=test, device="torch-cpu", pointwise=True)
    cpu = pairwise(feats, "lfre", k=20, test_idx=test, device="cpu", pointwise=True)
    for a, b in zip(dev, cpu):
        assert (a["source"], a["target"]) == (b["source"], b["target"])
        assert np.max(np.abs(a["pointwise"] - b["pointwise"])) <= ROW_TOL


def test_source_ok_is_one_certificate_for_numpy_and_torch_rows():
    """Spectra with eigenvalues at, near and far from the rcond and alpha cutoffs: the same rows
    pass on NumPy arrays and torch tensors."""
    rng = np.random.default_rng(0)
    B, r, k, d = 400, 8, 16, 16
    lams = [np.sort(rng.lognormal(0, 3, (B, r)), axis=1)[:, ::-1].copy() for _ in range(2)]
    lmax = np.maximum(lams[0][:, 0], lams[1][:, 0])
    scaled = np.sqrt(lmax)[:, None] * np.geomspace(1e-9, 0.9, 20)[None, :]
    lams[0][::7, 3] = scaled[::7, 5] ** 2 * (1 + 1e-15)  # within the error of an alpha's cutoff
    lams[1][::11, -1] = 1e-40  # below the rcond cutoff
    lams[0][::13] = 0.0  # a zero fold
    lmax[::17] = 0.0
    ref = gram.source_ok(lmax, lams, scaled, k, d)
    got = gram.source_ok(torch.from_numpy(lmax), [torch.from_numpy(v) for v in lams], torch.from_numpy(scaled), k, d)
    assert 0 < ref.sum() < B
    np.testing.assert_array_equal(got.numpy(), ref)
