"""Intervals and valid regimes (mlipspace.intervals): coverage where the truth is known, exactness of
the reweighting bootstraps, the regime rules."""

from __future__ import annotations

import numpy as np
import pytest

from mlipspace import intervals
from mlipspace.experiments._common import atom_splits
from mlipspace.experiments.cross_model import pair_errors
from mlipspace.metrics import linear_cka


def _draw(rng, n_frames=80, d=6, d_y=4, sigma_u=0.5, sigma_e=0.5):
    """Atoms in structures of 5-30 atoms; Y = X A + a per-structure offset + noise.

    The best linear map leaves the offset and the noise, so the population GFRE (Y scaled to unit
    total variance) is sqrt(E / (|A|_F^2 + E)) with E = d_y (sigma_u^2 + sigma_e^2) per row."""
    sizes = rng.integers(5, 31, size=n_frames)
    frame = np.repeat(np.arange(n_frames), sizes)
    X = rng.normal(size=(len(frame), d))
    A = rng.normal(size=(d, d_y)) / np.sqrt(d)
    U = sigma_u * rng.normal(size=(n_frames, d_y))
    Y = X @ A + U[frame] + sigma_e * rng.normal(size=(len(frame), d_y))
    E = d_y * (sigma_u**2 + sigma_e**2)
    truth = np.sqrt(E / (np.sum(A * A) + E))
    rows = {"frame": frame, "subset": np.full(len(frame), "")}
    return {"x": X, "y": Y}, rows, truth


@pytest.mark.slow
def test_gfre_interval_covers_the_population_value_in_at_least_90_of_100_draws():
    rng = np.random.default_rng(20261203)
    covered, widths = 0, []
    for _ in range(100):
        feats, rows, truth = _draw(rng)
        splits = atom_splits(rows, (0, 1, 2))
        (rec,) = pair_errors(feats, [("x", "y")], splits, groups=rows["frame"], metrics=("gfre",))
        covered += rec["ci_low"] <= truth <= rec["ci_high"]
        widths.append(rec["ci_high"] - rec["ci_low"])
    assert covered >= 90, covered
    assert np.median(widths) < 0.2  # informative, not trivially wide


def test_replicates_resample_whole_structures():
    """A structure's rows move together: with one structure holding all the error, each replicate's
    RMS is sqrt(c S / (c n_s + other rows)) for c copies of it, which the multinomial weights give."""
    groups = np.repeat(np.arange(10), 3)
    pw = np.zeros(30)
    pw[:3] = 1.0  # structure 0 carries all the error
    reps = intervals.replicates(pw, groups, seed=0, n_boot=200)
    W = intervals.boot_weights(10, 0, 200)
    np.testing.assert_allclose(reps, np.sqrt(W[:, 0] * 3 / (W.sum(axis=1) * 3)))


def test_cka_replicates_equal_cka_of_the_resampled_rows():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(12), rng.integers(2, 6, 12))
    X = rng.normal(size=(len(groups), 5))
    Y = X @ rng.normal(size=(5, 7)) + rng.normal(size=(len(groups), 7))
    reps = intervals.cka_replicates(X, Y, groups, seed=3, n_boot=6)
    inv, n_groups = intervals.group_index(groups)
    W = intervals.boot_weights(n_groups, 3, 6)
    for b in range(6):
        idx = np.concatenate([np.repeat(np.flatnonzero(inv == c), int(W[b, c])) for c in range(n_groups)])
        assert reps[b] == pytest.approx(linear_cka(X[idx], Y[idx]), abs=1e-12)


def test_pooled_interval_contains_the_value_and_reruns_are_identical():
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(20), 4)
    e1, e2 = intervals.Estimate("rms"), intervals.Estimate("rms")
    for seed in (0, 1):
        pw = rng.normal(size=80)
        e1.add(pw, groups, seed)
        e2.add(pw, groups, seed)
    f1, f2 = e1.fields(), e2.fields()
    assert f1 == f2
    lo, hi = f1["ci"]
    assert lo <= np.mean(f1["values"]) <= hi


def test_regime_rules_name_what_is_missing():
    assert intervals.ridge_regime(100, 50) is None
    assert intervals.ridge_regime(99, 50) == ("not enough data (need 100, have 99): training rows for a ridge fit of "
                                              "50 source columns (rule: n_train >= 2 x width)")
    assert intervals.lfre_regime(512, 128) is None
    assert intervals.lfre_regime(511, 128).startswith("not enough data (need 512, have 511)")
    assert intervals.test_regime(9) == "not enough data (need 10, have 9): test structures per split"
    assert intervals.first_reason(None, "b", "c") == "b"


def test_too_few_test_structures_give_a_reason_not_a_number():
    rng = np.random.default_rng(3)
    feats, rows, _ = _draw(rng, n_frames=24)  # 7 test structures per split
    recs = pair_errors(feats, [("x", "y"), ("y", "x")], atom_splits(rows, (0,)), groups=rows["frame"],
                       metrics=("gfre", "cka"))
    assert all(r["value"] is None and r["ci_low"] is None and r["reason"].startswith("not enough data (need 10, have 7)")
               for r in recs)
