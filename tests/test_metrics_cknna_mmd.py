"""CKNNA (Huh et al. 2024) and Gaussian-kernel MMD, each against a dense reference written out here."""

from __future__ import annotations

import numpy as np
import pytest

from mlipspace.errors import InputError
from mlipspace.metrics import SIMILARITY_MEASURES, cknna, linear_cka, mmd, mmd_permutation_test
from mlipspace.records import COMPARE_METRICS, SIMILARITY_METRICS

# ----------------------------------------------------------------------------------------------------
# dense references


def ref_hsic_unbiased(K, L):
    """Song et al. (2012) unbiased HSIC, written as in the reference code (works for non-symmetric K, L)."""
    m = K.shape[0]
    Kt, Lt = K.copy(), L.copy()
    np.fill_diagonal(Kt, 0.0)
    np.fill_diagonal(Lt, 0.0)
    return ((Kt * Lt.T).sum() + Kt.sum() * Lt.sum() / ((m - 1) * (m - 2))
            - 2.0 * (Kt @ Lt).sum() / (m - 2)) / (m * (m - 3))


def ref_knn_mask(A, k, *, inner=False):
    """Dense 0/1 mask: M[i, j] = 1 if j is among the k nearest other rows of i (or top-k inner products)."""
    n = len(A)
    score = -(A @ A.T) if inner else ((A[:, None, :] - A[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(score, np.inf)
    M = np.zeros((n, n))
    for i in range(n):
        M[i, np.argsort(score[i], kind="stable")[:k]] = 1.0
    return M


def ref_cknna_one_order(X, Y, k, *, cosine=False):
    """The reference code's CKNNA (one argument order): masked linear kernels, unbiased HSIC."""
    if cosine:
        X = X / np.linalg.norm(X, axis=1, keepdims=True)
        Y = Y / np.linalg.norm(Y, axis=1, keepdims=True)
    K, L = X @ X.T, Y @ Y.T
    MX, MY = ref_knn_mask(X, k, inner=cosine), ref_knn_mask(Y, k, inner=cosine)
    M = MX * MY
    return ref_hsic_unbiased(M * K, M * L) / np.sqrt(ref_hsic_unbiased(MX * K, MX * K)
                                                    * ref_hsic_unbiased(MY * L, MY * L))


def ref_mmd2(A, B, sigma=None):
    """Unbiased Gaussian MMD² by explicit loops; sigma² = median of pooled pairwise squared distances."""
    Z = np.vstack([A, B])
    if sigma is None:
        d2 = [np.sum((Z[i] - Z[j]) ** 2) for i in range(len(Z)) for j in range(i + 1, len(Z))]
        sigma = np.sqrt(np.median(d2))

    def k(u, v):
        return np.exp(-np.sum((u - v) ** 2) / (2 * sigma**2))

    m, n = len(A), len(B)
    aa = sum(k(A[i], A[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    bb = sum(k(B[i], B[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    ab = sum(k(A[i], B[j]) for i in range(m) for j in range(n)) / (m * n)
    return aa + bb - 2 * ab, sigma


def related(seed=0, n=50, dx=6, dy=5):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, 3))
    X = np.tanh(Z @ rng.normal(size=(3, dx))) + 0.3 * rng.normal(size=(n, dx))
    Y = Z @ rng.normal(size=(3, dy)) + 0.3 * rng.normal(size=(n, dy)) + 1.5
    return X, Y


# ----------------------------------------------------------------------------------------------------
# CKNNA


@pytest.mark.parametrize("k", [2, 5, 12])
def test_cknna_is_the_reference_averaged_over_both_orders(k):
    X, Y = related(seed=k)
    ref = 0.5 * (ref_cknna_one_order(X, Y, k) + ref_cknna_one_order(Y, X, k))
    assert abs(cknna(X, Y, k=k, device="cpu") - ref) <= 1e-10


def test_cknna_cosine_is_the_reference_code_on_unit_rows():
    X, Y = related(seed=3)
    ref = 0.5 * (ref_cknna_one_order(X, Y, 7, cosine=True) + ref_cknna_one_order(Y, X, 7, cosine=True))
    assert abs(cknna(X, Y, k=7, distance="cosine", device="cpu") - ref) <= 1e-10


def test_reference_code_alone_is_order_dependent_and_cknna_is_symmetric():
    X, Y = related(seed=4)
    one, other = ref_cknna_one_order(X, Y, 6), ref_cknna_one_order(Y, X, 6)
    assert abs(one - other) > 1e-4  # why the cross term is symmetrised
    assert cknna(X, Y, k=6) == pytest.approx(cknna(Y, X, k=6), abs=1e-12)


def test_cknna_of_identical_spaces_is_one():
    X, _ = related(seed=5)
    for k in (2, 6, len(X) - 1):
        assert cknna(X, X, k=k) == pytest.approx(1.0, abs=1e-12)


def test_cknna_with_all_pairs_is_debiased_linear_cka_not_plain_cka():
    X, Y = related(seed=6)
    full = cknna(X, Y, k=len(X) - 1)
    assert abs(full - linear_cka(X, Y, debiased=True)) <= 1e-10
    assert abs(full - linear_cka(X, Y)) > 1e-3


def test_cknna_of_unrelated_spaces_is_small_and_related_ones_larger():
    rng = np.random.default_rng(7)
    X, Y = related(seed=7, n=120)
    assert cknna(X, rng.normal(size=(120, 5)), k=10) < 0.2 < cknna(X, Y, k=10)


def test_cknna_permutation_null_matches_a_recomputation():
    X, Y = related(seed=8)
    prep = SIMILARITY_MEASURES["cknna"].prepare(X, Y, k=6)
    perm = np.random.default_rng(0).permutation(len(X))
    assert abs(prep.score(perm) - cknna(X, Y[perm], k=6)) <= 1e-12
    assert prep.score(None) == cknna(X, Y, k=6)


def test_cknna_is_a_compare_metric():
    assert "cknna" in SIMILARITY_METRICS and "cknna" in COMPARE_METRICS
    from mlipspace.experiments.cross_model import similarity_values

    X, Y = related(seed=9, n=40)
    out = similarity_values({"a": X, "b": Y}, [("a", "b"), ("b", "a")], "cknna", np.arange(40), 0)
    assert out[("a", "b")][0] == pytest.approx(cknna(X, Y, k=10), abs=1e-12)


@pytest.mark.parametrize("k", [1, 0, 50, 2.5, True])
def test_cknna_rejects_bad_k(k):
    X, Y = related(seed=10, n=50)
    with pytest.raises(InputError, match="k"):
        cknna(X, Y, k=k)


def test_cknna_rejects_too_few_rows_and_unknown_distance():
    X, Y = related(seed=11, n=3)
    with pytest.raises(InputError, match="at least 4 rows"):
        cknna(X, Y, k=2)
    X, Y = related(seed=11)
    with pytest.raises(InputError, match="distance"):
        cknna(X, Y, k=3, distance="manhattan")


# ----------------------------------------------------------------------------------------------------
# MMD


def two_distributions(shift, seed=0, m=40, n=35, d=4):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(m, d)), rng.normal(size=(n, d)) + shift


@pytest.mark.parametrize("shift", [0.0, 0.7])
def test_mmd_matches_loops_with_the_pooled_median_heuristic(shift):
    A, B = two_distributions(shift, seed=1)
    ref, sigma = ref_mmd2(A, B)
    assert abs(mmd(A, B) - ref) <= 1e-10
    assert abs(mmd(A, B, sigma=0.5 * sigma) - ref_mmd2(A, B, sigma=0.5 * sigma)[0]) <= 1e-10


def test_mmd_permutation_test_reproduces_loops_with_the_same_permutations():
    A, B = two_distributions(0.3, seed=2, m=15, n=12, d=3)
    value, p = mmd_permutation_test(A, B, n_permutations=30, seed=4)
    ref, sigma = ref_mmd2(A, B)
    assert abs(value - ref) <= 1e-10
    Z, rng = np.vstack([A, B]), np.random.default_rng(4)
    null = []
    for _ in range(30):
        perm = rng.permutation(len(Z))
        null.append(ref_mmd2(Z[perm[:15]], Z[np.sort(perm[15:])], sigma=sigma)[0])
    assert p == pytest.approx((1 + np.sum(np.array(null) >= ref - 1e-12)) / 31, abs=1e-12)


def test_mmd_is_near_zero_with_a_large_p_for_one_distribution():
    A, B = two_distributions(0.0, seed=3, m=80, n=70)
    value, p = mmd_permutation_test(A, B)
    assert abs(value) < 0.02 and p > 0.05


def test_mmd_is_large_with_a_small_p_for_shifted_distributions():
    A, B = two_distributions(1.0, seed=3, m=80, n=70)
    value, p = mmd_permutation_test(A, B)
    assert value > 0.1 and p < 0.01
    assert value == pytest.approx(mmd(A, B), abs=1e-12)


def test_mmd_rejects_bad_input():
    A, B = two_distributions(0.0)
    with pytest.raises(InputError, match="one space"):
        mmd(A, B[:, :3])
    with pytest.raises(InputError, match="at least 2 rows"):
        mmd(A[:1], B)
    with pytest.raises(InputError, match="n_permutations"):
        mmd_permutation_test(A, B, n_permutations=0)
    with pytest.raises(InputError, match="bandwidth"):
        mmd(np.zeros((5, 2)), np.zeros((4, 2)))
