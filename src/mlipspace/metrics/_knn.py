r"""Exact k nearest training rows by blocked partial selection, with deterministic ties.

Two passes over chunks of the training set, never an n_test x n_train matrix and never a full sort:

1. squared distances :math:`|t|^2 + |x|^2 - 2 x\cdot t` of a test batch against one training chunk
   (one GEMM), ``np.partition`` keeps the k smallest per row, merged across chunks -> the k-th
   smallest distance :math:`d_k` of every test row;
2. every training row with distance :math:`\le d_k + \tau` (:math:`\tau` covers the rounding of the
   expanded formula) becomes a candidate; candidates get their distance recomputed directly as
   :math:`\sum_j (t_j - x_j)^2` (bitwise equal for identical rows) and are ordered by
   (distance, tie key). The first k are the neighbours, nearest first.

The tie key is the caller's row index of each training row, so exactly tied neighbours (duplicated
rows: symmetry-equivalent atoms) are always taken lowest row index first, independent of the order
in which the training rows are listed.
"""

from __future__ import annotations

import numpy as np

#: Relative slack on the k-th distance that absorbs the rounding error of |t|^2 + |x|^2 - 2 x.t.
_SLACK = 1e-10


def knn_indices(X_train: np.ndarray, X_test: np.ndarray, k: int, tie_key: np.ndarray | None = None,
                *, train_sq: np.ndarray | None = None, chunk: int = 8192) -> np.ndarray:
    """Indices (n_test, k) into ``X_train`` of the k nearest rows of each test row, nearest first,
    exact ties broken by ascending ``tie_key`` (default: position in ``X_train``)."""
    n_train = X_train.shape[0]
    if tie_key is None:
        tie_key = np.arange(n_train)
    if train_sq is None:
        train_sq = np.einsum("ij,ij->i", X_train, X_train)
    test_sq = np.einsum("ij,ij->i", X_test, X_test)
    nt = X_test.shape[0]

    # pass 1: k-th smallest (expanded) squared distance per test row
    best = None
    for a in range(0, n_train, chunk):
        D = _sqdist(X_test, X_train[a : a + chunk], test_sq, train_sq[a : a + chunk])
        part = np.partition(D, k - 1, axis=1)[:, :k] if D.shape[1] > k else D
        best = part if best is None else np.concatenate([best, part], axis=1)
        if best.shape[1] > k:
            best = np.partition(best, k - 1, axis=1)[:, :k]
    kth = best.max(axis=1)
    tol = _SLACK * (test_sq + train_sq.max()) + 1e-300
    thr = (kth + tol)[:, None]

    # pass 2: all candidates within the threshold, exact distances, ordered by (distance, key)
    rows, cols = [], []
    for a in range(0, n_train, chunk):
        D = _sqdist(X_test, X_train[a : a + chunk], test_sq, train_sq[a : a + chunk])
        r, c = np.nonzero(D <= thr)
        rows.append(r)
        cols.append(c + a)
    rows = np.concatenate(rows)
    cols = np.concatenate(cols)
    diff = X_train[cols] - X_test[rows]
    exact = np.einsum("ij,ij->i", diff, diff)
    order = np.lexsort((tie_key[cols], exact, rows))
    rows, cols = rows[order], cols[order]
    counts = np.bincount(rows, minlength=nt)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    take = starts[:, None] + np.arange(k)[None, :]
    return cols[take]


def _sqdist(A: np.ndarray, B: np.ndarray, a_sq: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    D = A @ B.T
    D *= -2.0
    D += a_sq[:, None]
    D += b_sq[None, :]
    return D


def knn_indices_torch(X_train, X_test, k: int, tie_key, *, chunk: int = 16384):
    """torch twin of :func:`knn_indices` (same two passes; ``topk`` instead of ``partition``).

    Tensors on any device; returns an int64 tensor (n_test, k) on that device."""
    import torch

    n_train = X_train.shape[0]
    train_sq = (X_train * X_train).sum(1)
    test_sq = (X_test * X_test).sum(1)
    nt = X_test.shape[0]
    best = None
    for a in range(0, n_train, chunk):
        D = test_sq[:, None] + train_sq[None, a : a + chunk] - 2.0 * (X_test @ X_train[a : a + chunk].T)
        part = torch.topk(D, min(k, D.shape[1]), dim=1, largest=False, sorted=False).values
        best = part if best is None else torch.cat([best, part], dim=1)
        if best.shape[1] > k:
            best = torch.topk(best, k, dim=1, largest=False, sorted=False).values
    kth = best.max(dim=1).values
    thr = (kth + _SLACK * (test_sq + train_sq.max()) + 1e-300)[:, None]
    rows, cols = [], []
    for a in range(0, n_train, chunk):
        D = test_sq[:, None] + train_sq[None, a : a + chunk] - 2.0 * (X_test @ X_train[a : a + chunk].T)
        r, c = torch.nonzero(D <= thr, as_tuple=True)
        rows.append(r)
        cols.append(c + a)
    rows = torch.cat(rows)
    cols = torch.cat(cols)
    diff = X_train[cols] - X_test[rows]
    exact = (diff * diff).sum(1)
    # lexicographic (row, exact, key) by successive stable sorts, least significant key first
    order = torch.sort(tie_key[cols], stable=True).indices
    order = order[torch.sort(exact[order], stable=True).indices]
    order = order[torch.sort(rows[order], stable=True).indices]
    rows, cols = rows[order], cols[order]
    counts = torch.bincount(rows, minlength=nt)
    starts = torch.cumsum(counts, 0) - counts
    take = starts[:, None] + torch.arange(k, device=rows.device)[None, :]
    return cols[take]
