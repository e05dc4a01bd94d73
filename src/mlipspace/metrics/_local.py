r"""Batched local ridge fits of the LFRE: all test rows of a batch solved together.

For test row :math:`i` with neighbourhood :math:`N_i` (k training rows, nearest first), scikit-matter
centres :math:`X_{N_i}, Y_{N_i}` on their means, fits ``Ridge2FoldCV`` (relative cutoff, 2-fold CV
with seeded folds over the k positions) and predicts
:math:`\tilde y_i = \bar y + (x_i - \bar x) V_n S_n^{-1} U_n^T (Y_{N_i} - \bar y)`.
Here the same steps run on stacked (B, k, d) tensors: three batched SVDs per batch (the two CV
folds and the whole neighbourhood), cross-fold losses evaluated once per distinct truncation level,
argmax over alphas (first best, as scikit-matter), and the final prediction as a short chain of
batched mat-vecs. No Python loop runs per test row.

``mode="fast"`` replaces each SVD by an eigendecomposition of the smaller Gram matrix
(:math:`XX^T` or :math:`X^TX`): about 3x less work, but singular values below
:math:`\sqrt{10^{-13}}\,s_{max}` (about 3e-7 of the largest) are treated as zero because the Gram
matrix cannot resolve them. It is an approximation; the benchmark prints its deviation.

The code is written once against the array backend of :mod:`._backend`, so that the same steps run
with NumPy (CPU) or torch (CPU or CUDA).
"""

from __future__ import annotations

import numpy as np

_EPS = np.spacing(1.0)
#: Eigenvalues of the Gram matrix below this fraction of the largest are zero in fast mode.
FAST_FLOOR = 1e-13
def _decompose(ns, A, mode: str, rcond: float):
    """Thin SVD pieces of a stack A (B, m, n): (U (B,m,r), s (B,r), Vt (B,r,n), n_valid (B,)).

    Columns of U / rows of Vt beyond n_valid (singular values <= rcond, or under the Gram noise
    floor in fast mode) are zeroed, so they never contribute."""
    if mode == "exact":
        U, s, Vt = ns.svd(A)
        valid = s > rcond
    else:
        m, n = A.shape[-2], A.shape[-1]
        if m <= n:
            lam, U = ns.eigh(A @ A.mT)
            lam, U = ns.flip(lam, -1), ns.flip(U, -1)
            s = lam.clip(min=0) ** 0.5
            valid = (lam > FAST_FLOOR * lam[..., :1]) & (s > rcond)
            sinv = (1.0 / s.clip(min=1e-300)) * valid
            Vt = (U.mT @ A) * sinv[..., :, None]
        else:
            lam, V = ns.eigh(A.mT @ A)
            lam, V = ns.flip(lam, -1), ns.flip(V, -1)
            s = lam.clip(min=0) ** 0.5
            valid = (lam > FAST_FLOOR * lam[..., :1]) & (s > rcond)
            sinv = (1.0 / s.clip(min=1e-300)) * valid
            U = (A @ V) * sinv[..., None, :]
            Vt = V.mT
    s = s * valid
    U = U * valid[..., None, :]
    Vt = Vt * valid[..., :, None]
    return U, s, Vt, valid.sum(-1)


def _exact_mean(A):
    """Mean over axis 1 of (B, k, d), computed as ``A[:, 0] + mean(A - A[:, 0])``.

    Equal to ``A.mean(1)`` up to rounding, but exact when all k rows are identical (duplicated
    atoms): the centred neighbourhood is then exactly zero instead of rounding noise, whose
    relative-cutoff "fit" could blow up to arbitrary values."""
    a0 = A[:, :1, :]
    return a0[:, 0, :] + (A - a0).mean(1)


class LocalSource:
    """Everything of a batch of local fits that depends only on the source space X.

    ``Xn`` (B, k, d_X): neighbourhoods in *fold order*: the rows of CV fold 1 (positions in the
    nearest-first order given by ``kfold_halves(k)[0]``) then those of fold 2, so both folds are
    views; ``n1`` = size of fold 1. ``x`` (B, d_X): the test rows.
    Reused across targets by :func:`mlipspace.metrics.pairwise`.
    """

    def __init__(self, ns, Xn, x, n1: int, alphas, mode: str = "exact"):
        self.ns = ns
        B, k, d_x = Xn.shape
        self.n1, self.n2 = int(n1), k - int(n1)
        rcond = max(k, d_x) * _EPS
        mx = _exact_mean(Xn)
        Xl = Xn - mx[:, None, :]
        X1, X2 = Xl[:, : self.n1], Xl[:, self.n1 :]
        U1, s1, V1t, n1 = _decompose(ns, X1, mode, rcond)
        U2, s2, V2t, n2 = _decompose(ns, X2, mode, rcond)
        self.U1t, self.U2t = U1.mT, U2.mT
        inv1 = (1.0 / s1.clip(min=1e-300)) * (s1 > 0)
        inv2 = (1.0 / s2.clip(min=1e-300)) * (s2 > 0)
        self.A12 = (X2 @ V1t.mT) * inv1[:, None, :]  # (B, n2, r1): fold-2 rows in fold-1 basis / s1
        self.A21 = (X1 @ V2t.mT) * inv2[:, None, :]
        alphas = ns.asarray(alphas)
        smax = ns.maximum(s1.max(-1).values if ns.name == "torch" else s1.max(-1),
                          s2.max(-1).values if ns.name == "torch" else s2.max(-1))
        self.scaled = smax[:, None] * alphas[None, :]  # (B, n_alphas)
        L1 = (s1[:, None, :] > self.scaled[:, :, None]).sum(-1)
        L2 = (s2[:, None, :] > self.scaled[:, :, None]).sum(-1)
        self.L1 = ns.minimum(L1, n1[:, None])
        self.L2 = ns.minimum(L2, n2[:, None])
        U, s, Vt, _ = _decompose(ns, Xl, mode, 0.0)
        self.s, self.U = s, U
        inv = (1.0 / s.clip(min=1e-300)) * (s > 0)
        self.xv = ((x - mx)[:, None, :] @ Vt.mT)[:, 0, :] * inv  # (B, r)

    def _loss_table(self, A, Bm, Yv, levels, n_rows):
        """(B, r+1) table of negative mean-over-columns RMSE of the truncation levels in ``levels``,
        evaluated per distinct level only for the rows that need it."""
        ns = self.ns
        table = ns.zeros((A.shape[0], A.shape[-1] + 1), like=A)
        B = A.shape[0]
        for L in ns.unique(levels):
            rows = ns.nonzero((levels == L).any(-1))
            if rows.shape[0] == B:  # every row needs this level: work on views, no gathers
                E = Yv - A[:, :, :L] @ Bm[:, :L, :] if L > 0 else Yv
                table[:, L] = -((ns.einsum("bij,bij->bj", E, E) / n_rows) ** 0.5).mean(-1)
                continue
            E = Yv[rows]
            if L > 0:
                E = E - A[rows, :, :L] @ Bm[rows, :L, :]
            table[rows, L] = -((ns.einsum("bij,bij->bj", E, E) / n_rows) ** 0.5).mean(-1)
        return table

    def errors(self, Yn, y):
        """Pointwise local reconstruction errors (B,) of targets ``Yn`` (B, k, d_Y), ``y`` (B, d_Y)."""
        ns = self.ns
        my = _exact_mean(Yn)
        Yl = Yn - my[:, None, :]
        Y1, Y2 = Yl[:, : self.n1], Yl[:, self.n1 :]
        B1 = self.U1t @ Y1  # (B, r1, d_Y)
        B2 = self.U2t @ Y2
        t12 = self._loss_table(self.A12, B1, Y2, self.L1, self.n2)
        t21 = self._loss_table(self.A21, B2, Y1, self.L2, self.n1)
        cv = (ns.take(t12, self.L1, 1) + ns.take(t21, self.L2, 1)) / 2
        best = cv.argmax(-1)
        thr = ns.take(self.scaled, best[:, None], 1)  # (B, 1)
        keep = self.s > thr
        w = self.xv * keep
        coef = (w[:, None, :] @ self.U.mT)  # (B, 1, k)
        pred = my + (coef @ Yl)[:, 0, :]
        return ((y - pred) ** 2).sum(-1) ** 0.5
