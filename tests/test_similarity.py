"""Similarity measures: agreement with dense references, invariances, nulls, uncertainty, errors."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
from scipy.linalg import orthogonal_procrustes
from scipy.spatial.distance import cdist, pdist

from mlipspace.errors import AlignmentError, InputError
from mlipspace.metrics.similarity import (
    SIMILARITY_MEASURES,
    linear_cka,
    mutual_knn,
    pointwise_mutual_knn,
    procrustes_distance,
    rbf_cka,
    similarity_with_uncertainty,
)

TOL = 1e-10


# ---------------------------------------------------------------------------------------------------
# dense references, written the textbook way (N×N Gram matrices, brute-force neighbours)


def ref_hsic(K, L):
    n = K.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    return np.trace(K @ H @ L @ H)


def ref_unbiased_hsic(K, L):
    """Song et al. (2012), eq. (5), on the raw (uncentred) Gram matrices."""
    n = K.shape[0]
    Kt = K - np.diag(np.diag(K))
    Lt = L - np.diag(np.diag(L))
    one = np.ones(n)
    return (
        np.trace(Kt @ Lt)
        + (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (one @ Kt @ Lt @ one)
    ) / (n * (n - 3))


def ref_u_centred_hsic(K, L):
    """Independent form: inner product of U-centred Gram matrices (Székely & Rizzo 2014)."""
    n = K.shape[0]

    def u(G):
        G = G - np.diag(np.diag(G))
        r = G.sum(0)
        U = G - r[None, :] / (n - 2) - r[:, None] / (n - 2) + G.sum() / ((n - 1) * (n - 2))
        np.fill_diagonal(U, 0.0)
        return U

    return np.sum(u(K) * u(L)) / (n * (n - 3))


def ref_cka(K, L, hsic=ref_hsic):
    return hsic(K, L) / math.sqrt(hsic(K, K) * hsic(L, L))


def ref_rbf_gram(X, sigma=None):
    if sigma is None:
        sigma = math.sqrt(np.median(pdist(X, "sqeuclidean")))
    return np.exp(-cdist(X, X, "sqeuclidean") / (2 * sigma**2))


def ref_knn(X, k, metric="euclidean"):
    if metric == "cosine":
        X = X / np.linalg.norm(X, axis=1, keepdims=True)
    D = cdist(X, X, "sqeuclidean")
    np.fill_diagonal(D, np.inf)
    return np.argsort(D, axis=1, kind="stable")[:, :k]


def ref_mknn_pointwise(X, Y, k, metric="euclidean"):
    nx, ny = ref_knn(X, k, metric), ref_knn(Y, k, metric)
    return np.array([len(set(a) & set(b)) / k for a, b in zip(nx, ny)])


def ref_procrustes(X, Y):
    Xc = X - X.mean(0)
    Yc = Y - Y.mean(0)
    Xc /= np.linalg.norm(Xc)
    Yc /= np.linalg.norm(Yc)
    d = max(X.shape[1], Y.shape[1])
    Xp = np.zeros((X.shape[0], d))
    Yp = np.zeros((Y.shape[0], d))
    Xp[:, : X.shape[1]] = Xc
    Yp[:, : Y.shape[1]] = Yc
    R, scale = orthogonal_procrustes(Xp, Yp)
    # residual of the best rotation is 2 - 2·scale: check scipy's scale really is the optimum
    assert np.isclose(np.sum((Xp @ R - Yp) ** 2), 2 - 2 * scale)
    return math.acos(min(1.0, scale))


# ---------------------------------------------------------------------------------------------------
# data


def related(n=120, dx=7, dy=11, noise=0.7, seed=0, offset=3.0):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, 5))
    X = Z @ rng.normal(size=(5, dx)) + noise * rng.normal(size=(n, dx)) + offset
    Y = np.tanh(Z) @ rng.normal(size=(5, dy)) + noise * rng.normal(size=(n, dy)) - offset
    return X, Y


def random_orthogonal(d, seed):
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q * np.sign(np.diag(r))


# ---------------------------------------------------------------------------------------------------
# agreement with the dense references


@pytest.mark.parametrize("chunk_size", [None, 7])
def test_linear_cka_matches_dense_gram_hsic(chunk_size):
    X, Y = related()
    expected = ref_cka(X @ X.T, Y @ Y.T)  # biased HSIC centres the raw Gram matrices itself
    assert abs(linear_cka(X, Y, device="cpu", chunk_size=chunk_size) - expected) <= TOL


@pytest.mark.parametrize("chunk_size", [None, 7])
def test_debiased_linear_cka_matches_song_and_u_centred_references(chunk_size):
    X, Y = related(n=90)
    K, L = X @ X.T, Y @ Y.T  # raw features: the estimator must not care about the offset
    song = ref_cka(K, L, ref_unbiased_hsic)
    ucent = ref_cka(K, L, ref_u_centred_hsic)
    assert abs(song - ucent) <= TOL
    assert abs(linear_cka(X, Y, debiased=True, device="cpu", chunk_size=chunk_size) - song) <= TOL


def test_linear_measures_accept_float32_and_match_float64_of_same_values():
    X, Y = related()
    X32, Y32 = X.astype(np.float32), Y.astype(np.float32)
    X64, Y64 = X32.astype(np.float64), Y32.astype(np.float64)
    assert abs(linear_cka(X32, Y32, device="cpu") - ref_cka(X64 @ X64.T, Y64 @ Y64.T)) <= TOL
    assert abs(procrustes_distance(X32, Y32, device="cpu") - ref_procrustes(X64, Y64)) <= TOL


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("sigma", [None, 2.5, (1.5, 4.0)])
def test_rbf_cka_matches_dense_reference(debiased, sigma):
    X, Y = related(n=80)
    if sigma is None:
        K, L = ref_rbf_gram(X), ref_rbf_gram(Y)
    elif isinstance(sigma, tuple):
        K, L = ref_rbf_gram(X, sigma[0]), ref_rbf_gram(Y, sigma[1])
    else:
        K, L = ref_rbf_gram(X, sigma), ref_rbf_gram(Y, sigma)
    expected = ref_cka(K, L, ref_unbiased_hsic if debiased else ref_hsic)
    got = rbf_cka(X, Y, sigma=sigma, debiased=debiased, device="cpu", chunk_size=13)
    assert abs(got - expected) <= TOL


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("k", [1, 5, 30])
def test_mutual_knn_matches_brute_force(metric, k):
    X, Y = related(n=150)
    expected = ref_mknn_pointwise(X, Y, k, metric)
    got = pointwise_mutual_knn(X, Y, k=k, distance=metric, device="cpu", chunk_size=17)
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)
    assert abs(mutual_knn(X, Y, k=k, distance=metric, device="cpu") - expected.mean()) <= TOL


def test_mutual_knn_breaks_exact_ties_by_lower_index_like_a_stable_sort():
    rng = np.random.default_rng(3)
    # integer grid: distances are exact small integers, with many ties and duplicated rows
    X = rng.integers(0, 3, size=(70, 2)).astype(float)
    Y = rng.integers(0, 3, size=(70, 3)).astype(float)
    for k in (1, 4, 9):
        expected = ref_mknn_pointwise(X, Y, k)
        np.testing.assert_array_equal(pointwise_mutual_knn(X, Y, k=k, device="cpu", chunk_size=8), expected)


@pytest.mark.parametrize("shape", [(7, 11), (11, 7), (9, 9)])
def test_procrustes_matches_scipy_orthogonal_procrustes(shape):
    X, Y = related(dx=shape[0], dy=shape[1])
    assert abs(procrustes_distance(X, Y, device="cpu", chunk_size=5) - ref_procrustes(X, Y)) <= TOL


# ---------------------------------------------------------------------------------------------------
# invariances and limits


MEASURES = {
    "cka": lambda X, Y: linear_cka(X, Y, device="cpu"),
    "cka_debiased": lambda X, Y: linear_cka(X, Y, debiased=True, device="cpu"),
    "rbf_cka": lambda X, Y: rbf_cka(X, Y, device="cpu"),
    "mknn": lambda X, Y: mutual_knn(X, Y, k=8, device="cpu"),
    "procrustes": lambda X, Y: procrustes_distance(X, Y, device="cpu"),
}


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_invariant_to_orthogonal_transform_isotropic_scaling_and_translation(name):
    f = MEASURES[name]
    X, Y = related()
    base = f(X, Y)
    Q = random_orthogonal(X.shape[1], seed=1)
    moved = 3.7 * X @ Q + np.arange(X.shape[1])
    assert abs(f(moved, Y) - base) <= 1e-9
    assert abs(f(X, 0.01 * Y @ random_orthogonal(Y.shape[1], seed=2)) - base) <= 1e-9


@pytest.mark.parametrize("name", ["cka", "cka_debiased", "procrustes"])
def test_linear_measures_are_not_invariant_to_general_invertible_maps(name):
    """CKA is invariant to orthogonal maps and isotropic scaling only (Kornblith et al. 2019, sec. 3)."""
    f = MEASURES[name]
    X, Y = related()
    A = np.diag(np.geomspace(0.05, 20, X.shape[1])) @ random_orthogonal(X.shape[1], seed=4)
    assert np.linalg.cond(A) < 1e4  # invertible
    assert abs(f(X @ A, Y) - f(X, Y)) > 0.02


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_identical_inputs_are_perfect_and_measures_are_symmetric(name):
    f = MEASURES[name]
    X, Y = related()
    perfect = SIMILARITY_MEASURES[name].perfect
    tol = 1e-7 if name == "procrustes" else 1e-12  # arccos near 1 amplifies rounding to ~1e-8
    assert abs(f(X, X) - perfect) <= tol
    assert abs(f(X, Y) - f(Y, X)) <= 1e-12


def test_mutual_knn_exactly_invariant_neighbour_sets():
    X, Y = related(n=200)
    Q = random_orthogonal(X.shape[1], seed=5)
    a = pointwise_mutual_knn(X, Y, k=6, device="cpu")
    b = pointwise_mutual_knn(0.2 * X @ Q, 5.0 * Y, k=6, device="cpu")
    np.testing.assert_array_equal(a, b)


def test_biased_cka_drifts_with_width_but_debiased_stays_at_zero():
    rng = np.random.default_rng(7)
    n = 400
    X = rng.normal(size=(n, 16))
    narrow, wide = rng.normal(size=(n, 8)), rng.normal(size=(n, 256))
    b_narrow = linear_cka(X, narrow, device="cpu")
    b_wide = linear_cka(X, wide, device="cpu")
    assert b_wide > b_narrow + 0.05  # chance level of standard CKA grows with width/n
    for Y in (narrow, wide):
        assert abs(linear_cka(X, Y, debiased=True, device="cpu")) < 0.03


@pytest.mark.parametrize("name", sorted(SIMILARITY_MEASURES))
def test_independent_inputs_sit_at_the_permutation_null(name):
    rng = np.random.default_rng(11)
    X, Y = rng.normal(size=(240, 12)), rng.normal(size=(240, 40))
    kw = {"k": 10} if name == "mknn" else {}
    res = similarity_with_uncertainty(X, Y, name, seeds=2, subsample=0.5, n_permutations=40,
                                      device="cpu", **kw)
    assert abs(res["value"] - res["null_mean"]) < 4 * res["null_std"]
    assert abs(res["null_corrected"]) < 0.2
    assert res["p_value"] > 0.01
    if name == "mknn":
        assert abs(res["null_mean"] - 10 / 239) < 0.01  # chance level k/(n-1)


def test_related_inputs_beat_the_null_with_the_smallest_p_value():
    X, Y = related(n=200, noise=0.3)
    for name in SIMILARITY_MEASURES:
        res = similarity_with_uncertainty(X, Y, name, seeds=3, n_permutations=19, device="cpu")
        assert res["p_value"] == pytest.approx(1 / 20), name
        assert 0.2 < res["null_corrected"] <= 1.0, name
        assert res["z_score"] > 5, name


# ---------------------------------------------------------------------------------------------------
# uncertainty bookkeeping and the fast permutation paths


def test_uncertainty_record_matches_its_definitions():
    X, Y = related(n=150)
    res = similarity_with_uncertainty(X, Y, "cka", seeds=[3, 4, 9], subsample=60, n_permutations=5,
                                      null_seed=2, device="cpu")
    assert res["value"] == pytest.approx(linear_cka(X, Y, device="cpu"), abs=1e-14)
    expected_values = []
    for seed in (3, 4, 9):
        rows = np.sort(np.random.default_rng(seed).choice(150, 60, replace=False))
        expected_values.append(linear_cka(X[rows], Y[rows], device="cpu"))
    np.testing.assert_allclose(res["values"], expected_values, atol=1e-14)
    assert res["mean"] == pytest.approx(np.mean(expected_values))
    assert res["spread"] == pytest.approx(np.std(expected_values, ddof=1))
    rng = np.random.default_rng(2)
    null = [linear_cka(X, Y[rng.permutation(150)], device="cpu") for _ in range(5)]
    assert res["null_mean"] == pytest.approx(np.mean(null), abs=1e-14)
    assert res["null_std"] == pytest.approx(np.std(null, ddof=1), abs=1e-14)
    assert res["null_corrected"] == pytest.approx((res["value"] - res["null_mean"]) / (1 - res["null_mean"]))
    assert (res["n"], res["n_subsample"], res["n_permutations"]) == (150, 60, 5)


@pytest.mark.parametrize("name", sorted(SIMILARITY_MEASURES))
def test_prepared_permutation_scores_equal_recomputing_on_shuffled_rows(name):
    X, Y = related(n=100)
    m = SIMILARITY_MEASURES[name]
    kw = {"device": "cpu"}
    if name == "mknn":
        kw["k"] = 7
    prepared = m.prepare(X, Y, **kw)
    perm = np.random.default_rng(0).permutation(100)
    assert abs(prepared.score(perm) - m.func(X, Y[perm], **kw)) <= 1e-12
    assert abs(prepared.score(None) - m.func(X, Y, **kw)) <= 1e-12


def test_procrustes_null_is_read_in_the_lower_is_better_direction():
    X, Y = related(n=150, noise=0.3)
    res = similarity_with_uncertainty(X, Y, "procrustes", seeds=2, n_permutations=9, device="cpu")
    assert res["higher_is_better"] is False
    assert res["value"] < res["null_mean"]
    assert res["p_value"] == pytest.approx(0.1)
    assert res["null_corrected"] == pytest.approx(1 - res["value"] / res["null_mean"])


def test_no_permutations_gives_nan_null_fields():
    X, Y = related(n=60)
    res = similarity_with_uncertainty(X, Y, "cka", seeds=1, n_permutations=0, device="cpu")
    assert res["spread"] == 0.0
    assert all(math.isnan(res[k]) for k in ("null_mean", "null_std", "p_value", "null_corrected"))


def test_registry_metadata_and_values_within_range():
    assert {"cka", "rbf_cka", "mknn", "procrustes"} <= set(SIMILARITY_MEASURES)
    X, Y = related(n=80)
    for name, m in SIMILARITY_MEASURES.items():
        kw = {"k": 5} if name == "mknn" else {}
        v = m.func(X, Y, device="cpu", **kw)
        assert isinstance(v, float)
        assert m.range[0] <= v <= m.range[1], name
        assert m.range[0] <= m.perfect <= m.range[1]


# ---------------------------------------------------------------------------------------------------
# devices and memory


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_torch_path_agrees_with_numpy_path(name):
    pytest.importorskip("torch")
    X, Y = related(n=90)
    m = SIMILARITY_MEASURES[name]
    kw = {"k": 6} if name == "mknn" else {}
    a = m.func(X, Y, device="cpu", chunk_size=11, **kw)
    b = m.func(X, Y, device="torch-cpu", chunk_size=11, **kw)
    assert abs(a - b) <= 1e-12


def test_torch_knn_tie_breaking_matches_numpy():
    pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    X = rng.integers(0, 3, size=(50, 2)).astype(float)
    Y = rng.integers(0, 4, size=(50, 2)).astype(float)
    np.testing.assert_array_equal(
        pointwise_mutual_knn(X, Y, k=5, device="torch-cpu"), pointwise_mutual_knn(X, Y, k=5, device="cpu")
    )


def test_chunked_kernels_stay_far_below_a_dense_n_by_n_matrix():
    rng = np.random.default_rng(0)
    n = 4000  # a dense N×N float64 matrix would be 128 MB
    X = rng.normal(size=(n, 6)).astype(np.float32)
    Y = (X @ rng.normal(size=(6, 6))).astype(np.float32)
    tracemalloc.start()
    try:
        v = mutual_knn(X, Y, k=10, device="cpu", chunk_size=200)
        rbf = rbf_cka(X, Y, max_rows=None, median_rows=500, device="cpu", chunk_size=200)
        cka = linear_cka(X, Y, debiased=True, device="cpu", chunk_size=500)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40e6, f"peak {peak / 1e6:.0f} MB"
    assert 0 < v <= 1 and 0 < rbf <= 1 and 0 < cka <= 1


# ---------------------------------------------------------------------------------------------------
# bad input


def test_bad_input_raises_clear_errors():
    X, Y = related(n=30)
    with pytest.raises(AlignmentError, match="30 rows but Y has 29"):
        linear_cka(X, Y[:-1])
    bad = X.copy()
    bad[4, 1] = np.nan
    with pytest.raises(InputError, match="row 4"):
        procrustes_distance(bad, Y)
    with pytest.raises(InputError, match="2-D"):
        mutual_knn(X[:, 0], Y[:, 0])
    with pytest.raises(InputError, match="k=30 is larger than the other rows \\(29 rows\\)"):
        mutual_knn(X, Y, k=30)
    with pytest.raises(InputError, match="zero variance"):
        linear_cka(np.ones((30, 3)), Y, device="cpu")
    with pytest.raises(InputError, match="unknown similarity measure"):
        similarity_with_uncertainty(X, Y, "ckaa")
    with pytest.raises(InputError, match="unknown device"):
        linear_cka(X, Y, device="tpu")
    with pytest.raises(InputError, match="subsample"):
        similarity_with_uncertainty(X, Y, "cka", subsample=1.5)
    with pytest.raises(InputError, match="median distance is 0"):
        rbf_cka(np.vstack([np.zeros((20, 2)), np.ones((10, 2))]), Y, device="cpu")


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_mutual_knn_neighbours_are_the_exact_knn_search_with_its_tie_rule(precision):
    """Mutual kNN uses the one exact search of ``_knn`` (LFRE's): neighbours nearest first, ties to
    the lower row index, the row itself excluded even when duplicates at lower indices tie with it."""
    from mlipspace.metrics._backend import get_backend
    from mlipspace.metrics._knn import knn_self

    rng = np.random.default_rng(2)
    n = 700
    dup = rng.normal(size=(n, 3))
    dup[100:120] = dup[5]  # 21 identical rows: more than k + 1 for k = 12
    for X in (rng.normal(size=(n, 3)), rng.integers(0, 4, size=(n, 2)).astype(float), dup):
        for k in (1, 12, 40):
            got = knn_self(X, k, backend=get_backend("cpu"), block=90, knn_precision=precision)
            np.testing.assert_array_equal(got, ref_knn(X, k))
