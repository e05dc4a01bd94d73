r"""Uncertainty and valid regimes of the study's numbers: one home for both.

**Intervals.** Every number is a mean over seeded splits. Its 95 % interval comes from a *cluster
bootstrap over test structures*: within each split, the test structures are resampled with
replacement :data:`N_BOOT` times and the statistic is recomputed from the pointwise values already
computed (no refit, so it is cheap); the replicates of all seeds are pooled and the interval is their
2.5–97.5 % percentile range. Resampling structures rather than atoms keeps the atoms of one
structure together (they are strongly correlated); pooling the seeds lets the variation between
splits widen the interval as well. The replicate draws are seeded by the split seed, so a rerun
gives the same bytes. Assumptions: test structures are exchangeable draws from the population the
dataset represents; the fitted map's own variability (training sampling) is carried only by the
variation between seeds. Measures with no pointwise decomposition (CKA, Procrustes) get a Student-t
interval over the seeds instead (``ci_method="t-seeds"``; it needs two or more seeds), except linear
CKA, whose replicates come from reweighting the test rows' Gram matrices (:func:`cka_replicates`).

**Valid regimes.** A number is written only when the method is valid for the data at hand;
otherwise the record has ``value: null`` and a ``reason`` ("not enough data (need N, have M)"):

* a ridge fit (GFRE/GFRD, probe) needs ``n_train >= RIDGE_ROWS_PER_COLUMN * d_source``;
* LFRE needs ``k <= n_train / LFRE_ROWS_PER_NEIGHBOUR`` (a neighbourhood much smaller than the data);
* every number needs at least :data:`MIN_TEST_GROUPS` test structures per split (a handful of test
  structures gives neither a stable value nor a meaningful interval).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Bootstrap replicates per split.
N_BOOT = 1000
#: Coverage of the intervals.
LEVEL = 0.95
#: Fewest test structures per split for any number.
MIN_TEST_GROUPS = 10
#: A global ridge fit needs this many training rows per source column.
RIDGE_ROWS_PER_COLUMN = 2
#: LFRE's neighbourhood must be at most this fraction (1/N) of the training rows.
LFRE_ROWS_PER_NEIGHBOUR = 4
#: Seed-stream tag of the bootstrap draws (kept apart from the split seeds' own streams).
_BOOT_STREAM = 0xB007


def not_enough(what: str, need: int, have: int) -> str:
    """The one wording of a regime failure: ``"not enough data (need N, have M): what"``."""
    return f"not enough data (need {int(need)}, have {int(have)}): {what}"


def ridge_regime(n_train: int, width: int, *, rows: str = "training rows") -> str | None:
    """``None`` if a ridge fit of ``width`` source columns on ``n_train`` rows is valid, else the reason."""
    need = RIDGE_ROWS_PER_COLUMN * int(width)
    if n_train < need:
        return not_enough(f"{rows} for a ridge fit of {int(width)} source columns "
                          f"(rule: n_train >= {RIDGE_ROWS_PER_COLUMN} x width)", need, n_train)
    return None


def lfre_regime(n_train: int, k: int) -> str | None:
    """``None`` if LFRE with ``k`` neighbours among ``n_train`` training rows is valid, else the reason."""
    need = LFRE_ROWS_PER_NEIGHBOUR * int(k)
    if n_train < need:
        return not_enough(f"training rows for LFRE neighbourhoods of k = {int(k)} "
                          f"(rule: k <= n_train / {LFRE_ROWS_PER_NEIGHBOUR})", need, n_train)
    return None


def test_regime(n_groups: int) -> str | None:
    """``None`` if ``n_groups`` test structures per split are enough, else the reason."""
    if n_groups < MIN_TEST_GROUPS:
        return not_enough("test structures per split", MIN_TEST_GROUPS, n_groups)
    return None


def first_reason(*reasons: str | None) -> str | None:
    """The first non-empty reason (regime checks in order of importance)."""
    return next((r for r in reasons if r), None)


def boot_weights(n_groups: int, seed: int, n_boot: int = N_BOOT) -> np.ndarray:
    """``(n_boot, n_groups)`` multiplicities of the resampled test structures of one split.

    Seeded by the split seed only, so every pair compared on that split sees the same resamples
    (their differences are then less noisy) and a rerun draws the same ones.
    """
    rng = np.random.default_rng([_BOOT_STREAM, int(seed), int(n_groups)])
    return rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot).astype(np.float64)


def group_index(groups: np.ndarray) -> tuple[np.ndarray, int]:
    """``(inverse, n_groups)``: position of each row's group among the sorted unique groups."""
    _, inv = np.unique(np.asarray(groups), return_inverse=True)
    return inv.ravel(), int(inv.max()) + 1 if inv.size else 0


def replicates(pointwise: np.ndarray, groups: np.ndarray, seed: int, *, kind: str = "rms",
               n_boot: int = N_BOOT) -> np.ndarray:
    r"""Bootstrap replicates of one split's statistic, resampling the test structures ``groups``.

    ``kind="rms"``: :math:`\sqrt{\sum_c w_c S_c / \sum_c w_c n_c}` with :math:`S_c` the sum of squared
    pointwise values of structure c and :math:`n_c` its row count (the RMS of the resampled rows);
    ``kind="mean"``: the mean of the resampled rows.
    """
    v = np.asarray(pointwise, dtype=np.float64).ravel()
    inv, n_groups = group_index(groups)
    if inv.size != v.size:
        raise ValueError(f"{v.size} pointwise values but {inv.size} group labels")
    W = boot_weights(n_groups, seed, n_boot)
    counts = np.bincount(inv, minlength=n_groups).astype(np.float64)
    sums = np.bincount(inv, weights=v * v if kind == "rms" else v, minlength=n_groups)
    stat = (W @ sums) / (W @ counts)
    return np.sqrt(stat) if kind == "rms" else stat


def pooled_interval(per_seed: Sequence[np.ndarray], value: float) -> tuple[float, float]:
    """Percentile interval of the pooled replicates of all seeds, widened to contain ``value``."""
    pooled = np.concatenate([np.asarray(r, dtype=np.float64).ravel() for r in per_seed])
    a = (1.0 - LEVEL) / 2
    lo, hi = np.quantile(pooled, [a, 1.0 - a])
    return float(min(lo, value)), float(max(hi, value))


def seeds_interval(values: Sequence[float]) -> tuple[float, float] | None:
    """Student-t interval of the mean of per-seed values (``None`` with fewer than two seeds)."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return None
    half = stats.t.ppf(0.5 + LEVEL / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
    m = float(v.mean())
    return m - float(half), m + float(half)


class Estimate:
    """Per-seed pointwise values of one number -> ``value``, ``spread`` and its 95 % interval.

    ``add(pointwise, groups, seed)`` once per split; :meth:`fields` gives the record fields
    (``values`` per seed for :func:`mlipspace.records.record`, ``ci``, ``ci_method``).
    """

    def __init__(self, kind: str = "rms"):
        if kind not in ("rms", "mean"):
            raise ValueError(f"unknown kind {kind!r}")
        self.kind = kind
        self.values: list[float] = []
        self.reps: list[np.ndarray] = []

    def add(self, pointwise: np.ndarray, groups: np.ndarray, seed: int) -> float:
        v = np.asarray(pointwise, dtype=np.float64).ravel()
        value = float(np.sqrt(np.mean(v * v))) if self.kind == "rms" else float(np.mean(v))
        self.values.append(value)
        self.reps.append(replicates(v, groups, seed, kind=self.kind))
        return value

    def add_replicates(self, value: float, reps: np.ndarray) -> float:
        """One split's value and its bootstrap replicates computed elsewhere (e.g. :func:`cka_replicates`)."""
        self.values.append(float(value))
        self.reps.append(np.asarray(reps, dtype=np.float64))
        return float(value)

    def fields(self) -> dict:
        value = float(np.mean(self.values))
        return {"values": list(self.values), "ci": pooled_interval(self.reps, value),
                "ci_method": "cluster-bootstrap"}


def cka_replicates(X: np.ndarray, Y: np.ndarray, groups: np.ndarray, seed: int, *, n_boot: int = N_BOOT
                   ) -> np.ndarray:
    r"""Bootstrap replicates of linear CKA(X, Y), resampling the structures ``groups`` (no recompute
    of features: each replicate reweights the rows).

    With row weights :math:`w` (a structure's multiplicity), :math:`N=\sum w`, Gram matrices
    :math:`K=XX^\top`, :math:`L=YY^\top`, :math:`a=Kw/N`, :math:`b=Lw/N`:
    :math:`\mathrm{HSIC}_w(K,L)\propto w^\top(K\circ L)w - 2N\sum_i w_i a_i b_i + N^2\bar a\bar b`
    (:math:`\bar a = w\cdot a/N`), i.e. HSIC of the resampled rows after centring them;
    CKA = HSIC(K,L)/sqrt(HSIC(K,K) HSIC(L,L)). Weights are constant within a structure, so the
    quadratic term needs only the structure-block sums of :math:`K\circ L`: O(n·C) per replicate.
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    inv, n_groups = group_index(groups)
    Wc = boot_weights(n_groups, seed, n_boot)                       # (B, C)
    G = np.zeros((len(inv), n_groups))
    G[np.arange(len(inv)), inv] = 1.0
    W = Wc[:, inv]                                                  # (B, n) row weights
    N = W.sum(axis=1)                                               # (B,)
    grams = {"K": X @ X.T, "L": Y @ Y.T}
    means = {k: (M @ G @ Wc.T) / N for k, M in grams.items()}       # (n, B): a, b

    def hsic(p: str, q: str) -> np.ndarray:
        M = G.T @ (grams[p] * grams[q]) @ G                         # (C, C) block sums
        quad = np.einsum("bc,cd,bd->b", Wc, M, Wc)
        cross = np.einsum("bn,nb,nb->b", W, means[p], means[q])
        bar = np.einsum("bn,nb->b", W, means[p]) * np.einsum("bn,nb->b", W, means[q]) / N**2
        return quad - 2 * N * cross + N**2 * bar

    kl, kk, ll = hsic("K", "L"), hsic("K", "K"), hsic("L", "L")
    return kl / np.sqrt(np.maximum(kk * ll, 1e-300))
