r"""Global ridge reconstruction (GFRE, GFRD) from streamed R factors.

scikit-matter's ``Ridge2FoldCV(alpha_type="relative", regularization_method="cutoff")`` needs, for
each of its two CV folds and for all training rows, the SVD of the source block and the products
:math:`U^T Y`, plus the squared residuals of cross-fold predictions. All of these follow exactly
from the R factor of the augmented block :math:`[X\,|\,Y] = QR`:

.. math::
    X = Q R_{xx},\quad Q^T Y = R_{xy},\quad
    \|Y_{:,c} - X w_c\|^2 = \|R_{:,d_X+c} - R_{:,:d_X} w_c\|^2 ,

so rows can be streamed chunk by chunk (TSQR: QR of the running R stacked on the next chunk),
memory stays O((d_X+d_Y)^2) and no accuracy is lost (unlike forming :math:`X^T X`).

GFRE first tries the ~3x cheaper Gram matrices :math:`Z^T Z` of :math:`Z = [X | Y]` per fold
(:class:`GramRidge`), which are accurate only when X is well conditioned and the chosen cutoff is
resolvable; the fit is certified (see :class:`GramRidge`) and otherwise redone by TSQR.
"""

from __future__ import annotations

import numpy as np

from mlipspace.metrics._checks import (
    ALPHAS,
    check_finite,
    check_rows,
    check_variance,
    kfold_halves,
    resolve_split,
)
from mlipspace.metrics._sources import RowSource, paired_blocks

_EPS = np.spacing(1.0)


class _Stats:
    """Chan-style running column mean and sum of squared deviations."""

    def __init__(self, d: int):
        self.n = 0
        self.mean = np.zeros(d)
        self.m2 = np.zeros(d)

    def update(self, block: np.ndarray) -> None:
        nb = block.shape[0]
        if nb == 0:
            return
        mb = block.mean(axis=0)
        c = block - mb
        m2b = np.einsum("ij,ij->j", c, c)
        n = self.n
        delta = mb - self.mean
        tot = n + nb
        self.mean = self.mean + delta * (nb / tot)
        self.m2 = self.m2 + m2b + delta**2 * (n * nb / tot)
        self.n = tot

    def scale(self, name: str) -> float:
        total_var = float(self.m2.sum() / self.n)
        check_variance(total_var, name, total_var + float(np.dot(self.mean, self.mean)))
        return float(np.sqrt(total_var))


def _qr_r(A: np.ndarray) -> np.ndarray:
    """R factor of A (min(m, n), n). LAPACK ``geqrt`` (compact-WY blocked Householder) is about 4x
    faster than ``geqrf`` on tall blocks; same numerical properties."""
    from scipy.linalg import lapack

    m, n = A.shape
    if m == 0:
        return np.zeros((0, n))
    nb = max(1, min(64, m, n))
    a, _, info = lapack.dgeqrt(nb, np.asfortranarray(A, dtype=np.float64), overwrite_a=1)
    if info != 0:  # pragma: no cover - LAPACK argument error
        return np.linalg.qr(A, mode="r")
    return np.triu(a[: min(m, n)])


class GlobalRidge:
    """The Ridge2FoldCV fit (cutoff, relative alphas) from the R factors of the two CV folds.

    Attributes after construction: ``W`` (d_X, d_Y) weights, ``alpha_`` (relative cutoff chosen),
    ``cv_values_`` (mean negative RMSE per alpha), ``R`` (R factor of all training rows).
    """

    def __init__(self, R1: np.ndarray, R2: np.ndarray, n1: int, n2: int, d_x: int, alphas=ALPHAS):
        alphas = np.asarray(alphas, dtype=np.float64)
        n_train = n1 + n2
        rcond = max(n_train, d_x) * _EPS
        U1, s1, V1t = np.linalg.svd(R1[:, :d_x], full_matrices=False)
        U2, s2, V2t = np.linalg.svd(R2[:, :d_x], full_matrices=False)
        k1, k2 = int((s1 > rcond).sum()), int((s2 > rcond).sum())
        B1 = U1[:, :k1].T @ R1[:, d_x:]
        B2 = U2[:, :k2].T @ R2[:, d_x:]
        A12 = (R2[:, :d_x] @ V1t[:k1].T) / s1[:k1]
        A21 = (R1[:, :d_x] @ V2t[:k2].T) / s2[:k2]
        scaled = alphas * max(s1.max(), s2.max())
        L1 = np.minimum(k1, (s1[None, :] > scaled[:, None]).sum(axis=1))
        L2 = np.minimum(k2, (s2[None, :] > scaled[:, None]).sum(axis=1))
        loss12 = {L: self._loss(R2[:, d_x:], A12, B1, L, n2) for L in np.unique(L1)}
        loss21 = {L: self._loss(R1[:, d_x:], A21, B2, L, n1) for L in np.unique(L2)}
        cv = np.array([(loss12[a] + loss21[b]) / 2 for a, b in zip(L1, L2)])
        best = int(np.argmax(cv))
        self.cv_values_ = cv
        self.alpha_ = float(alphas[best])
        R = _qr_r(np.vstack([R1, R2]))
        U, s, Vt = np.linalg.svd(R[:, :d_x], full_matrices=False)
        n_alpha = int(min(len(s), (s > scaled[best]).sum()))
        self.n_components_ = n_alpha
        self.W = (Vt[:n_alpha].T / s[:n_alpha]) @ (U[:, :n_alpha].T @ R[:, d_x:])
        self.R = R
        self.d_x = d_x

    @staticmethod
    def _loss(Ry: np.ndarray, A: np.ndarray, B: np.ndarray, L: int, n_rows: int) -> float:
        """Negative RMSE (sklearn's, averaged over target columns) of the level-``L`` cross-fold fit."""
        E = Ry - A[:, :L] @ B[:L] if L > 0 else Ry
        return -float(np.mean(np.sqrt((E**2).sum(axis=0) / n_rows)))

    def orthogonal_map(self) -> np.ndarray:
        """Procrustes map Q (m, m), m = max(d_X, d_Y), from zero-padded X onto zero-padded ridge
        predictions of the training rows: Q = U V^T with U S V^T = pad(X)^T pad(X W)."""
        d_x, d_y = self.W.shape
        m = max(d_x, d_y)
        Rx = self.R[:, :d_x]
        M = np.zeros((m, m))
        M[:d_x, :d_y] = Rx.T @ (Rx @ self.W)
        U, _, Vt = np.linalg.svd(M)
        return U @ Vt


#: Largest accepted bound on |change of a test error| from the Gram path's rounding (scaled units;
#: the parity tolerance is 1e-8). The bound uses an eigen-error constant 2(sqrt(n) + d) eps, some
#: 500x the error observed against LAPACK's SVD at n = 10^5, d = 512.
GRAM_ATOL = 5e-9


def _eig_desc(G):
    lam, V = np.linalg.eigh(G)
    return lam[::-1], V[:, ::-1]


class GramRidge:
    r"""The same Ridge2FoldCV fit from the Gram matrices :math:`Z_f^T Z_f` of :math:`Z = [X | Y]`
    of the two folds, about 3x cheaper to accumulate than the R factors, with a certificate.

    Fold f: :math:`X_f^T X_f = V \Lambda V^T`, :math:`b_l = v_l^T X_f^T Y_f / s_l` (:math:`= U^T Y`),
    cross-fold :math:`P_l = v_l^T X_o^T Y_o / s_l`, :math:`G = S^{-1} V^T X_o^T X_o V S^{-1}`, and
    the squared residuals of all truncation levels are prefix sums (see :mod:`._gram`). With an
    eigenvalue error bound :math:`\epsilon_K = c\,\epsilon\,\lambda_{max}` the fit is accepted
    (``ok``) only when every fold eigenvalue is certainly above rcond, no eigenvalue lies within
    :math:`\epsilon_K` of an alpha's cutoff, the chosen alpha wins the CV beyond the losses' error
    bars, and ``w_err`` (a first-order bound on the Frobenius norm of the error of W) times the
    largest test-row norm stays below ``GRAM_ATOL``; otherwise the caller refits by TSQR.
    """

    def __init__(self, G1: np.ndarray, G2: np.ndarray, n1: int, n2: int, d_x: int, alphas=ALPHAS):
        alphas = np.asarray(alphas, dtype=np.float64)
        n_train = n1 + n2
        d = G1.shape[0]
        rcond = max(n_train, d_x) * _EPS
        self.c = 2.0 * (np.sqrt(n_train) + d) * _EPS
        self.ok = True
        folds = []
        for Gf in (G1, G2):
            lam, V = _eig_desc(Gf[:d_x, :d_x])
            folds.append((lam, V))
        smax = np.sqrt(max(folds[0][0][0], folds[1][0][0], 0.0))
        scaled = alphas * smax
        levels = []
        for lam, _ in folds:
            eps_k = self.c * max(lam[0], 0.0)
            if not (lam[-1] - eps_k > rcond**2):  # a component near or below rcond: not resolvable
                self.ok = False
                return
            if (np.abs(lam[None, :] - scaled[:, None] ** 2) <= eps_k + 4 * _EPS * scaled[:, None] ** 2).any():
                self.ok = False
                return
            s = np.sqrt(lam)
            levels.append((s[None, :] > scaled[:, None]).sum(axis=1))
        tables = []
        for (lam, V), Gf, Go, n_o in ((folds[0], G1, G2, n2), (folds[1], G2, G1, n1)):
            s = np.sqrt(lam)
            VS = V / s
            Bm = VS.T @ Gf[:d_x, d_x:]  # U^T Y_f
            P = VS.T @ Go[:d_x, d_x:]  # A^T Y_o
            G = VS.T @ Go[:d_x, :d_x] @ VS  # A^T A
            Gt = np.tril(G, -1) * 2.0 + np.diag(np.diag(G))
            terms = Bm * (Gt @ Bm - 2.0 * P)
            ysq = np.diag(Go)[d_x:].copy()
            e = np.vstack([np.zeros((1, terms.shape[1])), np.cumsum(terms, axis=0)]) + ysq
            mag = (2.0 * np.sqrt(ysq) + np.sqrt(e.clip(min=0))) ** 2
            gap = np.abs(np.diff(lam, append=0.0)).clip(min=1e-300)
            fac = np.concatenate([[0.0], lam[0] / lam + lam[0] / gap])
            de = (self.c * fac)[:, None] * mag + 8 * d_x * _EPS * np.trace(G) * np.diag(Gf)[None, d_x:]
            tables.append([-np.mean(np.sqrt(x.clip(min=0) / n_o), axis=1) for x in (e, e + de, e - de)])
        (v12, lo12, hi12), (v21, lo21, hi21) = tables
        L1, L2 = levels
        cv = (v12[L1] + v21[L2]) / 2
        best = int(np.argmax(cv))
        lo = (lo12[L1] + lo21[L2]) / 2
        hi = (hi12[L1] + hi21[L2]) / 2
        other = (L1 != L1[best]) | (L2 != L2[best])
        if (other & (hi >= lo[best])).any():
            self.ok = False
            return
        self.cv_values_ = cv
        self.alpha_ = float(alphas[best])
        # refit on all training rows
        Gall = G1 + G2
        lam, V = _eig_desc(Gall[:d_x, :d_x])
        thr2 = scaled[best] ** 2
        keep = lam > thr2
        self.n_components_ = int(keep.sum())
        C = Gall[:d_x, d_x:]
        VK = V[:, keep]
        self.W = (VK / lam[keep]) @ (VK.T @ C)
        self.d_x = d_x
        # first-order bound on ||dW||_F: weights eps_K / lambda_i, mixing eps_K / |lambda_i - lambda_j|,
        # and the rounding of X^T Y (c eps sqrt(lambda_max tr Y^T Y)) through 1 / lambda_min kept
        eps_k = self.c * lam[0]
        s = np.sqrt(lam.clip(min=0))
        bn = np.linalg.norm(V.T @ C, axis=1) / np.where(s > 0, s, np.inf)  # ||u_i^T Y||
        if not keep.any() or thr2 <= 0:
            self.ok = False
            return
        Wm = np.where(keep[:, None] & ~keep[None, :], 1.0 / np.abs(lam[:, None] - lam[None, :]).clip(min=1e-300), 0)
        sk = s[keep]
        mix = (np.sqrt((Wm**2)[keep] @ np.ones_like(lam)) * sk * bn[keep]
               + np.sqrt((Wm**2)[keep] @ (s * bn) ** 2)) / lam[keep]
        wt = bn[keep] / (lam[keep] * sk)
        eps_c = self.c * np.sqrt(lam[0] * np.trace(Gall[d_x:, d_x:]))
        self.w_err = float(eps_k * (mix.sum() + wt.sum()) + eps_c / lam[keep].min())


def global_measure(X, Y, train_idx=None, test_idx=None, *, kind: str = "gfre", chunk_size: int = 32768,
                   names=("X", "Y"), scaled: bool = False, engine: str = "gram") -> tuple[np.ndarray, int]:
    """Pointwise GFRE (``kind="gfre"``) or GFRD (``kind="gfrd"``) of the test rows, and n_train.

    ``X`` and ``Y`` are arrays, array-likes or re-iterable chunk sources (see :mod:`._sources`);
    they are read block by block, so nothing larger than a block and a few (d_X+d_Y)^2 matrices is
    ever held in memory. ``scaled=True`` declares X and Y already centred and scaled on the training
    rows (as :func:`mlipspace.metrics.pairwise` caches them) and skips the statistics pass.
    ``engine``: "gram" (fold Gram matrices, certified, else the QR path) or "svd" (TSQR + SVD only).
    """
    import scipy.linalg.lapack  # noqa: F401  (load its BLAS before limiting the thread pools)

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        from contextlib import nullcontext

        def threadpool_limits(limits=None):
            return nullcontext()

    with threadpool_limits(limits=1):  # small/tall blocks: threaded BLAS only thrashes on busy CPUs
        return _global_measure(X, Y, train_idx, test_idx, kind, chunk_size, names, scaled, engine)


def _global_measure(X, Y, train_idx, test_idx, kind, chunk_size, names, scaled, engine):
    sx, sy = RowSource(X, names[0]), RowSource(Y, names[1])
    check_rows(sx.n_rows, sy.n_rows, names)
    n, d_x, d_y = sx.n_rows, sx.n_cols, sy.n_cols
    train, test = resolve_split(n, train_idx, test_idx)
    f1, f2 = kfold_halves(train.size)
    role = np.zeros(n, dtype=np.int8)
    role[train[f1]] = 1
    role[train[f2]] = 2
    role[test] = 3
    test_pos = np.full(n, -1, dtype=np.int64)
    test_pos[test] = np.arange(test.size)

    if scaled:
        mx, sclx, my, scly = np.zeros(d_x), 1.0, np.zeros(d_y), 1.0
    else:
        # pass 1: finiteness and training statistics (scaler fitted on the training rows)
        stx, sty = _Stats(d_x), _Stats(d_y)
        for a, xb, yb in paired_blocks(sx, sy, chunk_size):
            check_finite(xb, names[0], a)
            check_finite(yb, names[1], a)
            tr = role[a : a + xb.shape[0]]
            sel = (tr == 1) | (tr == 2)
            stx.update(xb[sel])
            sty.update(yb[sel])
        mx, sclx = stx.mean, stx.scale(names[0])
        my, scly = sty.mean, sty.scale(names[1])

    ridge = None
    # a fold with fewer rows than X has columns (wide features, e.g. cumulants of few structures)
    # has a singular Gram matrix that the certificate always rejects: go straight to TSQR
    if engine == "gram" and kind == "gfre" and min(f1.size, f2.size) >= d_x:
        ridge = _gram_fit(sx, sy, role, f1.size, f2.size, d_x, d_y, mx, sclx, my, scly, chunk_size)
    if ridge is None:
        ridge = _qr_fit(sx, sy, role, f1.size, f2.size, d_x, d_y, mx, sclx, my, scly, chunk_size)
    out = _predict(sx, sy, role, test, test_pos, ridge, kind, d_x, d_y, mx, sclx, my, scly, chunk_size)
    if isinstance(ridge, GramRidge) and not ridge.w_err * out[1] <= GRAM_ATOL:
        ridge = _qr_fit(sx, sy, role, f1.size, f2.size, d_x, d_y, mx, sclx, my, scly, chunk_size)
        out = _predict(sx, sy, role, test, test_pos, ridge, kind, d_x, d_y, mx, sclx, my, scly, chunk_size)
    return out[0], int(train.size)


def _fold_blocks(sx, sy, role, d_x, d_y, mx, sclx, my, scly, chunk_size):
    """Yield (fold 0/1, scaled [X | Y] training rows of that fold) block by block."""
    for a, xb, yb in paired_blocks(sx, sy, chunk_size):
        tr = role[a : a + xb.shape[0]]
        for f in (0, 1):
            sel = tr == f + 1
            if sel.any():
                blk = np.empty((int(sel.sum()), d_x + d_y))
                np.subtract(xb[sel], mx, out=blk[:, :d_x])
                blk[:, :d_x] /= sclx
                np.subtract(yb[sel], my, out=blk[:, d_x:])
                blk[:, d_x:] /= scly
                yield f, blk


def _gram_fit(sx, sy, role, n1, n2, d_x, d_y, mx, sclx, my, scly, chunk_size):
    """GramRidge from the fold Gram matrices of [X | Y] (one BLAS syrk per block), or None."""
    G = [np.zeros((d_x + d_y, d_x + d_y)), np.zeros((d_x + d_y, d_x + d_y))]
    for f, blk in _fold_blocks(sx, sy, role, d_x, d_y, mx, sclx, my, scly, chunk_size):
        G[f] += blk.T @ blk
    ridge = GramRidge(G[0], G[1], n1, n2, d_x)
    return ridge if ridge.ok else None


def _qr_fit(sx, sy, role, n1, n2, d_x, d_y, mx, sclx, my, scly, chunk_size):
    """GlobalRidge from the R factors of [X | Y] of each CV fold (TSQR)."""
    R = [np.zeros((0, d_x + d_y)), np.zeros((0, d_x + d_y))]
    for f, blk in _fold_blocks(sx, sy, role, d_x, d_y, mx, sclx, my, scly, chunk_size):
        R[f] = _qr_r(np.vstack([R[f], blk]) if R[f].shape[0] else blk)
    return GlobalRidge(R[0], R[1], n1, n2, d_x)


def _predict(sx, sy, role, test, test_pos, ridge, kind, d_x, d_y, mx, sclx, my, scly, chunk_size):
    """(pointwise errors of the test rows, largest scaled test-row norm of X)."""
    Q = ridge.orthogonal_map() if kind == "gfrd" else None
    xmax = 0.0
    out = np.empty(test.size)
    for a, xb, yb in paired_blocks(sx, sy, chunk_size):
        tr = role[a : a + xb.shape[0]]
        sel = tr == 3
        if not sel.any():
            continue
        xs = (xb[sel] - mx) / sclx
        xmax = max(xmax, float(np.sqrt(np.einsum("ij,ij->i", xs, xs).max())))
        pred = xs @ ridge.W
        if kind == "gfre":
            err = np.linalg.norm((yb[sel] - my) / scly - pred, axis=1)
        else:
            m = Q.shape[0]
            xp = np.zeros((xs.shape[0], m))
            xp[:, :d_x] = xs
            pp = np.zeros((xs.shape[0], m))
            pp[:, :d_y] = pred
            err = np.linalg.norm(pp - xp @ Q, axis=1)
        out[test_pos[a + np.flatnonzero(sel)]] = err
    return out, xmax
