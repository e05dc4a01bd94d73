"""Property-based tests (hypothesis): reader round trip, cumulant invariances, metric invariances.

Few examples each (max_examples <= 25, no deadline): fast and not flaky, yet every run draws new
shapes, scales and permutations from the strategies' seeds.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlipspace import metrics
from mlipspace.aggregate import cumulants
from mlipspace.data import fingerprint, read, write
from mlipspace.errors import InputError

FEW = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# --- readers -----------------------------------------------------------------------------------
@st.composite
def frames_strategy(draw):
    """1-4 frames of 1-6 atoms on a jittered 2.5 Å grid (never closer than 0.3 Å), random pbc/labels."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(draw(st.integers(1, 4))):
        n = int(rng.integers(1, 7))
        grid = np.array([(i, j, l) for i in range(2) for j in range(2) for l in range(2)], float)[:n] * 2.5
        pos = np.round(grid + rng.uniform(-0.4, 0.4, size=(n, 3)) + 1.0, 6)
        z = rng.integers(1, 84, size=n)
        periodic = draw(st.sampled_from(["all", "none", "slab"]))
        if periodic == "none":
            atoms = Atoms(numbers=z, positions=pos)
        else:
            cell = np.round(np.diag(rng.uniform(6.0, 9.0, 3)) + np.triu(rng.uniform(-0.5, 0.5, (3, 3)), 1), 6)
            atoms = Atoms(numbers=z, positions=pos, cell=cell, pbc=[True, True, periodic == "all"])
        atoms.info["subset"] = f"s{k % 2}"
        if draw(st.booleans()):
            atoms.info["energy"] = float(np.round(rng.normal() * 10, 6))
            atoms.arrays["forces"] = np.round(rng.normal(size=(n, 3)), 6)
        frames.append(atoms)
    return frames


@FEW
@given(frames=frames_strategy())
def test_write_read_round_trip(tmp_path_factory, frames):
    path = tmp_path_factory.mktemp("rt") / "frames.xyz"
    write(frames, path)
    back = read(path)
    assert len(back) == len(frames)
    assert fingerprint(back) == fingerprint(frames)  # numbers, positions, cell, pbc bit for bit
    for a, b in zip(frames, back):
        assert b.info["subset"] == a.info["subset"]
        np.testing.assert_array_equal(b.pbc, a.pbc)
        if "energy" in a.info:
            assert b.info["energy"] == pytest.approx(a.info["energy"], abs=1e-9)
            np.testing.assert_allclose(b.arrays["forces"], a.arrays["forces"], atol=1e-9)
        else:
            assert "energy" not in b.info and "forces" not in b.arrays
    # and once more: a re-read export is a fixed point
    write(back, path)
    assert fingerprint(read(path)) == fingerprint(frames)


# --- cumulants ---------------------------------------------------------------------------------
@st.composite
def atom_features(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n_frames = draw(st.integers(1, 4))
    sizes = rng.integers(2, 9, size=n_frames)
    d = draw(st.integers(1, 3))
    x = rng.normal(size=(int(sizes.sum()), d)) * rng.uniform(0.5, 2.0, size=d)
    frame = np.repeat(np.arange(n_frames) * 3, sizes)  # non-contiguous ids
    return x, frame, rng


@FEW
@given(data=atom_features(), order=st.integers(1, 6))
def test_cumulants_permutation_invariant(data, order):
    x, frame, rng = data
    p = rng.permutation(len(frame))
    for root in (True, False):
        np.testing.assert_allclose(cumulants(x[p], frame[p], order=order, root=root),
                                   cumulants(x, frame, order=order, root=root), rtol=1e-9, atol=1e-10)


@FEW
@given(data=atom_features(), order=st.integers(2, 6), shift=st.floats(-5, 5))
def test_cumulants_of_order_two_and_up_are_shift_invariant(data, order, shift):
    x, frame, rng = data
    c = shift * rng.uniform(0.5, 1.5, size=x.shape[1])
    a = cumulants(x, frame, order=order, root=False)
    b = cumulants(x + c, frame, order=order, root=False)
    d = x.shape[1]
    np.testing.assert_allclose(b[:, :d], a[:, :d] + c, atol=1e-9)  # kappa_1 is the mean: it shifts
    np.testing.assert_allclose(b[:, d:], a[:, d:], atol=1e-7 * (1 + abs(shift)) ** order)


@FEW
@given(data=atom_features(), order=st.integers(1, 6),
       scale=st.floats(0.1, 10).flatmap(lambda s: st.sampled_from([s, -s])))
def test_cumulants_scale_as_c_to_the_k(data, order, scale):
    x, frame, _ = data
    d = x.shape[1]
    a = cumulants(x, frame, order=order, root=False)
    b = cumulants(scale * x, frame, order=order, root=False)
    for k in range(1, order + 1):
        block = slice((k - 1) * d, k * d)
        np.testing.assert_allclose(b[:, block], scale**k * a[:, block], rtol=1e-8,
                                   atol=1e-10 * abs(scale) ** k * (1 + np.abs(a[:, block]).max()))
    # after the root every block has the feature's unit: kappa_k -> sign(c)^k |c| kappa_k. A kappa_k
    # that is zero in exact arithmetic (e.g. kappa_3 of two atoms) is rounding noise whose k-th root
    # is not small (cbrt(1e-16) ~ 5e-6), so only clearly non-zero cumulants are compared.
    ra, rb = cumulants(x, frame, order=order), cumulants(scale * x, frame, order=order)
    for k in range(1, order + 1):
        block = slice((k - 1) * d, k * d)
        clear = np.abs(a[:, block]) > 1e-9 * (1 + np.abs(a[:, block]).max())
        np.testing.assert_allclose(rb[:, block][clear], (np.sign(scale) ** k * abs(scale) * ra[:, block])[clear],
                                   rtol=1e-6, atol=1e-8 * abs(scale))


# --- metrics -----------------------------------------------------------------------------------
@st.composite
def feature_pair(draw):
    """X (n, dx) and a noisy non-linear Y (n, dy) of random shapes and scales, and a split."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n = draw(st.integers(24, 70))
    dx, dy = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    X = rng.normal(size=(n, dx)) * 10.0 ** rng.uniform(-3, 3)
    Y = np.tanh(X / X.std() @ rng.normal(size=(dx, dy))) + 0.2 * rng.normal(size=(n, dy))
    idx = rng.permutation(n)
    n_train = int(n * rng.uniform(0.4, 0.7))
    return X, Y, np.sort(idx[:n_train]), np.sort(idx[n_train:]), rng


@FEW
@given(data=feature_pair())
def test_metrics_are_invariant_to_a_permutation_of_the_rows(data):
    """Shuffling the samples (the indices follow them, training rows in the same order) changes nothing;
    LFRE does not depend on the order of ``train_idx`` at all."""
    X, Y, train, test, rng = data
    base = metrics.gfre(X, Y, train_idx=train, test_idx=test)
    assert np.isfinite(base) and base >= 0.0
    p = rng.permutation(len(X))
    inv = np.argsort(p)
    assert metrics.gfre(X[p], Y[p], train_idx=inv[train], test_idx=inv[test]) == pytest.approx(base, rel=1e-9, abs=1e-12)
    assert metrics.gfrd(X[p], Y[p], train_idx=inv[train], test_idx=inv[test]) == pytest.approx(
        metrics.gfrd(X, Y, train_idx=train, test_idx=test), rel=1e-9, abs=1e-12)
    k = min(8, len(train))
    ref = metrics.lfre(X, Y, k=k, train_idx=train, test_idx=test)
    assert metrics.lfre(X[p], Y[p], k=k, train_idx=inv[train], test_idx=inv[test]) == pytest.approx(ref, rel=1e-9, abs=1e-12)
    assert metrics.lfre(X, Y, k=k, train_idx=rng.permutation(train), test_idx=test) == pytest.approx(ref, rel=1e-9, abs=1e-12)


@pytest.mark.xfail(strict=True, reason="GFRE's 2-fold CV assigns folds by position in train_idx (scikit-matter's "
                   "Ridge2FoldCV), so reordering the same training rows can change the chosen cutoff and the value; "
                   "kept for scikit-matter parity (mlipspace's splits return sorted indices)")
def test_gfre_ignores_the_order_of_train_idx():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(24, 6)) * 10.0 ** rng.uniform(-3, 3)
    Y = np.tanh(X / X.std() @ rng.normal(size=(6, 1))) + 0.2 * rng.normal(size=(24, 1))
    idx = rng.permutation(24)
    n_train = int(24 * rng.uniform(0.4, 0.7))
    train, test = np.sort(idx[:n_train]), np.sort(idx[n_train:])
    assert metrics.gfre(X, Y, train_idx=rng.permutation(train), test_idx=test) == pytest.approx(metrics.gfre(X, Y, train_idx=train, test_idx=test),
                                                                            rel=1e-9)


@FEW
@given(data=feature_pair(), a=st.floats(1e-4, 1e4), b=st.floats(1e-4, 1e4), shift=st.floats(-100, 100))
def test_gfre_and_lfre_are_scale_and_shift_invariant(data, a, b, shift):
    X, Y, train, test, _ = data
    assert metrics.gfre(a * X + shift, b * Y - shift, train_idx=train, test_idx=test) == pytest.approx(
        metrics.gfre(X, Y, train_idx=train, test_idx=test), rel=1e-6, abs=1e-9)
    k = min(8, len(train))
    assert metrics.lfre(a * X + shift, b * Y, k=k, train_idx=train, test_idx=test) == pytest.approx(
        metrics.lfre(X, Y, k=k, train_idx=train, test_idx=test), rel=1e-6, abs=1e-9)


@FEW
@given(data=feature_pair())
def test_duplicated_rows(data):
    X, Y, train, test, rng = data
    base = metrics.gfre(X, Y, train_idx=train, test_idx=test)
    # every test row twice: the RMS over test rows is unchanged
    n = len(X)
    X2, Y2 = np.vstack([X, X[test]]), np.vstack([Y, Y[test]])
    test2 = np.concatenate([test, np.arange(n, n + len(test))])
    assert metrics.gfre(X2, Y2, train_idx=train, test_idx=test2) == pytest.approx(base, rel=1e-9, abs=1e-12)
    # duplicated training rows: still a finite error in range
    dup = rng.choice(train, size=len(train) // 2)
    X3, Y3 = np.vstack([X, X[dup]]), np.vstack([Y, Y[dup]])
    train3 = np.concatenate([train, np.arange(n, n + len(dup))])
    value = metrics.gfre(X3, Y3, train_idx=train3, test_idx=test)
    assert np.isfinite(value) and value >= 0.0  # not bounded by 1: test rows may lie outside the training range
    # a repeated index is refused, not counted twice silently
    with pytest.raises(InputError, match="repeated"):
        metrics.gfre(X, Y, train_idx=train, test_idx=np.repeat(test, 2))


@FEW
@given(data=feature_pair())
def test_a_space_reconstructs_itself(data):
    X, _, train, test, rng = data
    assert metrics.gfre(X, X, train_idx=train, test_idx=test) < 1e-6
    Q, _ = np.linalg.qr(rng.normal(size=(X.shape[1], X.shape[1])))
    assert metrics.gfre(X, X @ Q, train_idx=train, test_idx=test) < 1e-6  # a rotation is linear: nothing lost
