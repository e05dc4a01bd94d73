r"""Representation-similarity measures between two feature spaces on the same atoms.

Feature reconstruction errors (:mod:`mlipspace.metrics.reconstruction`) ask whether one space can be
*mapped* onto another. The measures here ask the question with the instruments of neighbouring fields,
all on the same aligned rows (row ``i`` of ``X`` and of ``Y`` describe the same atom):

``linear_cka``
    Centred kernel alignment with linear kernels (Kornblith et al. 2019),
    :math:`\mathrm{CKA}=\|X_c^\top Y_c\|_F^2 / (\|X_c^\top X_c\|_F\,\|Y_c^\top Y_c\|_F)`, or its debiased
    form built on the unbiased HSIC estimator of Song et al. (2012). 1 = same geometry up to rotation and
    scale.
``rbf_cka``
    CKA with Gaussian kernels, bandwidth by the median heuristic.
``mutual_knn``
    Mean fraction of shared k nearest neighbours (Huh et al. 2024, "Platonic representation"; used for
    MLIPs by Li & Walsh, arXiv 2512.05349). Chance level is :math:`k/(n-1)`.
``cknna``
    CKA restricted to mutual k-nearest-neighbour pairs (Huh et al. 2024), unbiased HSIC of the masked
    linear kernels; with k = n − 1 it is the debiased linear CKA.
``procrustes_distance``
    Angular Procrustes shape distance (Williams et al. 2021),
    :math:`\theta=\arccos\|\hat X^\top \hat Y\|_*` with :math:`\hat X = X_c/\|X_c\|_F`; 0 = identical up to
    rotation, translation and scale, :math:`\pi/2` = orthogonal.

Between two samples of ONE space (rows not aligned): ``mmd`` (unbiased Gaussian-kernel MMD², Gretton et
al. 2012) and ``mmd_permutation_test``, registered in :data:`TWO_SAMPLE_MEASURES`.

Every measure takes ``(X, Y, ...)`` and returns a float; :data:`SIMILARITY_MEASURES` lists them with
their orientation and range, :func:`similarity_with_uncertainty` adds subsample spread and a
permutation null, and :func:`rank_agreement` compares the ranking of model pairs by several metrics.

Memory: the linear measures (CKA, Procrustes) never build an N×N matrix — they accumulate the d×d
cross-products :math:`X_c^\top Y_c`, :math:`X_c^\top X_c`, :math:`Y_c^\top Y_c` over row chunks.
The debiased linear CKA needs, besides those, only the squared row norms
:math:`a_i=\|x_i-\bar x\|^2` and :math:`b_i=\|y_i-\bar y\|^2` (see :func:`linear_cka`). Mutual kNN and
RBF CKA walk over blocks of rows × N columns (64 MiB per block array by default).

Devices: ``device="cpu"`` runs NumPy (float64 per chunk); ``"cuda"``/``"cuda:N"`` run the same
algorithms in float64 with torch (imported only then); ``"auto"`` picks CUDA when torch sees a GPU;
``"torch-cpu"`` runs the torch code on the CPU (useful to check the two paths agree).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from mlipspace.errors import InputError
from mlipspace.metrics._backend import get_backend
from mlipspace.metrics._checks import as_matrix, check_k, check_pair
from mlipspace.metrics._config import resolve
from mlipspace.metrics._knn import knn_self
from mlipspace.metrics._registry import Measure
from mlipspace.metrics.reconstruction import RECONSTRUCTION_MEASURES

__all__ = [
    "SIMILARITY_MEASURES",
    "TWO_SAMPLE_MEASURES",
    "Measure",
    "cknna",
    "linear_cka",
    "mmd",
    "mmd_permutation_test",
    "mutual_knn",
    "pointwise_mutual_knn",
    "procrustes_distance",
    "rank_agreement",
    "rbf_cka",
    "similarity_with_uncertainty",
]


# ----------------------------------------------------------------------------------------------------
# chunking

#: Elements (float64) of one row chunk x d in the linear measures (32 MiB).
CHUNK_ELEMENTS = 1 << 22


def chunk_rows(n_cols: int, chunk_size: int | None) -> int:
    """Rows per chunk: ``chunk_size`` if given, else as many as fit in :data:`CHUNK_ELEMENTS`."""
    if chunk_size is not None:
        if int(chunk_size) < 1:
            raise InputError(f"chunk_size must be a positive number of rows, got {chunk_size}")
        return int(chunk_size)
    return max(64, CHUNK_ELEMENTS // max(1, n_cols))


def block_rows(n: int, chunk_size: int | None, elements: int) -> int:
    """Rows per block for block x N work arrays (kernel rows)."""
    if chunk_size is not None:
        return chunk_rows(0, chunk_size)
    return max(1, min(n, elements // max(1, n)))


def sq_dists_block(A_blk, B, sqA_blk, sqB):
    """Squared Euclidean distances between a block of rows and all rows, clipped at 0."""
    d = A_blk @ B.T
    d *= -2.0
    d += sqA_blk[:, None]
    d += sqB[None, :]
    d[d < 0] = 0.0
    return d


# ----------------------------------------------------------------------------------------------------
# linear measures: chunked second moments


class _LinearState:
    """Column means, self cross-products and squared row norms of centred X and Y.

    ``cross(perm)`` returns :math:`X_c^\\top Y_c[\\pi]` and :math:`a\\cdot b[\\pi]` for a row permutation
    of Y (``None`` = identity), reusing everything that a permutation does not change.
    Two passes over the rows (means, then centred products) keep the float64 sums free of the
    cancellation that one-pass ``XᵀY − n x̄ȳᵀ`` suffers when the features have large means.
    """

    def __init__(self, X, Y, *, device: str, chunk_size: int | None):
        self.bk = get_backend(device)
        self.n = X.shape[0]
        self.step = chunk_rows(max(X.shape[1], Y.shape[1]), chunk_size)
        self.X = self.bk.put(X)
        self.Y = self.bk.put(Y)
        self.mx = self._mean(self.X)
        self.my = self._mean(self.Y)
        self.xx, self.a = self._self_terms(self.X, self.mx)
        self.yy, self.b = self._self_terms(self.Y, self.my)
        self.sum_a = float(self.a.sum())
        self.sum_b = float(self.b.sum())

    def _chunks(self):
        for s in range(0, self.n, self.step):
            yield s, min(self.n, s + self.step)

    def _mean(self, A):
        total = self.bk.zeros((A.shape[1],))
        for s, e in self._chunks():
            total = total + self.bk.rows(A, slice(s, e)).sum(0)
        return total / self.n

    def _self_terms(self, A, mean):
        d = A.shape[1]
        gram = self.bk.zeros((d, d))
        norms = np.empty(self.n)
        for s, e in self._chunks():
            c = self.bk.rows(A, slice(s, e)) - mean
            gram += c.T @ c
            norms[s:e] = self.bk.to_numpy((c * c).sum(1))
        return self.bk.to_numpy(gram), norms

    def cross(self, perm: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        C = self.bk.zeros((self.X.shape[1], self.Y.shape[1]))
        pidx = None if perm is None else self.bk.index(perm)
        for s, e in self._chunks():
            cx = self.bk.rows(self.X, slice(s, e)) - self.mx
            rows = slice(s, e) if pidx is None else pidx[s:e]
            cy = self.bk.rows(self.Y, rows) - self.my
            C += cx.T @ cy
        b = self.b if perm is None else self.b[perm]
        return self.bk.to_numpy(C), float(self.a @ b)


def _unbiased_hsic(tr_kl: float, sum_k: float, sum_l: float, rk_rl: float, n: int) -> float:
    r"""Song et al. (2012) unbiased HSIC from the four sums of the diagonal-free Gram matrices.

    :math:`\frac{1}{n(n-3)}\left[\operatorname{tr}(\tilde K\tilde L)
    + \frac{\mathbf 1^\top\tilde K\mathbf 1\,\mathbf 1^\top\tilde L\mathbf 1}{(n-1)(n-2)}
    - \frac{2}{n-2}\mathbf 1^\top\tilde K\tilde L\mathbf 1\right]`, with
    ``tr_kl`` = tr(K̃L̃), ``sum_k`` = 1ᵀK̃1, ``sum_l`` = 1ᵀL̃1, ``rk_rl`` = (K̃1)·(L̃1).
    """
    return (tr_kl + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 * rk_rl / (n - 2)) / (n * (n - 3))


def _cka_from_terms(
    st: _LinearState, C: np.ndarray, ab: float, *, debiased: bool
) -> float:
    """Linear CKA from the centred cross-product ``C`` and ``ab`` = a·b (see :func:`linear_cka`)."""
    fxx = float(np.sum(st.xx * st.xx))
    fyy = float(np.sum(st.yy * st.yy))
    if st.sum_a <= 0:
        raise InputError("X has zero variance (all rows equal after centring): CKA is undefined")
    if st.sum_b <= 0:
        raise InputError("Y has zero variance (all rows equal after centring): CKA is undefined")
    fxy = float(np.sum(C * C))
    if not debiased:
        return fxy / math.sqrt(fxx * fyy)
    n = st.n
    aa = float(st.a @ st.a)
    bb = float(st.b @ st.b)
    # centred features: K̃ = K - diag(a), K1 = 0, so 1ᵀK̃1 = -Σa and K̃1 = -a (same for L with b)
    hxy = _unbiased_hsic(fxy - ab, -st.sum_a, -st.sum_b, ab, n)
    hxx = _unbiased_hsic(fxx - aa, -st.sum_a, -st.sum_a, aa, n)
    hyy = _unbiased_hsic(fyy - bb, -st.sum_b, -st.sum_b, bb, n)
    if hxx <= 0 or hyy <= 0:
        raise InputError(
            f"debiased CKA is undefined here: the unbiased HSIC of {'X' if hxx <= 0 else 'Y'} with "
            f"itself is not positive ({min(hxx, hyy):.3g}); use more rows or debiased=False"
        )
    return hxy / math.sqrt(hxx * hyy)


def linear_cka(X, Y, *, debiased: bool = False, device: str = "auto", chunk_size: int | None = None) -> float:
    r"""Linear centred kernel alignment between two aligned feature matrices.

    Standard (``debiased=False``, Kornblith et al. 2019) with centred columns :math:`X_c, Y_c`:

    .. math:: \mathrm{CKA}(X,Y)=\frac{\|X_c^\top Y_c\|_F^2}{\|X_c^\top X_c\|_F\,\|Y_c^\top Y_c\|_F},

    since :math:`\operatorname{tr}(K_cL_c)=\|X_c^\top Y_c\|_F^2` for :math:`K=XX^\top, L=YY^\top`.

    Debiased (``debiased=True``; Song et al. 2012, Nguyen et al. 2021): HSIC is replaced by its
    unbiased estimator (:func:`_unbiased_hsic`). That estimator is unchanged by centring the features
    (it annihilates additive terms :math:`f(x_i)+f(x_j)` of the kernel), so with centred features and
    :math:`a_i=\|x_i-\bar x\|^2`, :math:`b_i=\|y_i-\bar y\|^2`, :math:`\tilde K = K-\operatorname{diag}(a)`:

    * :math:`\operatorname{tr}(\tilde K\tilde L)=\|X_c^\top Y_c\|_F^2-a\cdot b`
    * :math:`\mathbf 1^\top\tilde K\mathbf 1=-\sum_i a_i` (because :math:`K\mathbf 1=X_cX_c^\top\mathbf 1=0`)
    * :math:`\mathbf 1^\top\tilde K\tilde L\mathbf 1=(\tilde K\mathbf 1)\cdot(\tilde L\mathbf 1)=a\cdot b`

    so the whole estimator needs only d×d cross-products and two length-n vectors. The debiased value
    is near 0 for independent features at any width, where the standard one drifts up with d/n.

    Invariant to orthogonal transforms, isotropic scaling and translation of either side; *not*
    invariant to general invertible linear maps. Range [0, 1] (debiased: [-1, 1]); higher = more
    similar. Needs n ≥ 2 rows (debiased: n ≥ 4).
    """
    X, Y = check_pair(X, Y, keep_float=True, min_rows=4 if debiased else 2)
    st = _LinearState(X, Y, device=device, chunk_size=chunk_size)
    C, ab = st.cross()
    return _cka_from_terms(st, C, ab, debiased=debiased)


def _procrustes_from_terms(st: _LinearState, C: np.ndarray) -> float:
    if st.sum_a <= 0 or st.sum_b <= 0:
        which = "X" if st.sum_a <= 0 else "Y"
        raise InputError(f"{which} has zero variance (all rows equal after centring): Procrustes is undefined")
    nuclear = float(np.linalg.svd(C, compute_uv=False).sum())
    rho = nuclear / math.sqrt(st.sum_a * st.sum_b)
    return float(math.acos(min(1.0, max(-1.0, rho))))


def procrustes_distance(X, Y, *, device: str = "auto", chunk_size: int | None = None) -> float:
    r"""Angular Procrustes shape distance (Williams et al. 2021, "Generalized shape metrics").

    Centre both sides, scale each to unit Frobenius norm (:math:`\hat X=X_c/\|X_c\|_F`), then

    .. math:: \theta(X,Y)=\arccos \max_{R^\top R=I}\operatorname{tr}(R^\top\hat X^\top\hat Y)
              =\arccos\|\hat X^\top\hat Y\|_*,

    the nuclear norm (sum of singular values) of the d_X×d_Y cross-product. Different widths are
    handled as if the narrower side were padded with zero columns. A metric on shapes: 0 = identical up
    to rotation, translation and isotropic scale; π/2 = nothing in common. Lower = more similar.
    Precision: ``arccos`` near 1 turns rounding of order 1e-16 into angles of order 1e-8.
    """
    X, Y = check_pair(X, Y, keep_float=True, min_rows=2)
    st = _LinearState(X, Y, device=device, chunk_size=chunk_size)
    C, _ = st.cross()
    return _procrustes_from_terms(st, C)


# ----------------------------------------------------------------------------------------------------
# mutual k nearest neighbours


def _overlap(nx: np.ndarray, ny: np.ndarray) -> np.ndarray:
    """Number of shared entries per row of two (n, k) index arrays whose rows hold distinct values."""
    both = np.concatenate([nx, ny], axis=1)
    both.sort(axis=1)
    return (both[:, 1:] == both[:, :-1]).sum(axis=1)


DISTANCES = ("euclidean", "cosine")


def _neighbours(A, k: int, *, distance: str, backend, chunk_size: int | None, knn_precision: str) -> np.ndarray:
    """(n, k) nearest other rows of ``A`` by the exact search of :mod:`._knn` (ties: lower row index)."""
    A = np.asarray(A, dtype=np.float64)
    if distance == "cosine":
        norms = np.sqrt(np.einsum("ij,ij->i", A, A))
        if (norms == 0).any():
            raise InputError(f"row {int(np.flatnonzero(norms == 0)[0])} is all zeros: its cosine distance is undefined")
        A = A / norms[:, None]
    return knn_self(A, k, backend=backend, block=chunk_size, knn_precision=knn_precision)


class _KnnState:
    """k-NN index arrays of X and Y; a row permutation of Y only relabels Y's neighbour graph."""

    def __init__(self, X, Y, k, *, distance: str, device: str, chunk_size: int | None,
                 knn_precision: str | None = None):
        if distance not in DISTANCES:
            raise InputError(f"unknown distance {distance!r}: use 'euclidean' or 'cosine'")
        self.k = check_k(k, X.shape[0] - 1, pool="the other rows")
        bk = get_backend(device)
        kw = dict(distance=distance, backend=bk, chunk_size=chunk_size,
                  knn_precision=resolve(knn_precision=knn_precision)["knn_precision"])
        self.nx = _neighbours(X, self.k, **kw)
        self.ny = _neighbours(Y, self.k, **kw)

    def pointwise(self, perm: np.ndarray | None = None) -> np.ndarray:
        ny = self.ny
        if perm is not None:
            # row i of Y[perm] is row perm[i] of Y; its neighbours j satisfy perm[j] ∈ N_Y(perm[i])
            inv = np.empty_like(perm)
            inv[perm] = np.arange(perm.size)
            ny = inv[self.ny[perm]]
        return _overlap(self.nx, ny) / self.k


def pointwise_mutual_knn(
    X, Y, *, k: int = 10, distance: str = "euclidean", device: str = "auto", chunk_size: int | None = None,
    knn_precision: str | None = None,
) -> np.ndarray:
    r"""Per row, the fraction of its ``k`` nearest neighbours in X that are also among its k in Y.

    :math:`m_i = |N^X_k(i)\cap N^Y_k(i)|/k`, the row itself excluded from its own neighbours. The
    neighbours come from the exact search of :mod:`mlipspace.metrics._knn` (the one LFRE uses): exact
    distances, ties at the k-th distance to the lower row index. Returns an array of shape (n,).
    """
    X, Y = check_pair(X, Y, keep_float=True, min_rows=2)
    return _KnnState(X, Y, k, distance=distance, device=device, chunk_size=chunk_size,
                     knn_precision=knn_precision).pointwise()


def mutual_knn(
    X, Y, *, k: int = 10, distance: str = "euclidean", device: str = "auto", chunk_size: int | None = None,
    knn_precision: str | None = None,
) -> float:
    r"""Mutual k-nearest-neighbour alignment: mean over rows of :func:`pointwise_mutual_knn`.

    The neighbour sets come from Euclidean distances (``distance="euclidean"``) or, as in
    Huh et al. 2024, from cosine similarity of the rows (``distance="cosine"``: rows scaled to unit
    length first). Blocked: ``chunk_size`` query rows at a time, never the n×n matrix. Cost O(n² d).
    Invariant to orthogonal transforms and isotropic scaling of either side (Euclidean also to
    translation); range [0, 1], chance level k/(n−1); higher = more similar.
    """
    return float(pointwise_mutual_knn(X, Y, k=k, distance=distance, device=device, chunk_size=chunk_size,
                                      knn_precision=knn_precision).mean())


# ----------------------------------------------------------------------------------------------------
# CKNNA: kernel alignment on mutual nearest neighbours


def _pair_dots(A: np.ndarray, nbr: np.ndarray) -> np.ndarray:
    """(n, k) inner products ``A[i] · A[nbr[i, a]]``, a few rows at a time (never n×n)."""
    n, k = nbr.shape
    out = np.empty((n, k))
    step = max(1, CHUNK_ELEMENTS // max(1, k * A.shape[1]))
    for s in range(0, n, step):
        e = min(n, s + step)
        blk = np.asarray(A[s:e], dtype=np.float64)
        out[s:e] = np.einsum("id,ikd->ik", blk, np.asarray(A[nbr[s:e]], dtype=np.float64))
    return out


def _masked_hsic(keys: np.ndarray, a: np.ndarray, b: np.ndarray, n: int) -> float:
    r"""Unbiased HSIC (Song et al. 2012) of two sparse n×n matrices with entries ``a``, ``b`` at ``keys``.

    ``keys`` (sorted, unique) encode the position ``i*n + j`` of each stored entry (never ``i == j``),
    the same positions for both matrices. :math:`\operatorname{tr}(\tilde A\tilde B)=\sum_{ij}A_{ij}B_{ji}`
    needs the entries whose transpose is stored too; :math:`\mathbf 1^\top\tilde A\tilde B\mathbf 1` is
    averaged over both orders (column sums of A · row sums of B and the reverse), which makes the value
    symmetric in A and B even when the mask is not.
    """
    rows, cols = np.divmod(keys, n)
    tkeys = cols * n + rows
    tr = 0.0
    if keys.size:
        pos = np.minimum(np.searchsorted(keys, tkeys), keys.size - 1)
        has_t = keys[pos] == tkeys
        tr = float(np.sum(a[has_t] * b[pos[has_t]]))
    row_a, col_a = np.bincount(rows, a, n), np.bincount(cols, a, n)
    row_b, col_b = np.bincount(rows, b, n), np.bincount(cols, b, n)
    ab1 = 0.5 * (float(col_a @ row_b) + float(col_b @ row_a))
    return _unbiased_hsic(tr, float(a.sum()), float(b.sum()), ab1, n)


class _CknnaState:
    """Neighbour lists and kernel values of X and Y on them; a row permutation of Y only relabels."""

    def __init__(self, X, Y, k, *, distance: str, device: str, chunk_size: int | None,
                 knn_precision: str | None):
        if distance not in DISTANCES:
            raise InputError(f"unknown distance {distance!r}: use 'euclidean' or 'cosine'")
        n = X.shape[0]
        k = check_k(k, n - 1, minimum=2, why=" (CKNNA aligns kernels over neighbour pairs, as in Huh et al.)",
                    pool="the other rows")
        if distance == "cosine":  # kernel and neighbours on unit rows, as Huh et al. compare normalised features
            X, Y = (_unit_rows(A) for A in (X, Y))
        self.knn = _KnnState(X, Y, k, distance="euclidean", device=device, chunk_size=chunk_size,
                             knn_precision=knn_precision)
        self.n = n
        self.kx = _pair_dots(X, self.knn.nx)
        self.ly = _pair_dots(Y, self.knn.ny)
        self.keys_x, self.vx = self._sparse(self.knn.nx, self.kx)
        keys_y, vy = self._sparse(self.knn.ny, self.ly)
        self.hxx = _masked_hsic(self.keys_x, self.vx, self.vx, n)
        self.hyy = _masked_hsic(keys_y, vy, vy, n)
        for name, h in (("X", self.hxx), ("Y", self.hyy)):
            if not h > 0:
                raise InputError(
                    f"CKNNA is undefined here: the k-NN kernel alignment of {name} with itself is not positive "
                    f"({h:.3g}); use more rows or another k"
                )

    def _sparse(self, nbr: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keys = (np.arange(self.n)[:, None] * self.n + nbr).ravel()
        order = np.argsort(keys, kind="stable")
        return keys[order], vals.ravel()[order]

    def score(self, perm: np.ndarray | None = None) -> float:
        ny, ly = self.knn.ny, self.ly
        if perm is not None:  # row i of Y[perm] is row perm[i] of Y (see _KnnState.pointwise)
            inv = np.empty_like(perm)
            inv[perm] = np.arange(perm.size)
            ny, ly = inv[ny[perm]], ly[perm]
        keys_y, vy = self._sparse(ny, ly)
        both, ix, iy = np.intersect1d(self.keys_x, keys_y, assume_unique=True, return_indices=True)
        hxy = _masked_hsic(both, self.vx[ix], vy[iy], self.n)
        return hxy / math.sqrt(self.hxx * self.hyy)


def _unit_rows(A) -> np.ndarray:
    A = np.asarray(A, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", A, A))
    if (norms == 0).any():
        raise InputError(f"row {int(np.flatnonzero(norms == 0)[0])} is all zeros: its cosine distance is undefined")
    return A / norms[:, None]


def cknna(
    X, Y, *, k: int = 10, distance: str = "euclidean", device: str = "auto", chunk_size: int | None = None,
    knn_precision: str | None = None,
) -> float:
    r"""Centred kernel nearest-neighbour alignment (CKNNA; Huh et al. 2024, "Platonic representation").

    CKA restricted to neighbour pairs. With linear kernels :math:`K=XX^\top`, :math:`L=YY^\top`, the
    mask :math:`\alpha_{ij}=1[i\ne j,\ j\in N^X_k(i),\ j\in N^Y_k(i)]` and the unbiased HSIC of Song et
    al. (2012) (its implicit centring; the features themselves are not centred, as in the reference
    code):

    .. math:: \mathrm{CKNNA}=\frac{\mathrm{HSIC}_u(\alpha\circ K,\ \alpha\circ L)}
              {\sqrt{\mathrm{HSIC}_u(\alpha^X\circ K,\alpha^X\circ K)\,\mathrm{HSIC}_u(\alpha^Y\circ L,\alpha^Y\circ L)}},

    :math:`\alpha^X` the k-NN mask of X alone. The one departure from the reference code: the term
    :math:`\mathbf 1^\top\tilde A\tilde B\mathbf 1` of the estimator is averaged over both orders, so
    CKNNA(X, Y) = CKNNA(Y, X) (the reference code's value changes by ~1% when X and Y are swapped, as
    the mask is not symmetric); ours is the mean of the reference's two orders. With ``k = n − 1`` the
    mask keeps every pair and CKNNA is the *debiased* linear CKA (``linear_cka(debiased=True)``).

    Neighbours: the exact search of :mod:`mlipspace.metrics._knn` (as :func:`mutual_knn`), Euclidean by
    default; ``distance="cosine"`` scales rows to unit length first, for neighbours *and* kernel (Huh et
    al. compare unit-normalised features, where top inner product = nearest neighbour). Memory and
    cost O(n k d) after the neighbour search. Invariant to rotation and isotropic scale of either side,
    *not* to a shift (the kernel is not centred before masking). Needs 2 ≤ k ≤ n − 1, n ≥ 4.
    """
    X, Y = check_pair(X, Y, keep_float=True, min_rows=4)
    st = _CknnaState(X, Y, k, distance=distance, device=device, chunk_size=chunk_size, knn_precision=knn_precision)
    return st.score()


# ----------------------------------------------------------------------------------------------------
# RBF (Gaussian kernel) CKA


def _median_sq_dist(A: np.ndarray, rng: np.random.Generator, max_rows: int) -> float:
    """Median of the squared distances over all pairs i<j (of ``max_rows`` random rows if more)."""
    if A.shape[0] > max_rows:
        A = A[np.sort(rng.choice(A.shape[0], max_rows, replace=False))]
    A = np.asarray(A, dtype=np.float64)
    sq = (A * A).sum(1)
    d = sq_dists_block(A, A, sq, sq)
    iu = np.triu_indices(A.shape[0], k=1)
    return float(np.median(d[iu]))


class _RbfState:
    r"""Gaussian-kernel sums of X (fixed) and Y, evaluated block by block.

    For a block B of rows, ``K_B`` (|B|×n) and ``L_B`` are formed, and four sums accumulate:
    :math:`\sum K\circ L`, the row sums :math:`K\mathbf 1`, :math:`L\mathbf 1`, and the diagonals.
    From them both the biased :math:`\operatorname{tr}(KHLH)` and the unbiased HSIC follow exactly.
    """

    def __init__(self, X, Y, *, sigma, debiased: bool, device: str, chunk_size: int | None,
                 median_rows: int, rng: np.random.Generator):
        self.n = X.shape[0]
        self.debiased = debiased
        if sigma is None:
            sx, sy = None, None
        elif np.ndim(sigma) == 0:
            sx = sy = float(sigma)
        else:
            if len(sigma) != 2:
                raise InputError(f"sigma must be a number, a pair (sigma_X, sigma_Y) or None, got {sigma!r}")
            sx, sy = (None if s is None else float(s) for s in sigma)
        if sx is None:
            sx = math.sqrt(_median_sq_dist(X, rng, median_rows))
        if sy is None:
            sy = math.sqrt(_median_sq_dist(Y, rng, median_rows))
        for name, s in (("X", sx), ("Y", sy)):
            if not (s > 0 and math.isfinite(s)):
                raise InputError(
                    f"RBF bandwidth for {name} is {s}: the median distance is 0 (more than half of the "
                    "rows coincide); pass sigma explicitly"
                )
        self.sigma = (sx, sy)
        self.bk = get_backend(device)
        self.step = block_rows(self.n, chunk_size, self.bk.block_elements)
        self.X = self.bk.put(np.asarray(X, dtype=np.float64))
        self.Y = self.bk.put(np.asarray(Y, dtype=np.float64))
        self.sqx = (self.X * self.X).sum(1)
        self.sqy = (self.Y * self.Y).sum(1)
        self.kk, self.rk = self._self_sums(self.X, self.sqx, sx)
        self.ll, self.rl = self._self_sums(self.Y, self.sqy, sy)

    def _kernel(self, A, sq, sigma, s, e):
        d = sq_dists_block(A[s:e], A, sq[s:e], sq)
        r = self.bk.arange(0, e - s)
        d[r, r + s] = 0.0  # exact zero self-distance, so K_ii = 1
        d *= -1.0 / (2.0 * sigma * sigma)
        return self.bk.exp(d)

    def _self_sums(self, A, sq, sigma):
        tot = 0.0
        rows = np.empty(self.n)
        for s in range(0, self.n, self.step):
            e = min(self.n, s + self.step)
            K = self._kernel(A, sq, sigma, s, e)
            tot += float((K * K).sum())
            rows[s:e] = self.bk.to_numpy(self.bk.rowsum(K))
        return tot, rows

    def _hsic(self, tr, rk, rl, *, same: bool):
        n = self.n
        if not self.debiased:
            return tr - 2.0 / n * float(rk @ rl) + float(rk.sum()) * float(rl.sum()) / n**2
        # K̃ = K − I (RBF diagonal is 1): tr(K̃L̃) = tr(KL) − n, K̃1 = K1 − 1
        rkt, rlt = rk - 1.0, rl - 1.0
        return _unbiased_hsic(tr - n, float(rkt.sum()), float(rlt.sum()), float(rkt @ rlt), n)

    def score(self, perm: np.ndarray | None = None) -> float:
        sx, sy = self.sigma
        if perm is None:
            Y, sqy, rl = self.Y, self.sqy, self.rl
        else:
            pidx = self.bk.index(perm)
            Y, sqy, rl = self.Y[pidx], self.sqy[pidx], self.rl[perm]
        kl = 0.0
        for s in range(0, self.n, self.step):
            e = min(self.n, s + self.step)
            K = self._kernel(self.X, self.sqx, sx, s, e)
            L = self._kernel(Y, sqy, sy, s, e)
            kl += float((K * L).sum())
        hxy = self._hsic(kl, self.rk, rl, same=False)
        hxx = self._hsic(self.kk, self.rk, self.rk, same=True)
        hyy = self._hsic(self.ll, self.rl, self.rl, same=True)
        if hxx <= 0 or hyy <= 0:
            raise InputError(
                "RBF CKA is undefined here: the HSIC of one side with itself is not positive; "
                "use more rows, another sigma, or debiased=False"
            )
        return hxy / math.sqrt(hxx * hyy)


def _rbf_prepare(X, Y, *, sigma=None, debiased=False, max_rows=10_000, median_rows=2_000,
                 random_state=0, device="auto", chunk_size=None) -> _RbfState:
    X, Y = check_pair(X, Y, keep_float=True, min_rows=4 if debiased else 2)
    rng = np.random.default_rng(random_state)
    if max_rows is not None and X.shape[0] > max_rows:
        rows = np.sort(rng.choice(X.shape[0], int(max_rows), replace=False))
        X, Y = X[rows], Y[rows]
    return _RbfState(X, Y, sigma=sigma, debiased=debiased, device=device, chunk_size=chunk_size,
                     median_rows=median_rows, rng=rng)


def rbf_cka(
    X,
    Y,
    *,
    sigma: float | tuple[float | None, float | None] | None = None,
    debiased: bool = False,
    max_rows: int | None = 10_000,
    median_rows: int = 2_000,
    random_state: int = 0,
    device: str = "auto",
    chunk_size: int | None = None,
) -> float:
    r"""CKA with Gaussian kernels :math:`K_{ij}=\exp(-\|x_i-x_j\|^2/2\sigma_X^2)` (same for Y).

    ``sigma=None`` uses the median heuristic per side, :math:`\sigma^2=\operatorname{median}_{i<j}
    \|x_i-x_j\|^2`, taken over ``median_rows`` random rows when there are more. A number sets both
    bandwidths; a pair sets them separately.

    Kernels are N×N, so this measure costs O(N² d): it is computed exactly, block by block (never the
    whole matrix in memory), on at most ``max_rows`` rows drawn at random with ``random_state``
    (``max_rows=None``: all rows; affordable on a GPU). Biased CKA uses
    :math:`\operatorname{tr}(KHLH)=\sum K\circ L-\tfrac2n (K\mathbf 1)\cdot(L\mathbf 1)+
    \tfrac1{n^2}\mathbf 1^\top K\mathbf 1\,\mathbf 1^\top L\mathbf 1`; ``debiased=True`` uses the unbiased
    HSIC of Song et al. (2012) from the same sums. Invariant to orthogonal transforms and translation;
    with the median heuristic also to isotropic scaling. Higher = more similar.
    """
    st = _rbf_prepare(X, Y, sigma=sigma, debiased=debiased, max_rows=max_rows, median_rows=median_rows,
                      random_state=random_state, device=device, chunk_size=chunk_size)
    return st.score()


# ----------------------------------------------------------------------------------------------------
# kernel MMD between two samples of one space


def _two_samples(A, B) -> tuple[np.ndarray, np.ndarray]:
    A = as_matrix(A, "A")
    B = as_matrix(B, "B")
    if A.shape[1] != B.shape[1]:
        raise InputError(f"A and B must be rows of one space: A has {A.shape[1]} features, B has {B.shape[1]}")
    for name, S in (("A", A), ("B", B)):
        if S.shape[0] < 2:
            raise InputError(f"MMD needs at least 2 rows in each sample, {name} has {S.shape[0]}")
    return A, B


def _mmd_bandwidth(Z: np.ndarray, sigma, median_rows: int, random_state: int) -> float:
    if sigma is None:
        s = math.sqrt(_median_sq_dist(Z, np.random.default_rng(random_state), median_rows))
    else:
        s = float(sigma)
    if not (s > 0 and math.isfinite(s)):
        raise InputError(f"MMD bandwidth is {s}: more than half of the pooled rows coincide; pass sigma explicitly")
    return s


def _gauss_blocks(Z: np.ndarray, sigma: float):
    """Yield ``(s, e, K)``: Gaussian-kernel rows s..e of the pooled rows against all (exact diagonal 1)."""
    n = Z.shape[0]
    sq = np.einsum("ij,ij->i", Z, Z)
    step = block_rows(n, None, 1 << 23)
    for s in range(0, n, step):
        e = min(n, s + step)
        d = sq_dists_block(Z[s:e], Z, sq[s:e], sq)
        d[np.arange(e - s), np.arange(s, e)] = 0.0
        yield s, e, np.exp(d * (-1.0 / (2.0 * sigma * sigma)))


def _mmd2_from_sums(s_aa: float, s_bb: float, s_ab: float, m: int, n: int) -> float:
    """Unbiased MMD² from full kernel sums (diagonals included: each diagonal entry is 1)."""
    return (s_aa - m) / (m * (m - 1)) + (s_bb - n) / (n * (n - 1)) - 2.0 * s_ab / (m * n)


def mmd(A, B, *, sigma: float | None = None, median_rows: int = 2_000, random_state: int = 0) -> float:
    r"""Unbiased squared maximum mean discrepancy (Gretton et al. 2012) between two samples of one space.

    Rows of ``A`` (m) and ``B`` (n) are, e.g., two datasets' features in one model's space. With the
    Gaussian kernel :math:`k(u,v)=\exp(-\|u-v\|^2/2\sigma^2)`,

    .. math:: \mathrm{MMD}^2_u=\tfrac{1}{m(m-1)}\sum_{i\ne j}k(a_i,a_j)+\tfrac{1}{n(n-1)}\sum_{i\ne j}
              k(b_i,b_j)-\tfrac{2}{mn}\sum_{i,j}k(a_i,b_j).

    ``sigma=None``: median heuristic on the pooled rows, :math:`\sigma^2=\operatorname{median}_{i<j}
    \|z_i-z_j\|^2` over all pairs of the m + n pooled rows (over ``median_rows`` of them drawn with
    ``random_state`` when there are more). 0 in expectation when A and B come from one distribution
    (can then be slightly negative), up to 2; lower = more alike. Invariant to rotation and shift of
    the space, with the median heuristic also to isotropic scale. Blocked: O((m+n)² d), never the
    whole kernel in memory. :func:`mmd_permutation_test` gives its p-value.
    """
    A, B = _two_samples(A, B)
    Z = np.vstack([A, B])
    m = A.shape[0]
    s = _mmd_bandwidth(Z, sigma, median_rows, random_state)
    s_aa = s_bb = s_ab = 0.0
    for lo, hi, K in _gauss_blocks(Z, s):
        a_rows = K[: max(0, min(hi, m) - lo)]
        b_rows = K[max(0, min(hi, m) - lo):]
        s_aa += float(a_rows[:, :m].sum())
        s_ab += float(a_rows[:, m:].sum())
        s_bb += float(b_rows[:, m:].sum())
    return _mmd2_from_sums(s_aa, s_bb, s_ab, m, B.shape[0])


def mmd_permutation_test(
    A, B, *, n_permutations: int = 200, seed: int = 0, sigma: float | None = None, median_rows: int = 2_000,
    random_state: int = 0,
) -> tuple[float, float]:
    r"""``(mmd2, p_value)``: :func:`mmd` and its permutation p-value under "A and B share one distribution".

    The pooled rows are split at random into groups of sizes m and n ``n_permutations`` times (seeded by
    ``seed``); :math:`p=(1+\#\{\mathrm{MMD}^2_\pi\ge\mathrm{MMD}^2\})/(1+n_\text{perm})`. The bandwidth
    (median heuristic on the pooled rows) does not change under the relabelling, so it is fixed once.
    Holds the (m+n)² kernel matrix in memory (8 bytes per entry).
    """
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, (int, np.integer)) or n_permutations < 1:
        raise InputError(f"n_permutations must be a positive integer, got {n_permutations!r}")
    A, B = _two_samples(A, B)
    Z = np.vstack([A, B])
    m, n = A.shape[0], B.shape[0]
    s = _mmd_bandwidth(Z, sigma, median_rows, random_state)
    G = np.empty((m + n, m + n))
    for lo, hi, K in _gauss_blocks(Z, s):
        G[lo:hi] = K
    row = G.sum(1)
    total = float(row.sum())

    def mmd2_of(W: np.ndarray) -> np.ndarray:  # W: (m+n, p) indicators of group A
        s_aa = np.einsum("ip,ip->p", W, G @ W)
        s_a_all = row @ W
        return _mmd2_from_sums(s_aa, total - 2.0 * s_a_all + s_aa, s_a_all - s_aa, m, n)

    first = np.zeros((m + n, 1))
    first[:m] = 1.0
    value = float(mmd2_of(first)[0])
    rng = np.random.default_rng(seed)
    null = []
    for start in range(0, int(n_permutations), 64):
        p = min(64, int(n_permutations) - start)
        W = np.zeros((m + n, p))
        for c in range(p):
            W[rng.permutation(m + n)[:m], c] = 1.0
        null.append(mmd2_of(W))
    null_arr = np.concatenate(null)
    return value, float((1 + np.sum(null_arr >= value)) / (1 + null_arr.size))


# ----------------------------------------------------------------------------------------------------
# registry


class _Prepared:
    """A measure with its permutation-invariant work done once: ``score(perm)`` for Y's rows permuted."""

    def __init__(self, score: Callable[[np.ndarray | None], float], n: int):
        self.score = score
        self.n = n


def _prep_linear_cka(X, Y, *, debiased=False, device="auto", chunk_size=None) -> _Prepared:
    X, Y = check_pair(X, Y, keep_float=True, min_rows=4 if debiased else 2)
    st = _LinearState(X, Y, device=device, chunk_size=chunk_size)
    return _Prepared(lambda perm=None: _cka_from_terms(st, *st.cross(perm), debiased=debiased), st.n)


def _prep_debiased_cka(X, Y, **kw) -> _Prepared:
    return _prep_linear_cka(X, Y, debiased=True, **kw)


def _prep_procrustes(X, Y, *, device="auto", chunk_size=None) -> _Prepared:
    X, Y = check_pair(X, Y, keep_float=True, min_rows=2)
    st = _LinearState(X, Y, device=device, chunk_size=chunk_size)
    return _Prepared(lambda perm=None: _procrustes_from_terms(st, st.cross(perm)[0]), st.n)


def _prep_mknn(X, Y, *, k=10, distance="euclidean", device="auto", chunk_size=None, knn_precision=None) -> _Prepared:
    X, Y = check_pair(X, Y, keep_float=True, min_rows=2)
    st = _KnnState(X, Y, k, distance=distance, device=device, chunk_size=chunk_size, knn_precision=knn_precision)
    return _Prepared(lambda perm=None: float(st.pointwise(perm).mean()), X.shape[0])


def _prep_cknna(X, Y, *, k=10, distance="euclidean", device="auto", chunk_size=None,
                knn_precision=None) -> _Prepared:
    X, Y = check_pair(X, Y, keep_float=True, min_rows=4)
    st = _CknnaState(X, Y, k, distance=distance, device=device, chunk_size=chunk_size, knn_precision=knn_precision)
    return _Prepared(st.score, st.n)


def _prep_rbf(X, Y, **kw) -> _Prepared:
    st = _rbf_prepare(X, Y, **kw)
    return _Prepared(st.score, st.n)


def _debiased_cka(X, Y, **kw) -> float:
    """Debiased linear CKA: :func:`linear_cka` with ``debiased=True``."""
    return linear_cka(X, Y, debiased=True, **kw)


_EUCLIDEAN = frozenset({"rotation", "isotropic_scale", "shift", "permutation_of_features"})
_LINEAR_ONLY = frozenset({"invertible_linear"})

#: The similarity measures (aligned rows, no fit), each with a fast path for permutation nulls.
SIMILARITY_MEASURES: dict[str, Measure] = {
    m.name: m
    for m in (
        Measure("cka", linear_cka, True, (0.0, 1.0), 1.0, True, "linear CKA (Kornblith et al. 2019)",
                _prep_linear_cka, _EUCLIDEAN, _LINEAR_ONLY),
        Measure("cka_debiased", _debiased_cka, True, (-1.0, 1.0), 1.0, True,
                "linear CKA with unbiased HSIC (Song et al. 2012)", _prep_debiased_cka, _EUCLIDEAN, _LINEAR_ONLY),
        Measure("rbf_cka", rbf_cka, True, (0.0, 1.0), 1.0, True,
                "Gaussian-kernel CKA, median-heuristic bandwidth", _prep_rbf, _EUCLIDEAN, _LINEAR_ONLY),
        Measure("mknn", mutual_knn, True, (0.0, 1.0), 1.0, True,
                "mutual k-nearest-neighbour overlap (Huh et al. 2024)", _prep_mknn, _EUCLIDEAN, _LINEAR_ONLY),
        Measure("procrustes", procrustes_distance, False, (0.0, math.pi / 2), 0.0, True,
                "angular Procrustes distance (Williams et al. 2021)", _prep_procrustes, _EUCLIDEAN, _LINEAR_ONLY),
        # linear kernel of the uncentred rows, masked before centring: a shift changes it
        Measure("cknna", cknna, True, (-1.0, 1.0), 1.0, True,
                "CKA on mutual k-nearest-neighbour pairs (Huh et al. 2024)", _prep_cknna,
                _EUCLIDEAN - {"shift"}, _LINEAR_ONLY | {"shift"}),
    )
}

#: Measures between two samples (rows) of ONE space, e.g. two datasets in one model's space
#: (``samples=True``: a transformation is applied to both samples at once).
TWO_SAMPLE_MEASURES: dict[str, Measure] = {
    m.name: m
    for m in (
        Measure("mmd", mmd, False, (-1.0, 2.0), 0.0, True,
                "unbiased Gaussian-kernel MMD², median-heuristic bandwidth (Gretton et al. 2012)", None,
                _EUCLIDEAN, _LINEAR_ONLY, samples=True),
    )
}


def _get_measure(measure) -> Measure:
    if isinstance(measure, Measure):
        return measure
    try:
        return SIMILARITY_MEASURES[measure]
    except (KeyError, TypeError):
        raise InputError(
            f"unknown similarity measure {measure!r}; choose one of {', '.join(SIMILARITY_MEASURES)}"
        ) from None


# ----------------------------------------------------------------------------------------------------
# uncertainty and permutation null


def _n_subsample(subsample, n: int) -> int:
    if subsample is None:
        return n
    if isinstance(subsample, (float, np.floating)):
        if not 0 < subsample <= 1:
            raise InputError(f"subsample as a fraction must be in (0, 1], got {subsample}")
        return max(2, int(round(subsample * n)))
    if isinstance(subsample, (int, np.integer)) and not isinstance(subsample, bool):
        if not 2 <= subsample <= n:
            raise InputError(f"subsample must be between 2 and the number of rows ({n}), got {subsample}")
        return int(subsample)
    raise InputError(f"subsample must be a fraction, a row count or None, got {subsample!r}")


def similarity_with_uncertainty(
    X,
    Y,
    measure: str | Measure = "cka",
    *,
    seeds: int | Sequence[int] = 5,
    subsample: float | int | None = 0.5,
    n_permutations: int = 20,
    null_seed: int = 0,
    **kwargs: Any,
) -> dict[str, Any]:
    r"""A measure on all rows, its spread over random subsamples, and a permutation null.

    * ``value``: the measure on all rows (RBF CKA: on its own ``max_rows`` subsample).
    * ``values``/``mean``/``spread``: the measure on ``subsample`` rows (fraction or count) drawn
      without replacement with each of ``seeds`` (an int ``s`` means seeds ``0..s-1``); ``spread`` is the
      sample standard deviation (0 for one seed). It shows how much the score moves with the atoms used.
    * ``null_*``: the measure after shuffling the rows of Y (``n_permutations`` times, seeded by
      ``null_seed``), at the same rows as ``value``. It breaks the atom-to-atom correspondence while
      keeping each space's own geometry, so it is the chance level *at these widths and this n* —
      biased CKA of unrelated spaces, for instance, grows with d/n.
    * ``p_value``: :math:`(1+\#\{\text{null at least as good as value}\})/(1+n_\text{perm})`, one-sided
      in the measure's direction.
    * ``null_corrected``: :math:`(s-\bar s_0)/(s^*-\bar s_0)` with the perfect value :math:`s^*`
      (1 for similarities, 0 for Procrustes), so 0 = chance, 1 = identical for every measure;
      ``z_score``: :math:`\pm(s-\bar s_0)/\sigma_0`, signed so that positive = better than chance.

    ``kwargs`` go to the measure (``k``, ``debiased``, ``device``, ...). The k-NN null reuses the
    neighbour lists (a permutation only relabels Y's neighbour graph), so it costs O(n k) per draw;
    the linear measures recompute only :math:`X_c^\top Y_c[\pi]`.
    """
    m = _get_measure(measure)
    X, Y = check_pair(X, Y, keep_float=True, min_rows=2)
    n = X.shape[0]
    seed_list = list(range(seeds)) if isinstance(seeds, (int, np.integer)) else [int(s) for s in seeds]
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, (int, np.integer)) or n_permutations < 0:
        raise InputError(f"n_permutations must be a non-negative integer, got {n_permutations!r}")
    m_rows = _n_subsample(subsample, n)

    full = m.prepare(X, Y, **kwargs)
    value = float(full.score(None))

    values = []
    for seed in seed_list:
        rows = np.sort(np.random.default_rng(seed).choice(n, m_rows, replace=False))
        values.append(float(m.prepare(X[rows], Y[rows], **kwargs).score(None)))
    values_arr = np.asarray(values)

    rng = np.random.default_rng(null_seed)
    null = np.asarray([float(full.score(rng.permutation(full.n))) for _ in range(int(n_permutations))])

    out: dict[str, Any] = {
        "measure": m.name,
        "value": value,
        "mean": float(values_arr.mean()) if values else math.nan,
        "spread": float(values_arr.std(ddof=1)) if len(values) > 1 else (0.0 if values else math.nan),
        "values": values,
        "seeds": seed_list,
        "n": int(full.n),
        "n_subsample": int(m_rows),
        "n_permutations": int(n_permutations),
        "higher_is_better": m.higher_is_better,
    }
    if null.size:
        null_mean = float(null.mean())
        null_std = float(null.std(ddof=1)) if null.size > 1 else 0.0
        better = null >= value if m.higher_is_better else null <= value
        denom = m.perfect - null_mean
        sign = 1.0 if m.higher_is_better else -1.0
        out.update(
            null_mean=null_mean,
            null_std=null_std,
            p_value=float((1 + better.sum()) / (1 + null.size)),
            null_corrected=float((value - null_mean) / denom) if denom != 0 else math.nan,
            z_score=float(sign * (value - null_mean) / null_std) if null_std > 0 else math.nan,
        )
    else:
        out.update(null_mean=math.nan, null_std=math.nan, p_value=math.nan, null_corrected=math.nan,
                   z_score=math.nan)
    return out


# ----------------------------------------------------------------------------------------------------
# agreement between metrics over model pairs

#: Orientation of metrics defined elsewhere in mlipspace (reconstruction errors: lower = more similar).
KNOWN_ORIENTATION: dict[str, bool] = {"lfrd": False, **{n: m.higher_is_better for n, m in RECONSTRUCTION_MEASURES.items()}}


def _metric_sums(records, metrics, a_key, b_key, metric_key, value_key, include_diagonal):
    """``{metric: {(a, b): [values]}}`` of the tidy records (finite values; diagonal only if asked)."""
    sums: dict[str, dict[tuple[str, str], list[float]]] = {}
    for i, rec in enumerate(records):
        try:
            a, b, name, val = rec[a_key], rec[b_key], rec[metric_key], rec[value_key]
        except KeyError as exc:
            raise InputError(f"record {i} lacks the key {exc.args[0]!r}: {dict(rec)!r}") from None
        if metrics is not None and name not in metrics:
            continue
        try:
            val = float(val)
        except (TypeError, ValueError):
            raise InputError(f"record {i}: value {val!r} of metric {name!r} is not a number") from None
        if not math.isfinite(val) or (a == b and not include_diagonal):
            continue
        sums.setdefault(name, {}).setdefault((str(a), str(b)), []).append(val)
    return sums


def rank_agreement(
    records: Iterable[Mapping[str, Any]],
    *,
    metrics: Sequence[str] | None = None,
    higher_is_better: Mapping[str, bool] | None = None,
    symmetric: Iterable[str] | None = None,
    a_key: str = "model_a",
    b_key: str = "model_b",
    metric_key: str = "metric",
    value_key: str = "value",
    include_diagonal: bool = False,
) -> list[dict[str, Any]]:
    r"""Spearman and Kendall rank correlation between metrics over the model pairs they share.

    ``records`` are tidy rows ``{model_a, model_b, metric, value}`` (key names configurable). Each
    metric is first oriented so that larger = more similar (lower-is-better metrics such as GFRE,
    LFRE and Procrustes are negated), so a positive correlation means the two metrics rank the pairs
    the same way. Orientation comes from ``higher_is_better``, then :data:`SIMILARITY_MEASURES`, then
    the reconstruction errors (gfre, gfrd, lfre: lower is better); an unknown metric is an error.
    Pairs are ordered (GFRE A→B differs from B→A); a *symmetric* metric (the registered similarity
    measures, plus ``symmetric``) given for (A, B) also serves (B, A). Repeated records of one metric
    and pair (seeds) are averaged; pairs A = A are dropped unless ``include_diagonal``.

    Returns one dict per unordered metric pair: ``metric_a``, ``metric_b``, ``n_pairs``, ``spearman``,
    ``spearman_p``, ``kendall``, ``kendall_p`` (NaN when fewer than 3 shared pairs or a metric is
    constant on them).
    """
    from scipy import stats

    orient = dict(KNOWN_ORIENTATION)
    orient.update({name: m.higher_is_better for name, m in SIMILARITY_MEASURES.items()})
    orient.update(higher_is_better or {})
    sym = {name for name, m in SIMILARITY_MEASURES.items() if m.symmetric} | set(symmetric or ())

    sums = _metric_sums(records, metrics, a_key, b_key, metric_key, value_key, include_diagonal)
    names = list(metrics) if metrics is not None else sorted(sums)
    for name in names:
        if name not in orient:
            raise InputError(
                f"orientation of metric {name!r} is unknown: pass higher_is_better={{{name!r}: True/False}}"
            )
    table: dict[str, dict[tuple[str, str], float]] = {}
    for name in names:
        sign = 1.0 if orient[name] else -1.0
        vals = {pair: sign * float(np.mean(v)) for pair, v in sums.get(name, {}).items()}
        if name in sym:
            for (a, b), v in list(vals.items()):
                vals.setdefault((b, a), v)
        table[name] = vals

    out = []
    for i, ma in enumerate(names):
        for mb in names[i + 1 :]:
            pairs = sorted(set(table[ma]) & set(table[mb]))
            if ma in sym and mb in sym:
                # both symmetric: count each unordered pair once
                pairs = sorted({tuple(sorted(p)) for p in pairs})
            x = np.array([table[ma][p] for p in pairs])
            y = np.array([table[mb][p] for p in pairs])
            rec = {"metric_a": ma, "metric_b": mb, "n_pairs": len(pairs)}
            if len(pairs) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    rho = stats.spearmanr(x, y)
                    tau = stats.kendalltau(x, y)
                rec.update(spearman=float(rho.statistic), spearman_p=float(rho.pvalue),
                           kendall=float(tau.statistic), kendall_p=float(tau.pvalue))
            else:
                rec.update(spearman=math.nan, spearman_p=math.nan, kendall=math.nan, kendall_p=math.nan)
            out.append(rec)
    return out
