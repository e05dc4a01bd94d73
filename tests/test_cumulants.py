"""Progressive cumulants, tested from mathematics (known distributions, exact arithmetic, identities).

Sample cumulants of order k of a heavy-tailed distribution converge slowly (their variance involves
moments of order 2k), so tolerances below are derived per order from the sampling error and the
distribution tests of high order use deterministic quantile samples; the algebra at order 8 is
pinned exactly by the Gaussian moments, exact rational arithmetic and the explicit formulas.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

import mlipspace.aggregate._segments as segments_mod
from mlipspace.aggregate import (
    cumulants,
    frame_values,
    moments_to_cumulants,
    population_to_kstat,
    root_cumulants,
)
from mlipspace.errors import InputError


def explicit_cumulants(mu: np.ndarray) -> list[np.ndarray]:
    """kappa_2..kappa_8 from central moments mu[k] (mu[0]=1, mu[1]=0), written out by hand."""
    m2, m3, m4, m5, m6, m7, m8 = (mu[k] for k in range(2, 9))
    return [
        m2,
        m3,
        m4 - 3 * m2**2,
        m5 - 10 * m2 * m3,
        m6 - 15 * m2 * m4 - 10 * m3**2 + 30 * m2**3,
        m7 - 21 * m2 * m5 - 35 * m3 * m4 + 210 * m2**2 * m3,
        m8 - 28 * m2 * m6 - 56 * m3 * m5 - 35 * m4**2 + 420 * m2**2 * m4 + 560 * m2 * m3**2 - 630 * m2**4,
    ]


def study_kappa8(mu):
    """The study script's kappa_8, with the 420/560 coefficients swapped."""
    m2, m3, m4, m5, m6, m8 = mu[2], mu[3], mu[4], mu[5], mu[6], mu[8]
    return m8 - 28 * m2 * m6 - 56 * m3 * m5 - 35 * m4**2 + 560 * m2**2 * m4 + 420 * m2 * m3**2 - 630 * m2**4


def one_frame(x, order=8, root=False):
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    return cumulants(x, np.zeros(len(x), dtype=np.int64), order=order, root=root)[0].reshape(order, -1)


# --- the moment -> cumulant algebra -------------------------------------------------------------


def test_recursion_equals_explicit_formulas_up_to_order_8():
    rng = np.random.default_rng(0)
    mu = np.zeros((9, 50))
    mu[0] = 1.0
    mu[2:] = rng.normal(size=(7, 50)) * rng.uniform(0.1, 3, size=(7, 1))
    kap = moments_to_cumulants(mu[1:], axis=0)
    assert np.allclose(kap[0], 0.0)
    for k, ref in zip(range(2, 9), explicit_cumulants(mu), strict=True):
        np.testing.assert_allclose(kap[k - 1], ref, rtol=1e-12, atol=1e-9)


def test_recursion_on_raw_moments_gives_known_cumulants():
    # Poisson(lam): raw moments are Touchard polynomials sum_j S(k, j) lam^j; every cumulant is lam.
    lam = 1.7
    s = np.zeros((9, 9))
    s[0, 0] = 1
    for a in range(1, 9):
        for b in range(1, a + 1):
            s[a, b] = b * s[a - 1, b] + s[a - 1, b - 1]
    raw = np.array([sum(s[k, j] * lam**j for j in range(k + 1)) for k in range(1, 9)])
    np.testing.assert_allclose(moments_to_cumulants(raw), lam, rtol=1e-10)
    # Exponential(lam): raw moments k!/lam^k, cumulants (k-1)!/lam^k.
    raw = np.array([math.factorial(k) / lam**k for k in range(1, 9)])
    ref = np.array([math.factorial(k - 1) / lam**k for k in range(1, 9)])
    np.testing.assert_allclose(moments_to_cumulants(raw), ref, rtol=1e-10)


def test_gaussian_moments_give_zero_higher_cumulants_and_catch_the_kappa8_swap():
    sigma = 1.3
    mu = np.array([1, 0, sigma**2, 0, 3 * sigma**4, 0, 15 * sigma**6, 0, 105 * sigma**8], dtype=float)
    kap = moments_to_cumulants(mu[1:])
    np.testing.assert_allclose(kap[1], sigma**2)
    np.testing.assert_allclose(kap[2:], 0.0, atol=1e-9 * sigma**8)
    # the study's swapped coefficients give 420 sigma^8 on Gaussian data
    np.testing.assert_allclose(study_kappa8(mu), 420 * sigma**8, rtol=1e-12)


def test_cumulants_match_exact_rational_arithmetic():
    # Independent route: cumulants of the empirical distribution as the Taylor coefficients of
    # log E[exp(tX)], evaluated in exact fractions (log-series of the moment generating function).
    rng = np.random.default_rng(3)
    values = [int(v) for v in rng.integers(-4, 9, size=37)]
    n = len(values)
    raw = [Fraction(sum(v**k for v in values), n) for k in range(9)]  # raw[0] = 1
    # power series M(t) = sum raw[k] t^k / k!;  K = log M  via  K' = M'/M  ->  coefficients
    m = [raw[k] / math.factorial(k) for k in range(9)]
    kcoef = [Fraction(0)] * 9
    for j in range(1, 9):  # j*K_j = j*m_j - sum_{i=1}^{j-1} i*K_i*m_{j-i}
        kcoef[j] = (j * m[j] - sum(i * kcoef[i] * m[j - i] for i in range(1, j))) / j
    exact = [float(kcoef[k] * math.factorial(k)) for k in range(1, 9)]
    ours = one_frame(np.array(values, dtype=float))[:, 0]
    np.testing.assert_allclose(ours, exact, rtol=1e-9, atol=1e-9 * max(abs(e) for e in exact))


# --- known distributions --------------------------------------------------------------------------


def test_large_gaussian_sample_has_vanishing_higher_cumulants():
    rng = np.random.default_rng(1)
    n = 200_000
    sigma = np.array([0.5, 1.0, 4.0])
    x = rng.normal(loc=[1.0, -2.0, 10.0], scale=sigma, size=(n, 3))
    kap = one_frame(x)
    np.testing.assert_array_less(np.abs(kap[0] - [1.0, -2.0, 10.0]), 6 * sigma / np.sqrt(n))
    np.testing.assert_allclose(kap[1] / sigma**2, 1.0, atol=6 * np.sqrt(2 / n))
    for k in range(3, 9):
        # sampling sd of kappa_k for a Gaussian is about sqrt(k!/n) sigma^k
        tol = 6 * np.sqrt(math.factorial(k) / n)
        assert np.all(np.abs(kap[k - 1] / sigma**k) < tol), (k, kap[k - 1] / sigma**k, tol)
    # with the study's kappa_8 the same data would sit near 420 sigma^8
    mu = np.array([np.mean((x - x.mean(0)) ** k, axis=0) for k in range(9)])
    assert np.all(np.abs(study_kappa8(mu) / sigma**8 - 420) < 50)
    assert np.all(np.abs(kap[7] / sigma**8) < 6 * np.sqrt(math.factorial(8) / n))


def test_exponential_quantile_sample_has_factorial_cumulants():
    # Deterministic sample: the quantiles (i + 1/2)/n of Exponential(lam). Its cumulants converge to
    # (k-1)!/lam^k; the missing far tail costs ~1e-5 at k=2 and ~3% at k=8 for n = 2**22.
    lam = 2.5
    n = 1 << 22
    x = stats.expon.ppf((np.arange(n) + 0.5) / n, scale=1 / lam)
    kap = one_frame(x)[:, 0]
    ref = np.array([math.factorial(k - 1) / lam**k for k in range(1, 9)])
    rtol = np.array([1e-6, 1e-5, 1e-4, 5e-4, 3e-3, 1e-2, 3e-2, 6e-2])
    np.testing.assert_array_less(np.abs(kap / ref - 1), rtol)


def test_random_exponential_sample_low_orders():
    rng = np.random.default_rng(7)
    lam, n = 0.5, 1_000_000
    kap = one_frame(rng.exponential(1 / lam, size=n), order=4)[:, 0]
    ref = np.array([math.factorial(k - 1) / lam**k for k in range(1, 5)])
    np.testing.assert_array_less(np.abs(kap / ref - 1), [5e-3, 1e-2, 3e-2, 8e-2])


def test_poisson_sample_cumulants_all_equal_lambda():
    # Exact-frequency sample of Poisson(lam): value j repeated round(N pmf(j)) times. Sample
    # cumulants of order > 6 need far larger N (their error grows like moments of order 2k).
    lam, big_n = 0.5, 10_000_000
    j = np.arange(40)
    x = np.repeat(j, np.round(big_n * stats.poisson.pmf(j, lam)).astype(np.int64)).astype(float)
    kap = one_frame(x, order=6)[:, 0]
    np.testing.assert_array_less(np.abs(kap / lam - 1), [1e-6, 1e-5, 1e-4, 1e-3, 5e-3, 2e-2])
    rng = np.random.default_rng(11)
    kap = one_frame(rng.poisson(3.0, size=2_000_000).astype(float), order=4)[:, 0]
    np.testing.assert_array_less(np.abs(kap / 3.0 - 1), [2e-3, 5e-3, 2e-2, 5e-2])


def test_agrees_with_scipy_kstat_after_bias_correction():
    rng = np.random.default_rng(5)
    sizes = [5, 6, 9, 17, 40]
    frames = np.repeat(np.arange(len(sizes)) * 3 + 1, sizes)  # non-contiguous ids 1, 4, 7, ...
    x = rng.gamma(2.0, size=(sum(sizes), 3))
    kap = cumulants(x, frames, order=4, root=False).reshape(len(sizes), 4, 3)
    unbiased = population_to_kstat(kap, np.array(sizes)[:, None], axis=1)
    for i, fid in enumerate(np.unique(frames)):
        xs = x[frames == fid]
        for k in range(1, 5):
            ref = [stats.kstat(xs[:, c], n=k) for c in range(3)]
            np.testing.assert_allclose(unbiased[i, k - 1], ref, rtol=1e-10, atol=1e-12)


def test_population_to_kstat_rejects_too_small_frames_and_high_orders():
    with pytest.raises(InputError, match="more than 4 atoms"):
        population_to_kstat(np.zeros((2, 4)), np.array([[4], [9]]))
    with pytest.raises(InputError, match="orders <= 4"):
        population_to_kstat(np.zeros(5), 10)


# --- structure of the output ----------------------------------------------------------------------


def random_frames(rng, n_frames=12, d=5, ids=None):
    sizes = rng.integers(1, 30, size=n_frames)
    ids = np.arange(n_frames) if ids is None else np.asarray(ids)
    frame_index = np.repeat(ids, sizes)
    x = rng.normal(size=(sizes.sum(), d)).astype(np.float32) * rng.uniform(0.5, 3, size=d)
    return x, frame_index


def reference_per_frame(x, frame_index, order):
    """Per-frame loop with the explicit formulas (test reference only)."""
    out = []
    for fid in np.unique(frame_index):
        xs = np.asarray(x[frame_index == fid], dtype=np.float64)
        c = xs - xs.mean(0)
        mu = np.array([np.mean(c**k, axis=0) for k in range(9)])
        out.append(np.concatenate([xs.mean(0)] + explicit_cumulants(mu)[: order - 1]))
    return np.array(out)


def test_matches_per_frame_reference_and_layout_is_order_major():
    rng = np.random.default_rng(0)
    x, f = random_frames(rng)
    got, info = cumulants(x, f, order=8, root=False, return_info=True)
    ref = reference_per_frame(x, f, 8)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-10)
    d = x.shape[1]
    assert got.shape == (len(np.unique(f)), 8 * d)
    assert info.columns[:d + 1] == tuple((1, c) for c in range(d)) + ((2, 0),)
    assert info.columns[-1] == (8, d - 1)
    assert info.prefix(3) == slice(0, 3 * d) and info.block(3) == slice(2 * d, 3 * d)
    np.testing.assert_allclose(got[:, info.prefix(3)], cumulants(x, f, order=3, root=False))


def test_invariant_to_atom_order_within_and_across_frames():
    rng = np.random.default_rng(1)
    x, f = random_frames(rng, n_frames=20, d=4)
    base = cumulants(x, f, order=8)
    perm = rng.permutation(len(x))  # shuffles atoms within frames and interleaves the frames
    np.testing.assert_allclose(cumulants(x[perm], f[perm], order=8), base, rtol=1e-9, atol=1e-12)


def test_rows_are_sorted_unique_frame_ids_even_if_non_contiguous():
    rng = np.random.default_rng(2)
    ids = [7, 3, 100, 42]
    x, f = random_frames(rng, n_frames=4, d=2, ids=ids)
    got, info = cumulants(x, f, order=2, return_info=True)
    np.testing.assert_array_equal(info.frames, sorted(ids))
    for row, fid in enumerate(info.frames):
        np.testing.assert_allclose(got[row, :2], x[f == fid].astype(np.float64).mean(0))
        assert info.n_atoms[row] == np.sum(f == fid)


def test_single_atom_frames_have_zero_higher_cumulants_and_are_flagged():
    x = np.array([[1.0, 2.0], [3.0, -1.0], [5.0, 0.5], [-2.0, 4.0]])
    f = np.array([0, 1, 1, 5])
    got, info = cumulants(x, f, order=4, return_info=True)
    np.testing.assert_array_equal(info.single_atom_frames, [0, 5])
    np.testing.assert_array_equal(got[0], [1.0, 2.0] + [0.0] * 6)
    np.testing.assert_array_equal(got[2], [-2.0, 4.0] + [0.0] * 6)
    assert np.all(got[1, 2:4] > 0)  # a genuine spread in frame 1


def test_root_maps_every_block_to_feature_units():
    rng = np.random.default_rng(4)
    x, f = random_frames(rng, d=3)
    raw = cumulants(x, f, order=8, root=False)
    rooted = cumulants(x, f, order=8, root=True)
    n = len(raw)
    np.testing.assert_allclose(rooted, root_cumulants(raw.reshape(n, 8, 3), axis=1).reshape(n, -1))
    k = np.repeat(np.arange(1, 9), 3)
    expect = np.where(k == 1, raw, np.sign(raw) * np.abs(raw) ** (1.0 / k))
    np.testing.assert_allclose(rooted, expect)
    # homogeneity: features times s -> rooted block k times sign(s)^k |s|; shifts move only kappa_1
    s, shift = -2.5, 3.0
    factor = np.sign(s) ** k * abs(s)
    np.testing.assert_allclose(cumulants(s * x.astype(float), f, order=8), factor * rooted, rtol=1e-8, atol=1e-10)
    shifted = cumulants(x.astype(float) + shift, f, order=8)
    np.testing.assert_allclose(shifted[:, 3:], rooted[:, 3:], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(shifted[:, :3], rooted[:, :3] + shift, rtol=1e-6)


def test_float32_input_is_computed_in_float64_and_stable_under_offsets():
    rng = np.random.default_rng(6)
    x, f = random_frames(rng, d=3)
    got = cumulants(x, f, order=4, root=False)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, cumulants(x.astype(np.float64), f, order=4, root=False))
    # two-pass centring: a large common offset must not destroy the variance
    big = x.astype(np.float64) + 1e8
    np.testing.assert_allclose(cumulants(big, f, order=2, root=False)[:, 3:], got[:, 3:6], rtol=1e-6, atol=1e-9)


def test_blocking_gives_the_same_result(monkeypatch):
    rng = np.random.default_rng(8)
    x, f = random_frames(rng, n_frames=30, d=6)
    ref = cumulants(x, f, order=8)
    monkeypatch.setattr(segments_mod, "_BLOCK_ELEMENTS", 40)  # smaller than one frame: 1 frame/block
    np.testing.assert_allclose(cumulants(x, f, order=8), ref, rtol=1e-12, atol=1e-14)
    monkeypatch.setattr(segments_mod, "_BLOCK_ELEMENTS", 300)
    np.testing.assert_allclose(cumulants(x, f, order=8), ref, rtol=1e-12, atol=1e-14)


def test_to_attrs_is_json_serialisable():
    import json

    rng = np.random.default_rng(9)
    x, f = random_frames(rng, n_frames=3, d=2)
    _, info = cumulants(x, f, order=3, return_info=True)
    attrs = json.loads(json.dumps(info.to_attrs()))
    assert attrs["order"] == 3 and attrs["root"] is True and attrs["frames"] == [0, 1, 2]


# --- bad input ------------------------------------------------------------------------------------


def test_non_finite_features_name_the_frame():
    x = np.ones((6, 2))
    x[4, 1] = np.nan
    with pytest.raises(InputError, match="frame 12: features contain NaN"):
        cumulants(x, np.array([3, 3, 9, 9, 12, 12]), order=3)


def test_overflow_names_the_frame():
    x = np.array([[0.0], [1e60], [1.0], [2.0]])
    with pytest.raises(InputError, match="frame 0: moments up to order 8 overflow"):
        cumulants(x, np.array([0, 0, 1, 1]), order=8)


@pytest.mark.parametrize(
    ("features", "frame_index", "order", "message"),
    [
        (np.ones(4), np.zeros(4, int), 2, "2-D"),
        (np.ones((4, 2)), np.zeros(3, int), 2, "3 entries but features has 4 rows"),
        (np.ones((0, 2)), np.zeros(0, int), 2, "no rows"),
        (np.ones((2, 2)), np.array([0.5, 1.0]), 2, "integer frame ids"),
        (np.ones((2, 2)), np.zeros(2, int), 0, "order must be an integer >= 1"),
        (np.array([["a", "b"]]), np.zeros(1, int), 2, "numeric"),
    ],
)
def test_bad_input_is_rejected(features, frame_index, order, message):
    with pytest.raises(InputError, match=message):
        cumulants(features, frame_index, order=order)


def test_frame_values_reduces_per_atom_fields():
    subset = np.array(["b", "b", "a", "c", "c"])
    f = np.array([4, 4, 1, 9, 9])
    np.testing.assert_array_equal(frame_values(subset, f), ["a", "b", "c"])
    with pytest.raises(InputError, match="frame 9"):
        frame_values(np.array(["b", "b", "a", "c", "d"]), f)
