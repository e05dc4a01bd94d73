r"""Local ridge fits of the LFRE from Gram-matrix eigendecompositions, certified row by row (CPU).

The SVD path (:class:`mlipspace.metrics._local.LocalSource`) needs three LAPACK SVDs per test row.
The same quantities follow from symmetric eigendecompositions of Gram matrices, about half the
work: for a fold :math:`F` (:math:`n_f \times d`) with :math:`n_f \le d`,
:math:`FF^T = U\Lambda U^T` gives :math:`s = \sqrt\lambda`, :math:`U`, and the cross-fold
design :math:`X_o V S^{-1} = (X_o F^T) U \Lambda^{-1}`; with :math:`n_f > d`,
:math:`F^TF = V\Lambda V^T` and :math:`U^T Y = \Lambda^{-1/2} V^T F^T Y`. One product
:math:`X_l X_l^T` (neighbourhood in fold order) holds both fold Grams and the cross block.
The refit predicts :math:`\bar y + c^T Y_l` with
:math:`c = \sum_{\lambda_i > t^2} u_i (u_i^T X_l \tilde x)/\lambda_i` (kernel form) or
:math:`c = X_l \sum_{\lambda_i > t^2} v_i (v_i^T \tilde x)/\lambda_i`.

All 20 alphas are scored from one decomposition per fold: with :math:`A` the cross-fold design,
:math:`B = U^T Y_f`, :math:`P = A^T Y_o` and :math:`G = A^T A`, the squared residual of column
:math:`c` after the first :math:`L` components is

.. math::
    e_c(L) = \|y_c\|^2 + \sum_{l<L} B_{lc}\,(G_{ll}B_{lc} + 2\textstyle\sum_{l'<l} G_{ll'}B_{l'c} - 2P_{lc}),

so the levels of all alphas are prefix sums of one (r, d_Y) table (taken as one product with 0/1
prefix masks), and B, :math:`(\mathrm{diag}\,G + 2\,\mathrm{tril}\,G)B` and :math:`-2P` of both
folds come out of two stacked products with the target.

A Gram matrix cannot resolve singular values below about :math:`\sqrt{\epsilon}\,s_{max}`, so in
exact mode every row is *certified*: with an eigenvalue error bound
:math:`\epsilon_K = c\,\epsilon\,\lambda_{max}`, :math:`c = 2(k + d)` (about 30x the error
observed against LAPACK's SVD at k = d = 128), a row is accepted only when (1) every fold
eigenvalue is clearly above the rcond cutoff and none is within :math:`\epsilon_K` of any alpha's
cutoff (the truncation levels are those of an exact SVD), (2) the chosen alpha wins the CV by more
than the error bars of the losses (which grow like :math:`\lambda_{max}/\lambda_L` and
:math:`\lambda_{max}/\mathrm{gap}_L`), and (3) a first-order perturbation bound of the refit
prediction (weights :math:`\epsilon_K/\lambda_i`, mixing of kept and discarded eigenvectors
:math:`\epsilon_K/|\lambda_i-\lambda_j|`) is below ``REFIT_ATOL``. Rows that fail any test
(rank-deficient or badly conditioned neighbourhoods, small chosen alphas, near ties in the CV) are
recomputed with the SVD path, so exact mode keeps scikit-matter's values to rounding.
``certify=False`` (``mode="fast"``) skips the tests and the fallback.
"""

from __future__ import annotations

import numpy as np

from mlipspace.metrics._backend import NumpyBackend
from mlipspace.metrics._local import FAST_FLOOR, LocalSource, _exact_mean

_EPS = np.spacing(1.0)
#: Largest estimated error (norm of the prediction error, scaled units) of a certified refit.
REFIT_ATOL = 1e-9


def source_ok(lmax, fold_lams, scaled, k: int, d: int):
    r"""Rows (B,) whose fold Gram spectra a Gram engine resolves: with the eigenvalue error bound
    :math:`\epsilon_K = 2(k+d)\,\epsilon\,\lambda_{max}`, every fold eigenvalue (descending,
    ``fold_lams``) lies clearly above the rcond cutoff (else the fold is numerically rank
    deficient, e.g. near-duplicate rows, with singular values only an SVD resolves) and none lies
    within its error of an alpha's cutoff ``scaled`` (B, n_alphas) squared (the truncation levels
    are those of an exact SVD). NumPy arrays or torch tensors (same operations, same result)."""
    ok = lmax > 0
    rc2 = (max(k, d) * _EPS) ** 2
    thr2 = scaled**2
    for lam in fold_lams:
        dl = 2.0 * (k + d) * _EPS * lam[:, :1].clip(min=0)
        ok &= (lam[:, -1] - dl[:, 0]) > rc2
        tol = dl[:, :, None] + 4 * _EPS * thr2[:, :, None]
        ok &= ~(abs(lam[:, None, :] - thr2[:, :, None]) <= tol).any(-1).any(-1)
    return ok


def _eig_desc(K, torch=None):
    """Eigenpairs (values, vectors as columns) of a stack of symmetric matrices, largest first;
    with torch's MKL ``eigh`` when ``torch`` is given (~1.5x faster than OpenBLAS' on these
    sizes), NumPy's otherwise."""
    if torch is not None:
        lam, Ut = _eigh_rows(K, torch, desc=True)
        return lam, Ut.mT
    lam, V = np.linalg.eigh(K)
    return np.ascontiguousarray(lam[..., ::-1]), np.ascontiguousarray(V[..., ::-1])


class GramSource:
    """All X-side quantities of the local fits of a batch (see the module docstring).

    ``Xn`` (B, k, d): neighbourhoods in fold order (fold 1 rows first, ``n1`` of them); ``x`` (B, d)
    the test rows. ``certify``: check every row and fall back to the SVD path where needed.
    ``ns``: the array backend (:mod:`._backend`; None: NumPy), so the same steps run on NumPy
    arrays or on float64 torch tensors of its device (batched ``torch.linalg.eigh``, the same
    certificate, the SVD fallback on that device). ``torch``: with NumPy, the module whose MKL
    ``eigh`` decomposes the NumPy stacks (None: NumPy's).
    """

    def __init__(self, Xn, x, n1: int, alphas, certify: bool = True, torch=None, ns=None):
        self.ns = ns if ns is not None else NumpyBackend()
        self.torch = torch if self.ns.name == "numpy" else None
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            self._setup(Xn, x, n1, alphas, certify)

    def _eig(self, K):
        """Eigenpairs of a stack of symmetric matrices, largest first (vectors as columns)."""
        ns = self.ns
        if ns.name == "numpy":
            return _eig_desc(np.ascontiguousarray(K), self.torch)
        lam, V = ns.eigh(K)
        return ns.flip(lam, -1), ns.flip(V, -1)

    def _setup(self, Xn, x, n1, alphas, certify):
        ns = self.ns
        B, k, d = Xn.shape
        self.Xn, self.x = Xn, x
        self.alphas = np.asarray(alphas, dtype=np.float64)  # host copy, for the SVD fallback
        self.n1, self.n2 = int(n1), k - int(n1)
        self.certify = certify
        self._svd = None  # lazily built SVD fallback of the rows that fail the source checks
        n1, n2 = self.n1, self.n2
        mx = _exact_mean(Xn)
        Xl = Xn - mx[:, None, :]
        xt = x - mx
        # eigenvalue error bound relative to lambda_max, for the Gram product and the eigensolver
        # together (observed: ~16 eps at k = d = 128)
        self.c_eig = 2.0 * (k + d) * _EPS
        self.kernel_form = k <= d
        K = Xl @ Xl.mT if k <= d else None  # (B, k, k): fold Grams and cross block in one product
        X1, X2 = Xl[:, :n1], Xl[:, n1:]
        self._trG = []
        f1 = self._fold(X1, X2, K, slice(0, n1), slice(n1, k))
        f2 = self._fold(X2, X1, K, slice(n1, k), slice(0, n1))
        self.trG12, self.trG21 = self._trG
        self.lam1, self.r1valid = f1[0], f1[4]
        self.lam2, self.r2valid = f2[0], f2[4]
        # two matrices Qa (rows x n1), Qb (rows x n2) such that Qa @ Y_1 and Qb @ Y_2 hold, per
        # fold f (other fold o), B = U^T Y_f, G~ B and -2 A^T Y_o (G~ = diag G + 2 strict lower of
        # G = A^T A) [and the two halves of U^T Y_l for the refit]: two BLAS products per target
        self.Qa = ns.cat([f1[1], f1[3] @ f1[1], f2[2] * -2.0], 1)
        self.Qb = ns.cat([f2[1], f2[3] @ f2[1], f1[2] * -2.0], 1)
        self.r1, self.r2 = f1[1].shape[1], f2[1].shape[1]
        lmax = ns.maximum(self.lam1[:, 0], self.lam2[:, 0]).clip(min=0)
        smax = ns.sqrt(lmax)
        self.scaled = smax[:, None] * ns.asarray(self.alphas)[None, :]  # (B, n_alphas)
        s1 = ns.sqrt(self.lam1.clip(min=0))
        s2 = ns.sqrt(self.lam2.clip(min=0))
        self.L1 = ns.minimum((s1[:, None, :] > self.scaled[:, :, None]).sum(-1), self.r1valid[:, None])
        self.L2 = ns.minimum((s2[:, None, :] > self.scaled[:, :, None]).sum(-1), self.r2valid[:, None])

        # source-level test (also in fast mode: a Gram matrix cannot resolve what it flags)
        self.ok = source_ok(lmax, (self.lam1, self.lam2), self.scaled, k, d)
        # most rows uncertifiable (rank-deficient data): no refit decomposition, all rows by SVD
        self.skip = bool(self.ok.sum() < 0.5 * B)
        if self.skip:
            self.ok[:] = False
            return

        # refit: eigenpairs of the smaller Gram of the whole neighbourhood
        if k <= d:
            lam, U = self._eig(K)
            kappa = (Xl @ xt[:, :, None])[:, :, 0]  # X_l x~  (B, k)
            self.z = (kappa[:, None, :] @ U)[:, 0, :]  # u_i . kappa
            self.Ufull = U  # coefficient c = U (z / lam) restricted
        else:
            lam, V = self._eig(Xl.mT @ Xl)
            self.z = (xt[:, None, :] @ V)[:, 0, :]  # v_i . x~
            self.Ufull = Xl @ V  # c = X_l V (z / lam)
        self.lam = lam
        floor = FAST_FLOOR * lam[:, :1].clip(min=0)
        self.lam_pos = (lam > floor) & (lam > 0)

    def _fold(self, F, O, K, sf, so):
        """(eigenvalues desc, M with U^T Y_f = M Y_f, cross design A = O V S^-1, A^T A, n valid)."""
        ns = self.ns
        n_f, d = F.shape[1], F.shape[2]
        if n_f <= d:
            Kf = K[:, sf, sf] if K is not None else F @ F.mT
            lam, U = self._eig(Kf)
            valid = self._valid(lam)
            inv = ns.where(valid, 1.0 / ns.where(valid, lam, 1.0), 0.0)
            C = K[:, so, sf] if K is not None else O @ F.mT  # (B, n_o, n_f) cross Gram
            A = (C @ U) * inv[:, None, :]
            M = U.mT * valid[:, :, None]
        else:
            lam, V = self._eig(F.mT @ F)
            valid = self._valid(lam)
            sinv = ns.where(valid, 1.0 / ns.sqrt(ns.where(valid, lam, 1.0)), 0.0)
            A = (O @ V) * sinv[:, None, :]
            M = (V.mT @ F.mT) * sinv[:, :, None]
        G = A.mT @ A
        gd = ns.einsum("bii->bi", G)
        Gt = ns.tril(G, -1) * 2.0 + gd[:, :, None] * ns.eye(G.shape[-1], like=G)
        self._trG.append(gd.sum(-1))
        return lam, M, A.mT, Gt, valid.sum(-1)

    def _valid(self, lam):
        """Components kept by the rcond cutoff (and, as in fast mode, above the Gram noise floor)."""
        k, d = self.Xn.shape[1], self.Xn.shape[2]
        rc2 = (max(k, d) * _EPS) ** 2
        return (lam > rc2) & (lam > FAST_FLOOR * lam[:, :1].clip(min=0))

    def _table(self, Bm, R, yf_sq, ysq, lam, levels, trG, n_rows):
        r"""Negative mean-over-columns RMSE (B, n_alphas) of the cross-fold fits at the truncation
        ``levels`` (B, n_alphas), and its (lower, upper) error bars when certifying.

        :math:`e(L) = \|y\|^2 + \sum_{l<L} B_{lc} R_{lc}`, the prefix sums of the levels in use
        taken as one product with 0/1 prefix masks."""
        ns = self.ns
        r = Bm.shape[1]
        T = ns.as_float(ns.arange(0, r)[None, None, :] < levels[:, :, None])  # prefix masks
        e = T @ (Bm * R)
        e += ysq[:, None, :]
        val = -ns.sqrt(e.clip(min=0) / n_rows).mean(-1)
        if not self.certify:
            return val, None
        # error bar: c eps (lambda_max / lambda_L + lambda_max / gap_L) (2|y| + sqrt e)^2 for the
        # eigenvector errors (|A_L b_L| <= |y| + |y - A_L b_L|), plus the summation rounding
        # 4 r eps sum_l |q_l| <= 4 r eps 2 ||A||^2 |y_f|^2
        mag = (2.0 * ns.sqrt(ysq)[:, None, :] + ns.sqrt(e.clip(min=0))) ** 2
        lmax = lam[:, :1].clip(min=1e-300)
        lpos = lam.clip(min=1e-300)
        nxt = ns.cat([lam[:, 1:], ns.zeros((lam.shape[0], 1), like=lam)], 1)
        gap = abs(nxt - lam).clip(min=1e-300)  # lambda_l - lambda_{l+1}
        fac = ns.cat([ns.zeros((lam.shape[0], 1), like=lam), lmax / lpos + lmax / gap], 1)  # (B, r+1)
        de = (self.c_eig * ns.take(fac, levels, 1))[:, :, None] * mag
        de += (8 * r * _EPS * trG)[:, None, None] * yf_sq[:, None, :]
        lo = -ns.sqrt((e + de).clip(min=0) / n_rows).mean(-1)
        hi = -ns.sqrt((e - de).clip(min=0) / n_rows).mean(-1)
        return val, (lo, hi)

    def errors(self, Yn, y):
        """Pointwise local reconstruction errors (B,) of targets ``Yn`` (B, k, d_Y), ``y`` (B, d_Y)."""
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return self._errors(Yn, y)

    def _errors(self, Yn, y):
        ns = self.ns
        if self.skip:
            self.n_fallback = Yn.shape[0]
            return self._fallback(~self.ok, Yn, y)  # skip cleared every row's ok: all rows
        my = _exact_mean(Yn)
        Yl = Yn - my[:, None, :]
        Y1, Y2 = Yl[:, : self.n1], Yl[:, self.n1 :]
        Sa = self.Qa @ Y1
        Sb = self.Qb @ Y2
        r1, r2 = self.r1, self.r2
        y1sq = ns.einsum("bij,bij->bj", Y1, Y1)
        y2sq = ns.einsum("bij,bij->bj", Y2, Y2)
        R1 = Sa[:, r1 : 2 * r1] + Sb[:, 2 * r2 : 2 * r2 + r1]
        R2 = Sb[:, r2 : 2 * r2] + Sa[:, 2 * r1 : 2 * r1 + r2]
        t12, b12 = self._table(Sa[:, :r1], R1, y1sq, y2sq, self.lam1, self.L1, self.trG12, self.n2)
        t21, b21 = self._table(Sb[:, :r2], R2, y2sq, y1sq, self.lam2, self.L2, self.trG21, self.n1)
        take = ns.take
        cv = (t12 + t21) / 2
        best = cv.argmax(-1)
        thr = take(self.scaled, best[:, None], 1)  # (B, 1)
        thr2 = thr**2
        keep = (self.lam > thr2) & self.lam_pos
        w = ns.where(keep, self.z / ns.where(keep, self.lam, 1.0), 0.0)
        coef = self.Ufull @ w[:, :, None]  # (B, k, 1)
        pred = my + (coef.mT @ Yl)[:, 0, :]
        out = ((y - pred) ** 2).sum(-1) ** 0.5
        if not self.certify:  # fast mode: only the rows failing the source test take the SVD path
            bad = ~self.ok
            self.n_fallback = int(bad.sum())
            if self.n_fallback:
                out[bad] = self._fallback(bad, Yn, y)
            return out
        ok = self.ok.clone() if ns.name == "torch" else self.ok.copy()
        # (2) the chosen alpha wins the CV beyond the error bars
        lo = (b12[0] + b21[0]) / 2
        hi = (b12[1] + b21[1]) / 2
        bl1, bl2 = take(self.L1, best[:, None], 1), take(self.L2, best[:, None], 1)
        other = (self.L1 != bl1) | (self.L2 != bl2)
        best_lo = take(lo, best[:, None], 1)
        ok &= ~(other & (hi >= best_lo)).any(-1)
        # (3) refit: first-order error of the truncated pseudo-inverse under an eigen-error eps_K
        ok &= (thr[:, 0] > 0) & (self._refit_error(keep, Yl) <= REFIT_ATOL)
        self.n_fallback = int((~ok).sum())
        if self.n_fallback:
            out[~ok] = self._fallback(~ok, Yn, y)
        return out

    def _refit_error(self, keep, Yl):
        r"""Estimated error norm of the refit prediction :math:`\sum_{kept} a_i b_i/\lambda_i`
        (:math:`a_i = u_i^T X_l\tilde x`, :math:`b_i = u_i^T Y_l`) when the Gram matrix is perturbed
        by :math:`\epsilon_K = c\,\epsilon\lambda_{max}`: weights change by
        :math:`\epsilon_K/\lambda_i`, kept and discarded eigenvectors mix by
        :math:`\epsilon_K/|\lambda_i - \lambda_j|`."""
        ns = self.ns
        lam = self.lam
        eps_k = self.c_eig * lam[:, :1].clip(min=0)  # (B, 1)
        UY = self.Ufull.mT @ Yl
        bn = ns.sqrt(ns.einsum("bij,bij->bi", UY, UY))
        if self.kernel_form:
            a = abs(self.z)
        else:  # Ufull = X_l V = U S, z = V^T x~: a_i = s_i z_i, b_i = |u_i^T Y_l| = |Ufull_i^T Y_l| / s_i
            s = ns.sqrt(lam.clip(min=0))
            a = abs(self.z) * s
            bn = bn / ns.where(s > 0, s, np.inf)
        lk = ns.where(keep, lam, np.inf)
        mask = keep[:, :, None] & ~keep[:, None, :]  # kept i, discarded j: lambda_i > lambda_j
        W2 = lam[:, :, None] - lam[:, None, :]
        W2 *= W2
        W2 = ns.where(mask, 1.0 / ns.where(mask, W2, 1.0), 0.0)  # 1 / (lambda_i - lambda_j)^2
        # |sum_ij E_ji C_ij| <= ||E||_2 ||C||_* <= eps_K sum_i ||C_i,:||_2 (first order, E = U^T dK U)
        wa = ns.sqrt((W2 @ (a * a)[:, :, None])[..., 0])
        wb = ns.sqrt((W2 @ (bn * bn)[:, :, None])[..., 0])
        mix = ((bn / lk) * wa + (a / lk) * wb).sum(-1)
        wt = (a * bn / lk**2).sum(-1)
        return eps_k[:, 0] * (mix + wt)

    def _fallback(self, bad, Yn, y):
        """SVD path (on the backend's device) for the rows in mask ``bad``, in row order. Rows that
        failed the source checks are decomposed once per batch and reused by every target
        (pairwise tables)."""
        ns = self.ns
        out = ns.zeros((Yn.shape[0],), like=Yn)
        src_bad = ~self.ok
        if bool(src_bad.any()):
            if self._svd is None:
                sel = ns.nonzero(src_bad)
                self._svd = (sel, LocalSource(ns, self.Xn[sel], self.x[sel], self.n1, self.alphas, "exact"))
            sel, src = self._svd
            out[sel] = src.errors(Yn[sel], y[sel])
        extra = ns.nonzero(bad & ~src_bad)
        if extra.shape[0]:
            out[extra] = LocalSource(ns, self.Xn[extra], self.x[extra], self.n1, self.alphas,
                                     "exact").errors(Yn[extra], y[extra])
        return out[bad]


# ------------------------------------------------------------------------------------ fast mode

#: Relative eigenvalue floor of the float32 refit: Gram eigenvalues below
#: ``FAST32_FLOOR * lambda_max`` count as zero there.
FAST32_FLOOR = 1e-6
#: Rows whose chosen cutoff is below ``FAST32_GUARD * s_max`` get their refit in float64.
FAST32_GUARD = 1e-1


#: Fast mode imports torch (for its eigensolver) only for at least this many test rows, unless it
#: is imported already: the import (~1.2 s) costs more than it saves on fewer rows.
TORCH_IMPORT_ROWS = 4000


def _torch_eigh(n_rows: int | None = None):
    """The torch module for ``torch.linalg.eigh`` (MKL on x86: ~1.5-2x faster than OpenBLAS' LAPACK
    on small stacks) when it is imported already or ``n_rows`` (None: any) justifies importing it;
    None otherwise or when torch is not installed."""
    import sys

    if "torch" in sys.modules:
        return sys.modules["torch"]
    if n_rows is not None and n_rows < TORCH_IMPORT_ROWS:
        return None
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is optional
        return None
    return torch


def _eigh_rows(K, torch, desc=True):
    """Eigenvalues and eigenvectors *as rows* (``Ut[b, i]`` is the i-th eigenvector of ``K[b]``) of
    a stack of symmetric matrices (float32 or float64): largest first or, ``desc=False``, as LAPACK
    returns them (ascending). Rows are what torch's column-major result holds contiguously, and
    what the products below want."""
    if torch is not None:
        lam, V = torch.linalg.eigh(torch.from_numpy(K))
        lam, Ut = lam.numpy(), V.numpy().mT
    else:
        lam, V = np.linalg.eigh(K)
        Ut = V.mT
    if not desc:
        return lam, np.ascontiguousarray(Ut)
    return np.ascontiguousarray(lam[..., ::-1]), np.ascontiguousarray(Ut[..., ::-1, :])


def _half_tril(r: int) -> np.ndarray:
    r"""(r, r) mask -1/2 on the diagonal, -1 below it, 0 above: ``G * mask`` is
    :math:`-(\mathrm{diag}\,G + 2\,\mathrm{tril}(G, -1))/2`."""
    return np.tril(np.full((r, r), -1.0), -1) - 0.5 * np.eye(r)


def _refit_predict(lam, Ut, z, keep, my, Yl):
    r"""Prediction :math:`\bar y + c^T Y_l` of the truncated refit, :math:`c = \sum_{kept}
    u_i z_i/\lambda_i` (eigenvectors as rows ``Ut``, :math:`z = U^T X_l\tilde x`), the
    coefficients in the eigenpairs' precision and the product with the target in ``Yl``'s."""
    w = np.where(keep, z / np.where(keep, lam, 1.0), 0.0).astype(Ut.dtype)
    coef = (Ut.mT @ w[:, :, None]).astype(Yl.dtype)
    return my + (coef.mT @ Yl)[:, 0, :]


def _centre_in_place(A):
    """Centre a fresh (B, k, d) gather on its row means in place: ``(A - a_0) - mean(A - a_0)``,
    the arithmetic of :func:`._local._exact_mean` (a neighbourhood of identical rows becomes
    exactly zero) without its temporaries. Returns (A, a_0, mean(A - a_0))."""
    a0 = A[:, 0, :].copy()
    A -= a0[:, None, :]
    dm = A.mean(1)
    A -= dm[:, None, :]
    return A, a0, dm


class FastGramSource:
    r"""``mode="fast"`` engine (kernel form, :math:`k \le d`): the Gram engine's algebra without
    certificate, in mixed precision.

    The 2-fold CV that picks alpha must see the small end of the fold spectra (cutoffs go down
    to 1e-9 s_max; a float32 Gram resolves nothing below ~1e-3 s_max, and real features, e.g.
    512-wide ones, do pick such cutoffs), so the fold Grams, their eigendecompositions and the CV
    tables are float64, with torch's MKL ``eigh`` when torch is loaded. The refit, one
    k x k eigendecomposition per row and the largest single cost, runs in float32 when the chosen
    cutoff is at least ``FAST32_GUARD`` x s_max (kept Gram eigenvalues >= 1e-2 lambda_max, well
    resolved in float32), and in float64 for the other rows. Rows failing the exact engine's
    source test (a fold eigenvalue not clearly above the rcond cutoff, or within its error of an
    alpha's cutoff: numerically rank-deficient neighbourhoods, e.g. near-duplicate atoms, whose
    tiny singular values a Gram matrix cannot resolve) take the SVD path, as in exact mode.

    ``Xn`` (B, k, d) float64 neighbourhoods in fold order (centred in place), ``x`` (B, d) test
    rows; ``torch``: the module for the eigendecompositions, or None (NumPy).
    """

    def __init__(self, Xn, x, n1: int, alphas, torch=None):
        self.alphas = np.asarray(alphas, dtype=np.float64)
        self.n1 = int(n1)
        self.torch = torch
        self._refit64 = {}  # float64 refits by row set, shared by the targets of a pairwise table
        _, k, d = Xn.shape
        n1 = self.n1
        Xl, x0, dm = _centre_in_place(Xn)
        xt = (x - x0) - dm
        self.Xl, self.xt = Xl, xt
        K = Xl @ Xl.mT  # (B, k, k): fold Grams, cross blocks and the refit Gram in one product
        self.K = K
        self.kappa = (Xl @ xt[:, :, None])[:, :, 0]  # X_l x~
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            lam1, Ut1 = _eigh_rows(np.ascontiguousarray(K[:, :n1, :n1]), torch)
            lam2, Ut2 = _eigh_rows(np.ascontiguousarray(K[:, n1:, n1:]), torch)
            lmax = np.maximum(lam1[:, 0], lam2[:, 0]).clip(min=0)
            self.smax = np.sqrt(lmax)
            scaled = self.smax[:, None] * self.alphas[None, :]
            rc2 = (max(k, d) * _EPS) ** 2
            # the exact engine's rank test: a fold whose smallest Gram eigenvalue is not clearly
            # above the rcond cutoff may hold singular values a Gram matrix cannot resolve (e.g.
            # near-duplicate rows) that the small alphas would fit: such rows take the SVD path
            ok = source_ok(lmax, (lam1, lam2), scaled, k, d)
            self.svd_rows = np.flatnonzero(~ok)
            self._svd = None
            folds = []
            # (fold eigenvectors, cross Gram transposed: K is symmetric, so K[f rows, o columns])
            for lam, Ut, Ct in ((lam1, Ut1, K[:, :n1, n1:]), (lam2, Ut2, K[:, n1:, :n1])):
                valid = (lam > rc2) & (lam > FAST_FLOOR * lam[:, :1])  # a prefix (lam descending)
                inv = np.where(valid, 1.0 / np.where(valid, lam, 1.0), 0.0)
                At = Ut @ Ct  # (B, r, n_o) cross-fold design A^T = Lambda^-1 U^T C^T, 0 where invalid
                At *= inv[:, :, None]
                Gh = At @ At.mT
                Gh *= _half_tril(Gh.shape[-1])  # -(diag G + 2 strict lower G) / 2
                s = np.sqrt(lam.clip(min=0))
                L = np.minimum((s[:, None, :] > scaled[:, :, None]).sum(-1), valid.sum(-1)[:, None])
                folds.append((Ut, At, Gh, L))
            self.folds = folds
            self.scaled = scaled
            # float32 refit: eigenpairs of the whole neighbourhood's Gram (rows of the SVD path: none)
            rows = np.flatnonzero(ok)
            if rows.size == K.shape[0]:  # the usual case: no gathered copy of K
                lam, Ut = _eigh_rows(K.astype(np.float32), torch, desc=False)
            else:
                lam = np.zeros(K.shape[:2], dtype=np.float32)
                Ut = np.zeros(K.shape, dtype=np.float32)
                if rows.size:
                    lam[rows], Ut[rows] = _eigh_rows(K[rows].astype(np.float32), torch, desc=False)
            self.lam, self.Ut = lam, Ut
            self.lam_pos = (lam > rc2) & (lam > FAST32_FLOOR * lam[:, -1:])
            self.z = (Ut @ self.kappa.astype(np.float32)[:, :, None])[:, :, 0]

    @staticmethod
    def _table(P, ysq, levels, n_rows):
        r"""CV score (B, n_alphas) from the per-component terms ``P = B * (Gh B + A^T Y_o)``
        (B, r, d_Y): :math:`e(L) = |y|^2 - 2\sum_{l<L} P_l`, the prefix sums taken as one product
        with -2/0 prefix masks, evaluated once per distinct level (levels do not increase with
        alpha: equal levels are runs) and copied along each run."""
        B, r, _ = P.shape
        first = np.ones(levels.shape, dtype=bool)
        first[:, 1:] = levels[:, 1:] != levels[:, :-1]
        run = np.cumsum(first, axis=1) - 1  # (B, n_alphas) index of each alpha's run
        rows, cols = np.nonzero(first)
        lev = np.zeros((B, int(run.max()) + 1), dtype=levels.dtype)
        lev[rows, run[rows, cols]] = levels[rows, cols]
        T = (np.arange(r)[None, None, :] < lev[:, :, None]) * -2.0  # prefix masks
        e = T @ P
        e += ysq[:, None, :]
        np.maximum(e, 0.0, out=e)
        e *= 1.0 / n_rows
        np.sqrt(e, out=e)
        return np.take_along_axis(-e.mean(-1), run, 1)

    def errors(self, Yn, y):
        """Pointwise errors (B,) of targets ``Yn`` (B, k, d_Y), float64 (centred in place), against
        ``y`` (B, d_Y)."""
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            n1 = self.n1
            Yl, y0, dm = _centre_in_place(Yn)
            my = y0 + dm
            Y1, Y2 = Yl[:, :n1], Yl[:, n1:]
            y1sq = np.einsum("bij,bij->bj", Y1, Y1)
            y2sq = np.einsum("bij,bij->bj", Y2, Y2)
            tabs = []
            for (Ut, At, Gh, L), Yf, Yo, yo_sq in ((self.folds[0], Y1, Y2, y2sq), (self.folds[1], Y2, Y1, y1sq)):
                Bm = Ut @ Yf  # U_f^T Y_f (rows past the valid prefix are never read)
                R = Gh @ Bm
                R += At @ Yo
                R *= Bm
                tabs.append(self._table(R, yo_sq, L, Yo.shape[1]))
            cv = (tabs[0] + tabs[1]) / 2
            best = cv.argmax(-1)
            thr = np.take_along_axis(self.scaled, best[:, None], 1)
            keep = (self.lam > (thr**2).astype(np.float32)) & self.lam_pos
            out = np.sqrt(((y - _refit_predict(self.lam, self.Ut, self.z, keep, my, Yl)) ** 2).sum(-1))
            redo = np.flatnonzero(~(thr[:, 0] >= FAST32_GUARD * self.smax) | ~np.isfinite(out))
            redo = np.setdiff1d(redo, self.svd_rows)
            self.n_redo = int(redo.size + self.svd_rows.size)
            if redo.size:
                lam, Ut, z = self._refit(redo)
                keep = (lam > thr[redo] ** 2) & (lam > 0) & (lam > FAST_FLOOR * lam[:, -1:])
                pred = _refit_predict(lam, Ut, z, keep, my[redo], Yl[redo])
                out[redo] = np.sqrt(((y[redo] - pred) ** 2).sum(-1))
            if self.svd_rows.size:  # centred inputs (the SVD path's own centring changes nothing)
                sel = self.svd_rows
                if self._svd is None:  # shared by the targets of a pairwise table
                    self._svd = LocalSource(NumpyBackend(), self.Xl[sel], self.xt[sel], n1, self.alphas, "exact")
                out[sel] = self._svd.errors(Yl[sel], (y[sel] - y0[sel]) - dm[sel])
            return out

    def _refit(self, rows):
        """Float64 refit eigenpairs (ascending) and projections of ``rows``, computed once per row set."""
        key = rows.tobytes()
        if key not in self._refit64:
            lam, Ut = _eigh_rows(np.ascontiguousarray(self.K[rows]), self.torch, desc=False)
            self._refit64[key] = (lam, Ut, (Ut @ self.kappa[rows][:, :, None])[:, :, 0])
        return self._refit64[key]
